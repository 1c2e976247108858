"""Functional tests of the conntrackd tree: conntrackd.conf, its check, the resync.

* conntrackd.conf is rendered for fw-cent7i and fw-cent7j from pillar.example
  by real Salt (``python -m tools.render --sls conntrackd``: the loader
  compiles the SLS and renders each file.managed as the state would). The two
  files differ exactly as the seed's two files do (own/peer address, own
  addresses in the ignore list); the file carries the seed's settings, with
  the documented departures (header, StartupResync, the VIPs in the ignore
  list, the platform's LockFile and socket path on Debian);
* the check_cmd of ``hafw-conntrackd-config`` (conntrackd parses the
  candidate in client mode) accepts every rendered mode/transport, refuses a
  broken candidate, and, run by Salt itself (``salt-call state.low``), keeps
  the live file when the candidate is refused; an unchanged file is no change;
* two real conntrackd daemons run the rendered files (LockFile, socket, file
  and hook state file moved to tmp_path through pillar hafw:lookup:conntrackd)
  in two throwaway network namespaces ``hfcd<4 hex>`` joined by one veth pair
  named enp0s9 on both ends (192.168.3.41/24, 192.168.3.42/24): an entry
  created in A's kernel table shows in B's external cache (replication over
  the sync link); after a restart of A, StartupResync refills A's external
  cache from B, and the compiled ``hafw-conntrackd-bulk-send-after-restart``
  chunk, run by Salt, sends B what A created while it was down -- only when
  the hook's state file says primary.

Every namespace and daemon started here is removed by the fixtures (daemons
by pid), also on failure. Needs root, iproute2, conntrackd and conntrack.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lab.wait import wait_for
from tools import golden

REPO = Path(__file__).resolve().parents[2]
PILLAR = REPO / "pillar.example"
CONNTRACKD = "/usr/sbin/conntrackd"
CONNTRACK = shutil.which("conntrack") or "/usr/sbin/conntrack"
IP = shutil.which("ip") or "/usr/sbin/ip"
SALT_CALL = Path(sys.executable).parent / "salt-call"
CONF = "etc/conntrackd/conntrackd.conf"
SYNC = {"fw-cent7i": "192.168.3.41", "fw-cent7j": "192.168.3.42"}
VIPS = ("192.168.0.40", "192.168.0.60", "192.168.0.88", "192.168.1.40")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not os.access(CONNTRACKD, os.X_OK), reason=f"needs {CONNTRACKD}"),
]

# The seed's /etc/conntrackd/conntrackd.conf of cent7i (shared/seed, md5
# 33cf299c...), whitespace-normalised (the write-up lost the indentation).
SEED_CENT7I = """\
Sync {
Mode FTFW {
}
UDP {
IPv4_address 192.168.3.41
IPv4_Destination_Address 192.168.3.42
Port 3780
Interface enp0s9
SndSocketBuffer 1249280
RcvSocketBuffer 1249280
Checksum on
}
}
General {
Nice -20
HashSize 32768
HashLimit 131072
LogFile off
Syslog on
LockFile /var/lock/conntrack.lock
UNIX {
Path /var/run/conntrackd.ctl
Backlog 20
}
NetlinkBufferSize 2097152
NetlinkBufferSizeMaxGrowth 8388608
Filter From Userspace {
Protocol Accept {
TCP
UDP
ICMP # This requires a Linux kernel >= 2.6.31
}
Address Ignore {
IPv4_address 127.0.0.1
IPv4_address 192.168.0.41
IPv4_address 192.168.1.41
IPv4_address 192.168.3.41
}
}
}
"""

# The seed's `diff -u <(cent7i's file) cent7j's file`: the changed lines.
SEED_DIFF = [
    ("-", "IPv4_address 192.168.3.41"), ("-", "IPv4_Destination_Address 192.168.3.42"),
    ("+", "IPv4_address 192.168.3.42"), ("+", "IPv4_Destination_Address 192.168.3.41"),
    ("-", "IPv4_address 192.168.0.41"), ("-", "IPv4_address 192.168.1.41"),
    ("-", "IPv4_address 192.168.3.41"),
    ("+", "IPv4_address 192.168.0.42"), ("+", "IPv4_address 192.168.1.42"),
    ("+", "IPv4_address 192.168.3.42"),
]


# --------------------------------------------------------------------------
# helpers


def render(node: str, out: Path, pillar: Path = PILLAR, os_family: str = "Debian") -> Path:
    """The tree of files conntrackd's states write on node, rendered by Salt."""
    golden.render(node, os_family, out, sls="conntrackd", pillar=pillar, clean=True, timeout=120)
    return out


