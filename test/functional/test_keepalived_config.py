"""Functional tests of the keepalived tree: keepalived.conf and its check.

* keepalived.conf is rendered for every pair node of pillar.example by real
  Salt (``python -m tools.render --sls keepalived``: the loader compiles the
  SLS and renders each file.managed as the state would), then checked with
  the real ``keepalived -t -f FILE`` in a throwaway network namespace
  ``hfka<4 hex>`` holding the node's interfaces (veth pairs: this kernel has
  no dummy links) and addresses;
* the compiled ``hafw-keepalived-config`` chunk is run by Salt itself
  (``salt-call state.low`` inside the namespace, only the file name moved to
  tmp_path) to show that its check_cmd runs keepalived on the candidate
  before the live file is replaced, and refuses a bad one;
* a real keepalived runs the rendered fw-cent7i file (hook and FIFO paths
  overridden through pillar ``hafw:lookup:keepalived``) alone in a namespace:
  it becomes MASTER, adds the VIPs, reports on the notify FIFO, keeps the
  VIPs across SIGHUP (what the service's reload sends) and is stopped by pid;
* a real keepalived runs the VRRP part of the rendered lb-cent7g file with
  its resync hold (the real hafw-ipvs-hold.sh): the sync group stays in
  FAULT for the hold after each start, not after a reload (this kernel has
  no IPVS, so the LVS lines are left out of that file).

Every namespace and process started here is removed by the fixtures, also on
failure. Needs root, iproute2 and keepalived; skipped otherwise.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from lab.wait import wait_for
from tools import golden

REPO = Path(__file__).resolve().parents[2]
PILLAR = REPO / "pillar.example"
KEEPALIVED = "/usr/sbin/keepalived"
IP = shutil.which("ip") or "/usr/sbin/ip"
SALT_CALL = Path(sys.executable).parent / "salt-call"
CONF = "etc/keepalived/keepalived.conf"
PAIR_NODES = ("fw-cent7i", "fw-cent7j", "lb-cent7g", "lb-cent7h")
FW_VIPS = ("192.168.0.40/24", "192.168.0.60/24", "192.168.0.88/24")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not os.access(KEEPALIVED, os.X_OK), reason=f"needs {KEEPALIVED}"),
]


# --------------------------------------------------------------------------
# helpers


def render(node: str, out: Path, pillar: Path = PILLAR, os_family: str = "Debian") -> str:
    """keepalived.conf of node, rendered by Salt as keepalived.config would write it."""
    golden.render(node, os_family, out, sls="keepalived", pillar=pillar, clean=True, timeout=120)
    return (out / CONF).read_text()


def node_interfaces(node: str) -> dict[str, list[str]]:
    """{ifname: [cidr, ...]} of node, as the model derives it."""
    sys.path.insert(0, str(REPO / "_utils"))
    try:
        import hafw_model
    finally:
        sys.path.pop(0)
    return hafw_model.node(yaml.safe_load(PILLAR.read_text())["hafw"], node)["interfaces"]


def write_pillar(path: Path, lookup: dict) -> Path:
    """pillar.example plus hafw:lookup:keepalived overrides."""
    data = yaml.safe_load(PILLAR.read_text())
    data["hafw"]["lookup"] = {"keepalived": lookup}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def check(ns: str, conf: Path) -> subprocess.CompletedProcess:
    """keepalived -t -f conf, inside ns."""
    return subprocess.run([IP, "netns", "exec", ns, KEEPALIVED, "-t", "-f", str(conf)],
                          capture_output=True, text=True, timeout=60)


def ipv4_addrs(ns: str, ifname: str) -> set[str]:
    out = subprocess.run([IP, "-n", ns, "-4", "-o", "addr", "show", "dev", ifname],
                         capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"inet (\S+)", out))




def block(text: str, header: str) -> str:
    """The body of the top-level block starting with header (no nesting at top level)."""
    m = re.search(r"^" + re.escape(header) + r" \{\n(.*?)^\}$", text, re.M | re.S)
    assert m, f"no block {header!r} in:\n{text}"
    return m.group(1)


def words(body: str) -> list[str]:
    """The lines of a block, whitespace-normalised, comments dropped."""
    return [" ".join(line.split()) for line in body.splitlines()
            if line.strip() and not line.strip().startswith("#")]


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    """{node: keepalived.conf} for the four pair nodes of pillar.example."""
    base = tmp_path_factory.mktemp("render")
    return {node: render(node, base / node) for node in PAIR_NODES}


@pytest.fixture
def netns():
    """Factory: a namespace with node-like links; all removed afterwards."""
    made: list[str] = []

    def make(interfaces: dict[str, list[str]]) -> str:
        while True:
            name = "hfka" + secrets.token_hex(2)
            if not Path("/run/netns", name).exists():
                break
        subprocess.run([IP, "netns", "add", name], check=True)
        made.append(name)
        ip = [IP, "-n", name]
        subprocess.run([*ip, "link", "set", "lo", "up"], check=True)
        for n, (ifname, addrs) in enumerate(sorted(interfaces.items())):
            subprocess.run([*ip, "link", "add", ifname, "type", "veth", "peer", "name",
                            f"peer{n}"], check=True)
            for addr in addrs:
                subprocess.run([*ip, "addr", "add", addr, "dev", ifname], check=True)
            for link in (ifname, f"peer{n}"):
                subprocess.run([*ip, "link", "set", link, "up"], check=True)
        return name

    yield make
    for name in made:
        # only processes this test started can live in a namespace it made
        pids = subprocess.run([IP, "netns", "pids", name], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run([IP, "netns", "delete", name], check=False)


@pytest.fixture(scope="module")
def salt_config(tmp_path_factory) -> Path:
    """A masterless minion config for fw-cent7i (as tools/render.py writes it)."""
    sys.path.insert(0, str(REPO))
    try:
        from tools import render as render_tool
    finally:
        sys.path.pop(0)

    cfg = tmp_path_factory.mktemp("salt")
    render_tool.minion_opts(cfg, REPO, PILLAR, "fw-cent7i",
                            render_tool.node_grains("fw-cent7i", "Debian"), 0)
    return cfg


def salt_call(cfg: Path, *args, ns: str | None = None):
    cmd = [str(SALT_CALL), "--local", "-c", str(cfg), "--out", "json", *args]
    if ns:
        cmd = [IP, "netns", "exec", ns, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)["local"]


# --------------------------------------------------------------------------
# the rendered files


HOOK = "/etc/conntrackd/primary-backup.sh"
IPVS_HOLD = "/etc/keepalived/hafw-ipvs-hold.sh"


@pytest.fixture
def secure_dir():
    """A directory where keepalived's script security accepts scripts
    (root-owned directories only, unlike /tmp); removed afterwards."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="hafw-ka-test-", dir="/run"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def secure_hook(secure_dir):
    """An executable stand-in for the conntrackd hook where keepalived's
    script security accepts it: keepalived -t refuses a config whose track
    script does not exist."""
    hook = secure_dir / "primary-backup.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    return hook


