"""
The rendered files carry the seed's settings, apart from the departures in
docs/departures.md, and nothing else.

Each seed file (test/fixtures/seed/, cut from the original write-up) is
parsed into a set of settings; each documented departure is a small named
edit of that set; the edited seed must equal what the formula renders from
pillar.example. The seed's iptables scripts are run for real in a scratch
network namespace and compared with our ruleset through iptables-save.
"""

import pathlib
import re
import secrets
import subprocess

import pytest

from test.support.braceconf import settings
from tools.golden import render

REPO = pathlib.Path(__file__).resolve().parents[2]
SEED = REPO / "test" / "fixtures" / "seed"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """make render output for the nodes whose files the seed shows."""
    out = {}
    for node in ("fw-cent7i", "fw-cent7j", "lb-cent7g", "fw-cent7m"):
        for family in ("Debian", "RedHat"):
            root = tmp_path_factory.mktemp(f"{node}-{family}")
            render(node, family, root)
            out[node, family] = root
    return out


def read(root, path):
    return (root / path.lstrip("/")).read_text()


# -- departures, one function each (docs/departures.md) -----------------------
def keepalived_global_defs(s, node, lvs_sync=None):
    """global_defs: router_id, script security, the notify FIFO (+ LVS sync)."""
    s |= {"global_defs/", f"global_defs/router_id {node}", "global_defs/enable_script_security",
          "global_defs/script_user root", "global_defs/vrrp_notify_fifo /run/keepalived/notify.fifo"}
    if lvs_sync:
        s.add(f"global_defs/lvs_sync_daemon {lvs_sync}")
    return s


def keepalived_explicit_instance_settings(s):
    """Each instance says its VRRP version, GARP delay and GARP refresh; each VIP its device."""
    out = set()
    for item in s:
        m = re.match(r"^(vrrp_instance \S+)/virtual_ipaddress/(\S+ brd \S+)$", item)
        out.add(item if not m else f"{item} dev {{{m.group(1)}}}")
    instances = {i.split("/")[0] for i in s if i.startswith("vrrp_instance ")}
    for inst in instances:
        out |= {f"{inst}/version 2", f"{inst}/garp_master_delay 1", f"{inst}/garp_master_refresh 10"}
        iface = next(i.split(" ", 1)[1] for i in s if i.startswith(f"{inst}/interface "))
        out = {i.replace(f"dev {{{inst}}}", f"dev {iface.split('/')[-1].split()[-1]}") for i in out}
    return out


def keepalived_valid_state(s, state):
    """The seed's `state SLAVE` is not a keepalived state."""
    return {re.sub(r"/state SLAVE$", f"/state {state}", i) for i in s}


def keepalived_notify_stop(s, group, hook):
    return s | {f"vrrp_sync_group {group}/notify_stop {hook} stop"}


def keepalived_track_script(s, name, command):
    """A vrrp_script running command every second (timeout 5, fall 3,
    init_fail), tracked by every instance."""
    script = f"vrrp_script {name}"
    s = s | {f"{script}/", f"{script}/script {command}", f"{script}/interval 1",
             f"{script}/timeout 5", f"{script}/fall 3", f"{script}/init_fail"}
    for inst in {i.split("/")[0] for i in s if i.startswith("vrrp_instance ")}:
        s |= {f"{inst}/track_script/", f"{inst}/track_script/{name}"}
    return s


def keepalived_resync_hold(s, hook):
    """A vrrp_script that holds the sync group in FAULT after a boot until
    conntrackd's startup resync is done, tracked by every instance."""
    return keepalived_track_script(s, "hafw_resync", f"{hook} synced")


def keepalived_maintenance(s, group=None):
    """Demote and step-down files tracked by every instance, for the vrrp_sync states."""
    files = {"hafw_demote": "/run/keepalived/hafw-demote", "hafw_step_down": "/run/keepalived/hafw-step-down",
             "hafw_demote_persistent": "/var/lib/hafw/vrrp-demote"}
    for name, path in files.items():
        weight = 0 if name == "hafw_step_down" else -253
        s = s | {f"track_file {name}/", f"track_file {name}/file {path}", f"track_file {name}/weight {weight}",
                 f"track_file {name}/init_file 0"}
    for inst in {i.split("/")[0] for i in s if i.startswith("vrrp_instance ")}:
        s |= {f"{inst}/track_file/", *(f"{inst}/track_file/{name}" for name in files)}
    if group:
        s |= {f"vrrp_sync_group {group}/sync_group_tracking_weight"}
    return s


def keepalived_lvs_sync_moved(s):
    """lvs_sync_daemon_interface (deprecated) -> global_defs lvs_sync_daemon."""
    return {i for i in s if "lvs_sync_daemon_interface" not in i}


def conntrackd_ignore_vips(s):
    vips = ("192.168.0.40", "192.168.0.60", "192.168.0.88", "192.168.1.40")
    return s | {f"general/filter from userspace/address ignore/ipv4_address {v}" for v in vips}


def conntrackd_startup_resync(s):
    return s | {"sync/mode ftfw/startupresync on"}


def conntrackd_platform_paths(s, family):
    """Debian keeps its own package's lock and socket paths; RedHat the seed's."""
    if family == "RedHat":
        return s
    return ({i for i in s if not i.startswith(("general/lockfile", "general/unix/path"))}
            | {"general/lockfile /var/lock/conntrackd.lock", "general/unix/path /var/run/conntrackd.sock"})


def lower(items):
    return {i.lower() for i in items}


@pytest.mark.parametrize("family", ["Debian", "RedHat"])
@pytest.mark.parametrize("node,seed", [("fw-cent7i", "conntrackd-cent7i.conf"),
                                       ("fw-cent7j", "conntrackd-cent7j.conf")])