def words(text: str) -> list[str]:
    """Lines whitespace-normalised; comments (whole-line and trailing) dropped."""
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    return [" ".join(line.split()) for line in lines if line.strip()]


def changed_lines(a: str, b: str) -> list[tuple[str, str]]:
    diff = difflib.unified_diff(words(a), words(b), lineterm="", n=0)
    return [(line[0], line[1:]) for line in diff
            if line[:1] in "+-" and not line.startswith(("---", "+++"))]


def write_pillar(path: Path, lookup: dict | None = None, conntrackd: dict | None = None) -> Path:
    """pillar.example plus hafw:lookup:conntrackd and fw-pair conntrackd overrides."""
    data = yaml.safe_load(PILLAR.read_text())
    if lookup:
        data["hafw"]["lookup"] = {"conntrackd": lookup}
    if conntrackd:
        data["hafw"]["clusters"]["fw-pair"]["conntrackd"].update(conntrackd)
    path.write_text(yaml.safe_dump(data))
    return path


def salt_config(cfg: Path, node: str, pillar: Path = PILLAR, os_family: str = "Debian") -> Path:
    """A masterless minion config for node (as tools/render.py writes it)."""
    sys.path.insert(0, str(REPO))
    try:
        from tools import render as render_tool
    finally:
        sys.path.pop(0)
    cfg.mkdir(parents=True, exist_ok=True)
    render_tool.minion_opts(cfg, REPO, pillar, node, render_tool.node_grains(node, os_family), 0)
    return cfg