@pytest.mark.parametrize("node", PAIR_NODES)
def test_rendered_file_passes_keepalived_check(rendered, netns, tmp_path, node, secure_hook):
    conf = tmp_path / "keepalived.conf"
    # keepalived -t refuses a track script that is missing or insecure
    conf.write_text(rendered[node].replace(HOOK, str(secure_hook)).replace(IPVS_HOLD, str(secure_hook)))
    proc = check(netns(node_interfaces(node)), conf)
    assert proc.returncode == 0, proc.stderr
    assert rendered[node].startswith("# Managed by Salt (hafw formula)")


def test_lb_files_carry_the_seed_settings(rendered):
    for node in ("lb-cent7g", "lb-cent7h"):
        text = rendered[node]
        assert f"router_id {node}" in words(block(text, "global_defs"))
        # keepalived 2.x syntax, not the seed's lvs_sync_daemon_interface
        assert "lvs_sync_daemon enp0s8 instance52" in words(block(text, "global_defs"))
        assert not [w for w in words(text) if w.startswith("lvs_sync_daemon_interface")]
        assert words(block(text, "vrrp_sync_group group500")) == [
            "sync_group_tracking_weight",  # the maintenance files' weight (docs/operating.md)
            "group {", "instance51", "instance52", "}"]  # no notify hook on the LBs
        for name, vrid, iface, vips in (
            ("instance51", 51, "enp0s3", ["192.168.1.50/24 brd 192.168.1.255 dev enp0s3",
                                          "192.168.1.60/24 brd 192.168.1.255 dev enp0s3"]),
            ("instance52", 52, "enp0s8", ["192.168.2.50/24 brd 192.168.2.255 dev enp0s8"]),
        ):
            lines = words(block(text, f"vrrp_instance {name}"))
            for expected in ("state BACKUP", "nopreempt", f"interface {iface}",
                             f"virtual_router_id {vrid}", "priority 100", "advert_int 1",
                             "version 2"):
                assert expected in lines, (node, name, expected)
            start = lines.index("virtual_ipaddress {")
            assert lines[start + 1:start + 1 + len(vips) + 1] == [*vips, "}"]
        # no resync hold: the seed's pair is nopreempt (docs/failover-timing.md; a preempting
        # pair gets it: test_compiled_states_of_a_load_balancer)
        assert "hafw_ipvs_hold" not in text and "track_script" not in text
        assert words(block(text, "virtual_server_group SMTP")) == ["192.168.1.60 25"]
        real = ["weight 1", "inhibit_on_failure", "SMTP_CHECK {", "connect_timeout 15",
                "retry 2", "delay_before_retry 6", "}", "}"]
        assert words(block(text, "virtual_server group SMTP")) == [
            "delay_loop 10", "lb_algo lc", "lb_kind NAT", "protocol TCP",
            "real_server 192.168.2.61 25 {", *real,
            "real_server 192.168.2.62 25 {", *real,
        ]
    # the pair's files differ only in the node's own name
    g, h = (rendered[n].replace(n, "NODE") for n in ("lb-cent7g", "lb-cent7h"))
    assert g == h