def test_conntrackd_conf(rendered, node, seed, family):
    want = lower(settings((SEED / seed).read_text()))  # conntrackd keys are case-insensitive
    want = conntrackd_platform_paths(conntrackd_startup_resync(conntrackd_ignore_vips(want)), family)
    got = lower(settings(read(rendered[node, family], "/etc/conntrackd/conntrackd.conf")))
    assert got == want, f"extra: {sorted(got - want)}\nmissing: {sorted(want - got)}"


@pytest.mark.parametrize("family", ["Debian", "RedHat"])
def test_firewall_keepalived_conf(rendered, family):
    seed = settings((SEED / "keepalived-cent7i.conf").read_text())
    want = keepalived_valid_state(seed, "MASTER")
    want = keepalived_explicit_instance_settings(want)
    want = keepalived_global_defs(want, "fw-cent7i")
    want = keepalived_notify_stop(want, "G1", "/etc/conntrackd/primary-backup.sh")
    want = keepalived_resync_hold(want, "/etc/conntrackd/primary-backup.sh")
    want = keepalived_maintenance(want, "G1")
    got = settings(read(rendered["fw-cent7i", family], "/etc/keepalived/keepalived.conf"))
    assert got == want, f"extra: {sorted(got - want)}\nmissing: {sorted(want - got)}"


@pytest.mark.parametrize("family", ["Debian", "RedHat"])
def test_loadbalancer_keepalived_conf(rendered, family):
    seed = settings((SEED / "keepalived-cent7g.conf").read_text())
    want = keepalived_lvs_sync_moved(seed)
    want = keepalived_explicit_instance_settings(want)
    want = keepalived_global_defs(want, "lb-cent7g", lvs_sync="enp0s8 instance52")
    want = keepalived_maintenance(want, "group500")
    got = settings(read(rendered["lb-cent7g", family], "/etc/keepalived/keepalived.conf"))
    assert got == want, f"extra: {sorted(got - want)}\nmissing: {sorted(want - got)}"


# -- iptables: run the seed's script and restore ours, compare iptables-save ----
@pytest.fixture
def netns():
    name = f"hf{secrets.token_hex(2)}-seedipt"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def saved_rules(ns):
    out = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"], check=True,
                         capture_output=True, text=True).stdout
    return {ln.split(" [")[0] for ln in out.splitlines() if ln.startswith(("-A ", ":"))}


def run_seed_script(ns, script):
    subprocess.run(["ip", "netns", "exec", ns, "bash", str(SEED / script)], check=True, capture_output=True)
    return saved_rules(ns)


def iptables_conntrack_match(rules):
    """-m state --state ESTABLISHED -> -m conntrack --ctstate RELATED,ESTABLISHED."""
    return {r.replace("-m state --state ESTABLISHED", "-m conntrack --ctstate RELATED,ESTABLISHED")
            for r in rules}


def iptables_peer_openings(rules, peer, octet):
    """Pairs: ESTABLISHED then VRRP and conntrackd from the peer, top of INPUT."""
    return rules | {
        "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f'-A INPUT -s 192.168.0.{octet}/32 -d 224.0.0.18/32 -i enp0s3 -p vrrp -m comment '
        f'--comment "hafw: VRRP VI_1 from {peer}" -j ACCEPT',
        f'-A INPUT -s 192.168.1.{octet}/32 -d 224.0.0.18/32 -i enp0s8 -p vrrp -m comment '
        f'--comment "hafw: VRRP VI_2 from {peer}" -j ACCEPT',
        f'-A INPUT -s 192.168.3.{octet}/32 -i enp0s9 -p udp -m udp --dport 3780 -m comment '
        '--comment "hafw: conntrackd sync from peer" -j ACCEPT',
    }


def iptables_takeover_gate(rules, own3, own8):
    """Pairs: the takeover gate chain in mangle (docs/takeover.md); its jump is the hook's."""
    closed = '-m comment --comment "hafw: closed until this node has committed the replicated states" -j DROP'
    return rules | {
        ":FORWARD ACCEPT",  # mangle's built-in chains (nat already lists the other four)
        ":HAFW_GATE -",
        '-A HAFW_GATE -p vrrp -m comment --comment "hafw: VRRP" -j RETURN',
        f'-A HAFW_GATE -d {own3}/32 -i enp0s3 -m comment --comment "hafw: own address" -j RETURN',
        f'-A HAFW_GATE -d {own8}/32 -i enp0s8 -m comment --comment "hafw: own address" -j RETURN',
        f"-A HAFW_GATE -i enp0s3 -m conntrack --ctstate INVALID,NEW {closed}",
        f"-A HAFW_GATE -i enp0s8 -m conntrack --ctstate INVALID,NEW {closed}",
    }


@pytest.mark.parametrize("node,script,path", [
    ("fw-cent7i", "iptables-cent7i-cent7j.sh", "/etc/iptables/rules.v4"),
    ("fw-cent7m", "iptables-cent7m.sh", "/etc/iptables/rules.v4"),
])
def test_iptables_ruleset(rendered, netns, node, script, path, tmp_path):
    want = iptables_conntrack_match(run_seed_script(netns, script))
    if node == "fw-cent7i":
        want = iptables_peer_openings(want, "fw-cent7j", 42)
        want = iptables_takeover_gate(want, "192.168.0.41", "192.168.1.41")
    subprocess.run(["ip", "netns", "exec", netns, "iptables-restore",
                    str(rendered[node, "Debian"] / path.lstrip("/"))], check=True)
    got = saved_rules(netns)
    assert got == want, f"extra: {sorted(got - want)}\nmissing: {sorted(want - got)}"
    # RedHat's file is the same ruleset
    assert read(rendered[node, "RedHat"], "/etc/sysconfig/iptables") == read(rendered[node, "Debian"], path)