def salt_call(cfg: Path, *args):
    proc = subprocess.run([str(SALT_CALL), "--local", "-c", str(cfg), "--out", "json", *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)["local"]


def low_chunks(cfg: Path, sls: str = "conntrackd") -> dict[str, dict]:
    low = salt_call(cfg, "state.show_low_sls", sls)
    assert isinstance(low, list) and all(isinstance(c, dict) for c in low), low
    return {c["__id__"]: c for c in low}


def run_check_cmd(check_cmd: str, candidate: Path) -> subprocess.CompletedProcess:
    """What file.managed does: the check_cmd string, the candidate's path appended."""
    return subprocess.run(shlex.split(f"{check_cmd} {candidate}"), capture_output=True,
                          text=True, timeout=60)




# --------------------------------------------------------------------------
# the rendered files


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[tuple[str, str], str]:
    """{(node, os_family): conntrackd.conf} for the firewall pair of pillar.example."""
    base = tmp_path_factory.mktemp("render")
    return {(node, osf): (render(node, base / osf / node, os_family=osf) / CONF).read_text()
            for node in SYNC for osf in ("Debian", "RedHat")}


@pytest.mark.parametrize("os_family", ["Debian", "RedHat"])
def test_pair_differs_exactly_as_the_seeds_files(rendered, os_family):
    i, j = rendered[("fw-cent7i", os_family)], rendered[("fw-cent7j", os_family)]
    assert changed_lines(i, j) == SEED_DIFF
    # documented departure: the VIPs (which move between the nodes) are
    # ignored by both nodes, as in upstream's example configuration
    for text in (i, j):
        ignore = words(text)[words(text).index("Address Ignore {"):]
        for vip in VIPS:
            assert f"IPv4_address {vip}" in ignore


def test_file_carries_the_seed_settings(rendered):
    """RedHat: the seed's file plus the departures. Debian: also its own paths."""
    expected = words(SEED_CENT7I)
    expected.insert(expected.index("Mode FTFW {") + 1, "StartupResync on")
    last_ignore = expected.index("IPv4_address 192.168.3.41", expected.index("Address Ignore {"))
    expected[last_ignore + 1:last_ignore + 1] = [f"IPv4_address {vip}" for vip in VIPS]
    redhat = rendered[("fw-cent7i", "RedHat")]
    assert redhat.startswith("# Managed by Salt (hafw formula)")
    assert words(redhat) == expected
    debian = words(rendered[("fw-cent7i", "Debian")])
    assert [line for line in debian if line not in expected] == [
        "LockFile /var/lock/conntrackd.lock", "Path /var/run/conntrackd.sock"]
    assert len(debian) == len(expected)


# --------------------------------------------------------------------------
# the compiled states


@pytest.fixture(scope="module")
def chunks(tmp_path_factory) -> dict[str, dict]:
    return low_chunks(salt_config(tmp_path_factory.mktemp("salt"), "fw-cent7i"))


@pytest.mark.skipif(not SALT_CALL.exists(), reason=f"needs {SALT_CALL}")
def test_compiled_states(chunks):
    conf = chunks["hafw-conntrackd-config"]
    assert conf["name"] == "/etc/conntrackd/conntrackd.conf" and conf["mode"] == "0644"
    hook = chunks["hafw-conntrackd-hook"]
    assert hook["name"] == "/etc/conntrackd/primary-backup.sh"
    assert (hook["user"], hook["group"], hook["mode"]) == ("root", "root", "0755")
    assert hook["context"] == {
        "conntrackd_bin": CONNTRACKD, "config_path": "/etc/conntrackd/conntrackd.conf",
        "log_file": "/var/log/hafw-conntrackd.log", "state_file": "/run/conntrackd/hafw-role",
        "timeout_s": 10, "start_if_down": "no",
        # the takeover gate (docs/takeover.md): the pair's iptables ruleset defines the chain
        "gate_chain": "HAFW_GATE", "gate_table": "mangle", "iptables_bin": "/usr/sbin/iptables",
        "inject": "no", "refresh_s": 30, "hold_max_s": 10,
        "gate_backend": "iptables", "nft_bin": "/usr/sbin/nft"}
    assert chunks["hafw-conntrackd-state-dir"]["name"] == "/run/conntrackd"
    assert "d /run/conntrackd 0755 root root -" in chunks[
        "hafw-conntrackd-state-dir-tmpfiles"]["contents"]
    assert chunks["hafw-conntrackd-pkgs-installed"]["pkgs"] == ["conntrackd", "conntrack"]
    svc = chunks["hafw-conntrackd-service-running"]
    assert svc["fun"] == "running" and svc["enable"] is True
    assert {"file": "hafw-conntrackd-config"} in svc["watch"]
    # Debian's init script has no "status": the daemon is found by its command line
    ps = "root  42  1  0 10:00 ?  00:00:00   "
    for daemon in ("/usr/sbin/conntrackd -d -C /etc/conntrackd/conntrackd.conf",
                   "/usr/sbin/conntrackd -C /etc/conntrackd/conntrackd.conf",
                   "/usr/sbin/conntrackd -C /etc/conntrackd/conntrackd.conf -d"):
        assert re.search(svc["sig"], ps + daemon)
    for other in ("/usr/sbin/conntrackd -C /etc/conntrackd/conntrackd.conf -s",
                  "salt-call state.apply conntrackd", "vi /etc/conntrackd/conntrackd.conf"):
        assert not re.search(svc["sig"], ps + other)
    bulk = chunks["hafw-conntrackd-bulk-send-after-restart"]
    assert bulk["name"] == f"{CONNTRACKD} -C /etc/conntrackd/conntrackd.conf -B"
    assert bulk["onchanges"] == [{"service": "hafw-conntrackd-service-running"}]
    assert bulk["onlyif"] == [{"fun": "file.contains_regex",
                               "args": ["/run/conntrackd/hafw-role", r"^primary\b"]}]


@pytest.mark.skipif(not SALT_CALL.exists(), reason=f"needs {SALT_CALL}")
def test_compiled_states_redhat(tmp_path):
    chunks = low_chunks(salt_config(tmp_path, "fw-cent7i", os_family="RedHat"))
    assert chunks["hafw-conntrackd-pkgs-installed"]["pkgs"] == ["conntrack-tools"]
    # under SELinux the hook creates its state directory (keepalived_var_run_t)
    assert "hafw-conntrackd-state-dir" not in chunks
    assert "hafw-conntrackd-state-dir-tmpfiles" not in chunks
    assert chunks["hafw-conntrackd-hook"]["context"]["state_file"] == "/run/conntrackd/hafw-role"


@pytest.mark.skipif(not SALT_CALL.exists(), reason=f"needs {SALT_CALL}")
def test_other_nodes_get_no_conntrackd(tmp_path):
    for node in ("fw-cent7m", "lb-cent7g"):
        chunks = low_chunks(salt_config(tmp_path / node, node))
        assert list(chunks) == ["hafw-conntrackd-not-managed"]


@pytest.mark.parametrize("settings", [
    {},
    {"mode": "notrack", "transport": "multicast", "disable_external_cache": True},
    {"mode": "notrack", "transport": "tcp", "protocols": ["TCP", "ICMPv6", "UDPLITE", "SCTP"]},
    {"mode": "alarm", "transport": "udp", "options": {"mode": {"RefreshTime": 15}}},
    {"mode": "ftfw", "disable_external_cache": True, "options": {
        "mode": {"ResendQueueSize": 131072},
        "sync": {"Options": {"TCPWindowTracking": False, "ExpectationSync": ["ftp", "sip"]}},
        "general": {"NetlinkEventsReliable": True, "Scheduler": {"Type": "FIFO"}}}},
], ids=["seed", "notrack-multicast", "notrack-tcp", "alarm-udp", "ftfw-options"])
def test_conntrackd_accepts_every_rendered_variant(chunks, tmp_path, settings):
    pillar = write_pillar(tmp_path / "p.sls", conntrackd=settings)
    conf = render("fw-cent7i", tmp_path / "out", pillar=pillar) / CONF
    proc = run_check_cmd(chunks["hafw-conntrackd-config"]["check_cmd"], conf)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and conntrackd itself prints no warning about it besides its deprecations
    # (the sync link enp0s9 does not exist here)
    out = subprocess.run([CONNTRACKD, "-C", str(conf), "-s"], capture_output=True, text=True)
    warnings = [line for line in out.stderr.splitlines() if "[warning]" in line
                and "deprecated" not in line and "invalid interface" not in line]
    assert warnings == []
    text = conf.read_text()
    if settings.get("transport") == "multicast":
        assert words(text)[words(text).index("Multicast {"):][1:4] == [
            "IPv4_address 225.0.0.50", "Group 3780", "IPv4_interface 192.168.3.41"]
    if "ICMPv6" in settings.get("protocols", []):
        assert "IPv6-ICMP" in words(text) and "UDPLite" in words(text)


def test_check_refuses_what_conntrackd_refuses(chunks, rendered, tmp_path):
    check_cmd = chunks["hafw-conntrackd-config"]["check_cmd"]
    good = rendered[("fw-cent7i", "Debian")]
    for broken in (good.replace("HashSize", "HashSiz", 1),
                   good.replace("Checksum on", "Checksum maybe", 1),
                   good.replace("\t}\n}\nGeneral", "\t}\nGeneral", 1)):
        candidate = tmp_path / "candidate.conf"
        candidate.write_text(broken)
        proc = run_check_cmd(check_cmd, candidate)
        assert proc.returncode == 1
        assert "conntrackd rejects the new configuration" in proc.stdout
        assert "parsing config file" in proc.stdout
    # ALARM mode has no DisableExternalCache: the model refuses it, and so
    # does the check when a hand-edited file has it
    pillar = write_pillar(tmp_path / "p.sls", conntrackd={"mode": "alarm"})
    conf = render("fw-cent7i", tmp_path / "alarm", pillar=pillar) / CONF
    text = conf.read_text()
    assert "Mode ALARM {" in text
    conf.write_text(text.replace("Mode ALARM {", "Mode ALARM {\n\t\tDisableExternalCache on", 1))
    proc = run_check_cmd(check_cmd, conf)
    assert proc.returncode == 1 and "DisableExternalCache" in proc.stdout
    assert list(tmp_path.glob("*.check")) == []  # the check cleans up after itself


@pytest.mark.skipif(not SALT_CALL.exists(), reason=f"needs {SALT_CALL}")
def test_check_cmd_runs_before_the_live_file_is_replaced(tmp_path, rendered):
    cfg = salt_config(tmp_path / "salt", "fw-cent7i")
    chunk = low_chunks(cfg, "conntrackd.config")["hafw-conntrackd-config"]
    live = tmp_path / "conntrackd.conf"
    live.write_text("# the running configuration\n")

    bad = copy.deepcopy(chunk)
    bad["name"] = str(live)
    bad["context"]["node"]["conntrackd"]["options"] = {"general": {"HashSiz": 1}}
    ret = salt_call(cfg, "state.low", json.dumps(bad))
    assert ret["result"] is False
    assert "check_cmd execution failed" in ret["comment"]
    assert "symbol 'HashSiz'" in ret["comment"]
    assert live.read_text() == "# the running configuration\n"

    good = copy.deepcopy(chunk)
    good["name"] = str(live)
    ret = salt_call(cfg, "state.low", json.dumps(good))
    assert ret["result"] is True, ret["comment"]
    assert live.read_text() == rendered[("fw-cent7i", "Debian")]
    ret = salt_call(cfg, "state.low", json.dumps(good))
    assert ret["result"] is True and ret["changes"] == {}, ret


# --------------------------------------------------------------------------
# two real daemons on the sync link


class Node:
    """One firewall: a namespace, its rendered files, its conntrackd (by pid)."""

    def __init__(self, name: str, ns: str, base: Path, sock: Path):
        self.name, self.ns, self.base, self.sock = name, ns, base, sock
        self.conf = base / "conntrackd.conf"
        self.state_file = base / "hafw-role"
        self.proc: subprocess.Popen | None = None
        self.salt: Path | None = None

    def lookup(self) -> dict:
        return {"config": {"path": str(self.conf), "lock_file": str(self.base / "ctd.lock"),
                           "socket": str(self.sock)},
                "hook": {"state_file": str(self.state_file)}}

    def start(self):
        # in the foreground: this test owns the pid (no fork to daemonise)
        self.proc = subprocess.Popen(
            [IP, "netns", "exec", self.ns, CONNTRACKD, "-C", str(self.conf)],
            stdin=subprocess.DEVNULL, stdout=open(self.base / "daemon.log", "ab"),
            stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.ctl("-s").returncode == 0, 10, f"{self.name}'s conntrackd")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def ctl(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([CONNTRACKD, "-C", str(self.conf), *args], capture_output=True,
                              text=True, timeout=15)

    def cache(self, which: str) -> str:
        return self.ctl(which).stdout

    def inject(self, src: str, dst: str, sport: int, dport: int):
        subprocess.run([IP, "netns", "exec", self.ns, CONNTRACK, "-I", "-p", "tcp", "-s", src,
                        "-d", dst, "--sport", str(sport), "--dport", str(dport), "--state",
                        "ESTABLISHED", "-t", "300", "-u", "ASSURED"],
                       check=True, capture_output=True)


def entry(src: str, sport: int) -> re.Pattern:
    return re.compile(rf"src={re.escape(src)} dst=\S+ sport={sport} ")


@pytest.fixture
def pair(tmp_path, sock_dir):
    """fw-cent7i (A) and fw-cent7j (B): namespaces joined by enp0s9, files rendered."""
    if not os.access(CONNTRACK, os.X_OK):
        pytest.skip(f"needs {CONNTRACK}")
    made: list[str] = []
    nodes: list[Node] = []
    try:
        for name in SYNC:
            while True:
                ns = "hfcd" + secrets.token_hex(2)
                if not Path("/run/netns", ns).exists():
                    break
            subprocess.run([IP, "netns", "add", ns], check=True)
            made.append(ns)
            base = tmp_path / name
            base.mkdir()
            nodes.append(Node(name, ns, base, sock_dir / f"{name}.ctl"))
        a, b = nodes
        # one veth pair, one end in each namespace, both named enp0s9
        subprocess.run([IP, "-n", a.ns, "link", "add", "enp0s9", "type", "veth", "peer", "name",
                        "enp0s9b", "netns", b.ns], check=True)
        subprocess.run([IP, "-n", b.ns, "link", "set", "enp0s9b", "name", "enp0s9"], check=True)
        for node in nodes:
            ip = [IP, "-n", node.ns]
            subprocess.run([*ip, "addr", "add", SYNC[node.name] + "/24", "dev", "enp0s9"],
                           check=True)
            for link in ("lo", "enp0s9"):
                subprocess.run([*ip, "link", "set", link, "up"], check=True)
            pillar = write_pillar(node.base / "pillar.sls", lookup=node.lookup())
            out = render(node.name, node.base / "render", pillar=pillar)
            node.conf.write_text((out / str(node.conf).lstrip("/")).read_text())
            node.salt = salt_config(node.base / "salt", node.name, pillar)
        yield a, b
    finally:
        for node in nodes:
            node.stop()
        for ns in made:
            subprocess.run([IP, "netns", "delete", ns], check=False)


@pytest.mark.skipif(not SALT_CALL.exists(), reason=f"needs {SALT_CALL}")
def test_replication_and_resync_after_a_restart(pair):
    a, b = pair
    for node in (a, b):
        assert f"Path {node.sock}" in node.conf.read_text()
        node.start()

    # replication over the sync link, both ways (addresses the ignore list lets through)
    a.inject("10.1.1.1", "10.2.2.2", 1111, 22)
    b.inject("10.5.5.5", "10.6.6.6", 5555, 80)
    wait_for(lambda: entry("10.1.1.1", 1111).search(b.cache("-e")), 10, "A's entry on B")
    wait_for(lambda: entry("10.5.5.5", 5555).search(a.cache("-e")), 10, "B's entry on A")
    assert entry("10.1.1.1", 1111).search(a.cache("-i"))

    # restart A as the service does; meanwhile A's kernel gets a connection
    a.stop()
    a.inject("10.3.3.3", "10.4.4.4", 3333, 443)
    a.start()
    # the restart emptied A's external cache; StartupResync refills it from B
    wait_for(lambda: entry("10.5.5.5", 5555).search(a.cache("-e")), 10,
             "B's entry back on A (StartupResync)")
    assert "resync requested by other node" in (b.base / "daemon.log").read_text()
    # A's start-up dump fills its internal cache but sends nothing: B lacks it
    wait_for(lambda: entry("10.3.3.3", 3333).search(a.cache("-i")), 10, "A's new entry on A")
    time.sleep(2)
    assert not entry("10.3.3.3", 3333).search(b.cache("-e"))

    # the state's post-restart step, run by Salt: nothing on a backup ...
    bulk = low_chunks(a.salt)["hafw-conntrackd-bulk-send-after-restart"]
    assert bulk["name"] == f"{CONNTRACKD} -C {a.conf} -B"
    a.state_file.write_text("backup 1700000000000\n")
    ret = salt_call(a.salt, "state.low", json.dumps(bulk))
    assert ret["result"] is True and ret["changes"] == {}, ret
    assert "onlyif condition is false" in ret["comment"]
    time.sleep(1)
    assert not entry("10.3.3.3", 3333).search(b.cache("-e"))
    # ... a bulk send on the primary: B gets what A created while it was down
    a.state_file.write_text("primary 1700000000001\n")
    ret = salt_call(a.salt, "state.low", json.dumps(bulk))
    assert ret["result"] is True and ret["changes"]["retcode"] == 0, ret
    wait_for(lambda: entry("10.3.3.3", 3333).search(b.cache("-e")), 10,
             "A's new entry on B after -B")
    assert entry("10.1.1.1", 1111).search(b.cache("-e"))


def test_inject_mode_reaches_the_hook(tmp_path):
    """DisableExternalCache changes what the hook does at each transition
    (docs/takeover.md): the rendered hook must say so, as the string the
    hook compares (a YAML `yes` in the state's context would become True)."""
    pillar = write_pillar(tmp_path / "p.sls", conntrackd={"disable_external_cache": True, "inject_refresh_s": 20})
    out = render("fw-cent7j", tmp_path / "out", pillar=pillar)
    assert "DisableExternalCache on" in words((out / CONF).read_text())
    hook = (out / "etc/conntrackd/primary-backup.sh").read_text().splitlines()
    assert "INJECT_DEFAULT='yes'" in hook and "REFRESH_S_DEFAULT='20'" in hook
    seed = render("fw-cent7j", tmp_path / "seed") / "etc/conntrackd/primary-backup.sh"
    assert "INJECT_DEFAULT='no'" in seed.read_text().splitlines()