def test_fw_files_carry_the_seed_settings(rendered):
    hook = "/etc/conntrackd/primary-backup.sh"
    for node, priority, state in (("fw-cent7i", 80, "MASTER"), ("fw-cent7j", 70, "BACKUP")):
        text = rendered[node]
        gdefs = words(block(text, "global_defs"))
        assert f"router_id {node}" in gdefs
        assert "enable_script_security" in gdefs and "script_user root" in gdefs
        assert "vrrp_notify_fifo /run/keepalived/notify.fifo" in gdefs
        assert "lvs_sync_daemon" not in text and "virtual_server" not in text
        assert "hafw_ipvs_hold" not in text  # the firewalls' hold is hafw_resync
        # the resync hold: FAULT after a boot until conntrackd has the peer's table
        assert words(block(text, "vrrp_script hafw_resync")) == [
            f'script "{hook} synced"', "interval 1", "timeout 5", "fall 3", "init_fail"]
        assert words(block(text, "vrrp_sync_group G1")) == [
            "sync_group_tracking_weight", "group {", "VI_1", "VI_2", "}",
            f'notify_master "{hook} primary"', f'notify_backup "{hook} backup"',
            f'notify_fault "{hook} fault"', f'notify_stop "{hook} stop"',
        ]
        assert "state SLAVE" not in text  # the seed's defect
        for name, vrid, iface, vips in (
            ("VI_1", 61, "enp0s3", [f"{v} brd 192.168.0.255 dev enp0s3" for v in FW_VIPS]),
            ("VI_2", 62, "enp0s8", ["192.168.1.40/24 brd 192.168.1.255 dev enp0s8"]),
        ):
            lines = words(block(text, f"vrrp_instance {name}"))
            assert lines == [
                f"interface {iface}", f"state {state}", f"virtual_router_id {vrid}",
                f"priority {priority}", "advert_int 3", "version 2", "garp_master_delay 1",
                "garp_master_refresh 10",
                "virtual_ipaddress {", *vips, "}", "track_script {", "hafw_resync", "}",
                "track_file {", "hafw_demote", "hafw_demote_persistent", "hafw_step_down", "}",
            ]
            assert not any(line.startswith("notify") for line in lines)  # on the group


def test_redhat_renders_the_same_file(rendered, tmp_path):
    for node in ("fw-cent7i", "lb-cent7g"):
        assert render(node, tmp_path / node, os_family="RedHat") == rendered[node]


def test_single_instance_carries_the_notify_lines(netns, tmp_path, secure_hook):
    """One instance: no sync group (keepalived -t rejects a group of one)."""
    data = yaml.safe_load(PILLAR.read_text())
    vrrp = data["hafw"]["clusters"]["fw-pair"]["vrrp"]
    del vrrp["instances"]["VI_2"]
    vrrp["sync_group"] = "G1"  # even when the pillar names one
    pillar = tmp_path / "one.sls"
    pillar.write_text(yaml.safe_dump(data, sort_keys=False))
    text = render("fw-cent7i", tmp_path / "out", pillar=pillar)
    assert "vrrp_sync_group" not in text
    assert 'notify_master "/etc/conntrackd/primary-backup.sh primary"' in words(
        block(text, "vrrp_instance VI_1"))
    conf = tmp_path / "out" / CONF
    conf.write_text(text.replace(HOOK, str(secure_hook)))
    proc = check(netns(node_interfaces("fw-cent7i")), conf)
    assert proc.returncode == 0, proc.stderr


def test_pass_through_options_are_printed(netns, tmp_path, secure_hook):
    """global_defs, instance options, track scripts and interfaces reach the file."""
    data = yaml.safe_load(PILLAR.read_text())
    vrrp = data["hafw"]["clusters"]["fw-pair"]["vrrp"]
    vrrp["global_defs"] = {"max_auto_priority": 50, "vrrp_check_unicast_src": True,
                           "notification_email": ["root@localhost"], "vrrp_strict": False}
    # no weight: keepalived -t rejects weighted track scripts in a sync group
    vrrp["track_scripts"] = {"chk_fw": {"script": "/bin/true", "interval": 2, "fall": 2}}
    vrrp["track_interfaces"] = ["enp0s9"]
    vrrp["instances"]["VI_1"]["options"] = {"dont_track_primary": True,
                                            "lower_prio_no_advert": True}
    pillar = tmp_path / "opts.sls"
    pillar.write_text(yaml.safe_dump(data, sort_keys=False))
    text = render("fw-cent7i", tmp_path / "out", pillar=pillar)
    gdefs = words(block(text, "global_defs"))
    assert gdefs[-5:] == ["max_auto_priority 50", "vrrp_check_unicast_src",
                          "notification_email {", "root@localhost", "}"]
    assert "vrrp_strict" not in text
    assert words(block(text, "vrrp_script chk_fw")) == [
        'script "/bin/true"', "interval 2", "fall 2"]
    vi1 = words(block(text, "vrrp_instance VI_1"))
    assert vi1[-14:] == ["track_interface {", "enp0s9", "}", "track_script {", "hafw_resync", "chk_fw", "}",
                         "track_file {", "hafw_demote", "hafw_demote_persistent", "hafw_step_down", "}",
                         "dont_track_primary", "lower_prio_no_advert"]
    conf = tmp_path / "out" / CONF
    conf.write_text(text.replace(HOOK, str(secure_hook)))
    proc = check(netns(node_interfaces("fw-cent7i")), conf)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("broken", [
    ("advert_int 3", "advert_intt 3"),      # an unknown keyword
    ("state MASTER", "state SLAVE"),        # the seed's own defect
    ("priority 80", "priority 800"),        # out of range
    ("interface enp0s8", "interface enp0s7"),  # a link the node does not have
])
def test_keepalived_check_rejects_a_broken_file(rendered, netns, tmp_path, broken):
    """The check is meaningful: a broken file fails `keepalived -t`."""
    good, bad = broken
    assert good in rendered["fw-cent7i"]
    conf = tmp_path / "keepalived.conf"
    conf.write_text(rendered["fw-cent7i"].replace(good, bad, 1))
    proc = check(netns(node_interfaces("fw-cent7i")), conf)
    assert proc.returncode != 0, proc.stderr


# --------------------------------------------------------------------------
# the states, compiled and run by Salt


@pytest.mark.skipif(not SALT_CALL.exists(), reason=f"needs {SALT_CALL}")
def test_compiled_states(salt_config):
    low = salt_call(salt_config, "state.show_low_sls", "keepalived")
    chunks = {c["__id__"]: c for c in low}
    assert "hafw-keepalived-ipvs-hold-script" not in chunks  # load balancers only
    conf = chunks["hafw-keepalived-config"]
    assert conf["check_cmd"] == f"{KEEPALIVED} -t -f"
    assert conf["mode"] == "0640" and conf["name"] == "/etc/keepalived/keepalived.conf"
    svc = chunks["hafw-keepalived-running"]
    assert svc["fun"] == "running" and svc["reload"] is True and svc["enable"] is True
    assert {"file": "hafw-keepalived-config"} in svc["watch"]
    assert re.search(svc["sig"], "root  42  1  0 10:00 ?  00:00:00   /usr/sbin/keepalived")
    assert not re.search(svc["sig"], "root 43 42 0 10:00 ? 00:00:00 salt-call keepalived")
    assert chunks["hafw-keepalived-fifo-dir"]["name"] == "/run/keepalived"
    assert chunks["hafw-keepalived-installed"]["pkgs"] == ["keepalived"]  # no LVS here


@pytest.mark.skipif(not SALT_CALL.exists(), reason=f"needs {SALT_CALL}")
def test_compiled_states_of_a_load_balancer(tmp_path):
    """The resync hold's script is managed before keepalived.conf, whose
    check (keepalived -t) refuses a missing track script; on RHEL it is
    labelled bin_t, the only file type keepalived_t may execute."""
    from tools import render as render_tool

    data = yaml.safe_load(PILLAR.read_text())
    data["hafw"]["clusters"]["lb-pair"]["vrrp"]["preempt"] = True  # the hold's default follows preempt
    pillar = tmp_path / "preempt.sls"
    pillar.write_text(yaml.safe_dump(data, sort_keys=False))
    render_tool.minion_opts(tmp_path, REPO, pillar, "lb-cent7g", render_tool.node_grains("lb-cent7g", "RedHat"), 0)
    selinux = {c["__id__"]: c for c in salt_call(tmp_path, "state.show_low_sls", "selinux")}
    label = selinux["hafw-selinux-ipvs-hold-fcontext"]
    assert (label["fun"], label["name"], label["sel_type"]) == (
        "fcontext_policy_present", r"/etc/keepalived/hafw\-ipvs\-hold\.sh", "bin_t")
    assert "hafw-selinux-ipvs-hold-relabelled" in selinux and "hafw-selinux-hook-fcontext" not in selinux
    low = salt_call(tmp_path, "state.show_low_sls", "keepalived")
    chunks = {c["__id__"]: c for c in low}
    script = chunks["hafw-keepalived-ipvs-hold-script"]
    assert (script["state"], script["fun"], script["name"]) == ("file", "managed", IPVS_HOLD)
    assert script["source"] == "salt://keepalived/files/hafw-ipvs-hold.sh" and "template" not in script
    assert (script["user"], script["group"], script["mode"]) == ("root", "root", "0755")
    assert {"file": "hafw-keepalived-ipvs-hold-script"} in chunks["hafw-keepalived-config"]["require"]
    assert chunks["hafw-keepalived-installed"]["pkgs"] == ["keepalived", "ipvsadm"]


@pytest.mark.skipif(not SALT_CALL.exists(), reason=f"needs {SALT_CALL}")
def test_check_cmd_runs_before_the_live_file_is_replaced(salt_config, rendered, netns,
                                                         tmp_path, secure_hook):
    low = salt_call(salt_config, "state.show_low_sls", "keepalived.config")
    chunk = next(c for c in low if c["__id__"] == "hafw-keepalived-config")
    # keepalived -t needs the track script (the hook) to exist where it points
    chunk["context"]["mapdata"]["notify_hook"] = str(secure_hook)
    live = tmp_path / "etc" / "keepalived.conf"
    live.parent.mkdir()
    live.write_text("# the running configuration\n")
    ns = netns(node_interfaces("fw-cent7i"))

    # a candidate keepalived rejects: the state fails, the live file stays
    bad = copy.deepcopy(chunk)
    bad["name"] = str(live)
    bad["context"]["node"]["vrrp"]["instances"][0]["state"] = "SLAVE"
    ret = salt_call(salt_config, "state.low", json.dumps(bad), ns=ns)
    assert ret["result"] is False
    assert "check_cmd execution failed" in ret["comment"]
    assert "unknown state 'SLAVE'" in ret["comment"]
    assert live.read_text() == "# the running configuration\n"

    # the real candidate passes and replaces it
    good = copy.deepcopy(chunk)
    good["name"] = str(live)
    ret = salt_call(salt_config, "state.low", json.dumps(good), ns=ns)
    assert ret["result"] is True, ret["comment"]
    assert live.read_text() == rendered["fw-cent7i"].replace(HOOK, str(secure_hook))
    assert live.stat().st_mode & 0o777 == 0o640

    # unchanged: no change, and the check does not even run (a namespace
    # without the links would fail it)
    bare = netns({})
    ret = salt_call(salt_config, "state.low", json.dumps(good), ns=bare)
    assert ret["result"] is True and ret["changes"] == {}, ret


# --------------------------------------------------------------------------
# a real keepalived on the rendered file


class FifoReader(threading.Thread):
    """Collects the lines keepalived writes to its notify FIFO."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.lines, self.stop = path, [], threading.Event()

    def run(self):
        while not self.path.is_fifo() and not self.stop.is_set():
            time.sleep(0.05)
        if self.stop.is_set():
            return
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        buf = b""
        try:
            while not self.stop.is_set():
                try:
                    chunk = os.read(fd, 4096)
                except BlockingIOError:
                    chunk = b""
                if not chunk:
                    time.sleep(0.05)
                    continue
                buf += chunk
                *done, buf = buf.split(b"\n")
                self.lines.extend(line.decode() for line in done)
        finally:
            os.close(fd)


HOLD_S = 3  # lvs:sync_daemon:refresh_period 1 + the 2 s flush


def vrrp_only(text: str) -> str:
    """The rendered LB file without its LVS lines: keepalived exits at start
    when the kernel has no IPVS, and this one has none."""
    text = re.sub(r"\n *lvs_sync_daemon [^\n]*", "", text)
    return text[:text.index("\nvirtual_server_group")] + "\n"


def start_keepalived(ns: str, conf: Path, run: Path, log: Path) -> subprocess.Popen:
    """keepalived on conf in ns, logging to log. Its own pid files under run
    (not the system's /run/keepalived*.pid); no fork, so the pid is
    keepalived's parent process (`ip netns exec` execs it)."""
    with open(log, "a") as logf:
        return subprocess.Popen(
            [IP, "netns", "exec", ns, KEEPALIVED, "--dont-fork", "--log-console", "--log-detail",
             "--no-syslog", "-f", str(conf), "-p", str(run / "keepalived.pid"), "-r", str(run / "vrrp.pid"),
             "-c", str(run / "checkers.pid"), "-b", str(run / "bfd.pid")],
            stdout=logf, stderr=subprocess.STDOUT)


def stop_keepalived(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def group_line(lines: list[str], state: str) -> int | None:
    """Index of the sync group's first line for state ('GROUP "group500" BACKUP 0')."""
    return next((i for i, line in enumerate(lines) if line.startswith(f'GROUP "group500" {state} ')), None)


def held_for(reader: FifoReader, seen: int, log: Path) -> float:
    """Seconds from now until the group leaves FAULT, after a FAULT first."""
    t0 = time.monotonic()
    wait_for(lambda: group_line(reader.lines[seen:], "BACKUP") is not None, timeout=HOLD_S + 10,
             what="the group's BACKUP line",
             explain=lambda: f"{reader.lines[seen:]}\n{log.read_text()}")
    held = time.monotonic() - t0
    new = reader.lines[seen:]
    fault = group_line(new, "FAULT")
    assert fault is not None and fault < group_line(new, "BACKUP"), new
    return held


def test_keepalived_runs_the_file_and_survives_sighup(netns, tmp_path):
    run = tmp_path / "run"
    run.mkdir()  # what config.sls ensures: keepalived makes the FIFO, not its directory
    fifo = run / "notify.fifo"
    pillar = write_pillar(tmp_path / "live.sls",
                          {"notify_hook": "/bin/true", "notify_fifo": str(fifo)})
    text = render("fw-cent7i", tmp_path / "out", pillar=pillar)
    assert 'notify_master "/bin/true primary"' in text
    ns = netns(node_interfaces("fw-cent7i"))
    log = tmp_path / "keepalived.log"
    reader = FifoReader(fifo)
    reader.start()
    proc = start_keepalived(ns, tmp_path / "out" / CONF, run, log)
    try:
        vips = set(FW_VIPS)
        # MASTER after the master-down interval: 3 x advert_int 3 s + skew
        wait_for(lambda: vips <= ipv4_addrs(ns, "enp0s3")
                 and "192.168.1.40/24" in ipv4_addrs(ns, "enp0s8"),
                 timeout=30, what="the VIPs:\n" + log.read_text())
        wait_for(lambda: 'GROUP "G1" MASTER 0' in reader.lines, timeout=5,
                 what=f"the MASTER event on the FIFO ({reader.lines})")
        assert 'INSTANCE "VI_1" MASTER 80' in reader.lines
        seen = len(reader.lines)

        os.kill(proc.pid, signal.SIGHUP)  # what `service keepalived reload` sends
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert vips <= ipv4_addrs(ns, "enp0s3"), "a VIP flapped on reload"
            time.sleep(0.05)
        assert "Reload complete" in log.read_text()
        assert reader.lines[seen:] == [], "a VRRP transition on reload"
        assert proc.poll() is None

        proc.terminate()
        proc.wait(timeout=15)
        assert not vips & ipv4_addrs(ns, "enp0s3"), "keepalived left the VIPs behind"
    finally:
        reader.stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=5)


def test_lb_hold_keeps_the_group_in_fault_after_each_start(netns, tmp_path, secure_dir):
    """The real check under a real keepalived: FAULT for the hold after a
    start, then VRRP as usual (alone: MASTER); a reload does not hold; a
    restart holds again."""
    run = tmp_path / "run"
    run.mkdir()
    fifo, marker, script = run / "notify.fifo", run / "hold.marker", secure_dir / "hafw-ipvs-hold.sh"
    shutil.copy(REPO / "keepalived" / "files" / "hafw-ipvs-hold.sh", script)
    script.chmod(0o755)
    data = yaml.safe_load(PILLAR.read_text())
    data["hafw"]["clusters"]["lb-pair"]["lvs"]["sync_daemon"].update(refresh_period=HOLD_S - 2, resync_hold=True)
    data["hafw"]["lookup"] = {"keepalived": {"notify_fifo": str(fifo),
                                             "ipvs_hold": {"script": str(script), "marker": str(marker)}}}
    pillar = tmp_path / "hold.sls"
    pillar.write_text(yaml.safe_dump(data, sort_keys=False))
    text = render("lb-cent7g", tmp_path / "out", pillar=pillar)
    assert f'script "{script} {HOLD_S} {marker} 192.168.1.50 192.168.1.60 192.168.2.50"' in text
    conf = tmp_path / "keepalived.conf"
    conf.write_text(vrrp_only(text))
    ns = netns(node_interfaces("lb-cent7g"))
    log = tmp_path / "keepalived.log"
    reader = FifoReader(fifo)
    reader.start()
    proc = start_keepalived(ns, conf, run, log)
    try:
        assert held_for(reader, 0, log) >= HOLD_S - 0.5
        vips = {"192.168.1.50/24", "192.168.1.60/24"}
        wait_for(lambda: vips <= ipv4_addrs(ns, "enp0s3"), timeout=15, what="the VIPs",
                 explain=log.read_text)
        assert marker.read_text().split()[0] == (run / "keepalived.pid").read_text().strip()

        seen = len(reader.lines)
        os.kill(proc.pid, signal.SIGHUP)  # a reload keeps keepalived's start: no hold
        time.sleep(HOLD_S + 1)
        assert "Reload complete" in log.read_text()
        assert reader.lines[seen:] == [], "a VRRP transition on reload"
        assert vips <= ipv4_addrs(ns, "enp0s3")

        stop_keepalived(proc)  # it removes its FIFO: a new reader for the new one
        assert not vips & ipv4_addrs(ns, "enp0s3")
        reader.stop.set()
        reader.join(timeout=5)
        reader = FifoReader(fifo)
        reader.start()
        proc = start_keepalived(ns, conf, run, log)  # a restart: the hold again
        assert held_for(reader, 0, log) >= HOLD_S - 0.5
    finally:
        reader.stop.set()
        stop_keepalived(proc)
        reader.join(timeout=5)
