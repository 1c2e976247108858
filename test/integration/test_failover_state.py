"""
Failover after the replicated state was disturbed, and with other pillars,
on a live fleet of its own (see test_failover.py for the flows and R1-R3).
Its pillar is pillar.example with the formula's default VRRP timing (no
advert_int or version for the pair), so that takeovers are quick. Every
scenario runs 250 flows and asserts none was lost or reset.

- R12: the master stalls for 1.5 s while deaf to VRRP (what a reload on a
  loaded machine did in CI): the backup takes over and gives the role back
  at once, and the master, which never saw it, never re-announced. Its
  periodic gratuitous ARP (`vrrp:garp_master_refresh`) takes the
  neighbours back within the refresh period; with it off (the negative
  control) they stay on the backup, whose gate drops new connections.
- R5: the backup's conntrackd restarts (empty external cache; StartupResync
  asks the primary for its states), then the primary crashes.
- R4: the sync cable is out for 10 s while old flows run and new ones start,
  back in, then the primary crashes: what was missed must have been resent.
- Config change under load: the pillar scales the table up (a conntrackd
  and a kernel setting) and changes a keepalived setting; the converge
  reloads keepalived and restarts conntrackd on both nodes while the flows
  run; then the primary crashes, so the restarted daemons must replicate.
- Race-free takeover: 100k extra entries on the primary (replicated to the
  backup: the commit takes about a second) and a crash: 0 resets.
- R6 with nopreempt: the crashed primary reboots and stays backup (no
  failback); the operator then forces the failback by restarting keepalived
  on the master.
- R9: five failovers in 30 s (inside cable out and in on the preferred
  node, preempt on).
- Inject mode (DisableExternalCache, last: it lowers the UDP stream
  timeout): 100k extra entries go straight into the backup's kernel table,
  UDP flows outlive the stream timeout there because the backup asks for a
  resync every 5 s, and the takeover commits nothing: 0 lost.
"""

import copy
import json
import re
import time

import pytest

from lab import Lab
from lab.diagnose import conntrack_count, conntrackd_caches, gate_closed
from lab.fleet import Fleet
from lab.flows import INTERNET, OUT_TCP, OUT_UDP, SMTP
from lab.salt import example_pillar
from lab.saltmaster import VENV_BIN
from lab.wait import wait_for
from test.support.failover import (
    HOOK_LOG,
    NEIGHBOURS,
    PAIR_VIPS,
    REPO,
    Scenario,
    assert_nothing_lost,
    crash_and_take_over,
    neighbour_entries,
    preferred_primary,
    revive,
    role,
    running,
    settle,
)

TAKEOVER_S = 10  # the default timing: 3 adverts + skew (a few seconds at most), plus room for a busy machine
EXTRA_ENTRIES = 100_000

pytestmark = pytest.mark.skipif(not (VENV_BIN / "salt-master").exists(), reason="run make setup first")


def pair_pillar(**changes):
    """pillar.example with the fw-pair cluster changed: {"vrrp": {...}, "conntrackd": {...}, ...}
    (a None value removes the key); the VRRP timing is always the formula's default."""
    pillar = copy.deepcopy(example_pillar())
    pair = pillar["hafw"]["clusters"]["fw-pair"]
    changes.setdefault("vrrp", {}).update(advert_int=None, version=None)
    for section, values in changes.items():
        for key, value in values.items():
            if value is None:
                pair[section].pop(key, None)
            else:
                pair[section][key] = value
    return pillar


BASE = pair_pillar()
# a bigger table (room for the race test's 100k extra entries) and a keepalived change
SCALED = pair_pillar(kernel={"nf_conntrack_max": 131072}, conntrackd={"hash_limit": 262144},
                     vrrp={"garp_master_delay": 2})
# the same, with nopreempt (the race test's entries are still in the table)
NOPREEMPT = pair_pillar(kernel={"nf_conntrack_max": 131072}, conntrackd={"hash_limit": 262144},
                        vrrp={"garp_master_delay": 2, "preempt": False})

# inject mode, with a UDP stream timeout short enough that the test outlives it
UDP_STREAM_TIMEOUT_S = 15
INJECT_REFRESH_S = 5
INJECT = pair_pillar(kernel={"nf_conntrack_max": 131072,
                             "sysctl": {"net.netfilter.nf_conntrack_udp_timeout_stream": UDP_STREAM_TIMEOUT_S}},
                     conntrackd={"hash_limit": 262144, "disable_external_cache": True,
                                 "inject_refresh_s": INJECT_REFRESH_S})


def apply_pillar(fleet, pillar):
    """Serve the pillar and converge the firewalls (if it is not served already)."""
    if fleet.pillar != pillar:
        revive(fleet)
        fleet.set_pillar(pillar)
        result = fleet.converge()
        assert all(r["ok"] for r in result.values()), result
        return result
    return None


@pytest.fixture(scope="module")
def fleet():
    with Lab() as lab:
        fleet = Fleet(lab, pillar=BASE)
        fleet.up()
        yield fleet


GARP_REFRESH_S = 10  # the formula's default vrrp:garp_master_refresh (R12)


def takeovers(fleet, name):
    """How many primary transitions the node's hook has logged."""
    return int(fleet[name].exec(["grep", "-c", "primary: begin", HOOK_LOG], check=False).stdout.strip() or 0)


def stall_deaf(fleet, primary, backup, seconds=1.5):
    """Stop the primary's keepalived for `seconds` while it drops every VRRP packet it
    receives (raw table), then let it run: the backup takes over (its GARPs move the
    neighbours) and steps down at the primary's next advert, which never saw it.
    Returns the monotonic time the primary resumed (after the backup took over and stepped down)."""
    for neighbour, vip in NEIGHBOURS.items():  # fresh entries to move: GARPs only update existing ones
        fleet[neighbour].exec(["sh", "-c", f"ip neigh flush to {vip}; ping -c 1 -W 2 {vip} >/dev/null"])
    assert {e[2] for e in neighbour_entries(fleet)} == {primary}, neighbour_entries(fleet)
    before = takeovers(fleet, backup)
    deaf = ["PREROUTING", "-p", "vrrp", "-m", "comment", "--comment", "r12-deaf", "-j", "DROP"]
    host = fleet[primary]
    host.exec(["iptables", "-w", "5", "-t", "raw", "-I", *deaf])
    try:
        host.exec(["sh", "-c", f"pkill -STOP -x keepalived; sleep {seconds}; pkill -CONT -x keepalived"])
        resumed = time.monotonic()
        wait_for(lambda: role(fleet, backup) == "backup" and takeovers(fleet, backup) != before, 10,
                 f"{backup} to take over and step down again")
    finally:
        host.exec(["pkill", "-CONT", "-x", "keepalived"], check=False)
        host.exec(["iptables", "-w", "5", "-t", "raw", "-D", *deaf], check=False)
    return resumed


def neighbours_on(fleet, name):
    """Every neighbour has an entry for its VIP, all with name's MAC."""
    entries = neighbour_entries(fleet)
    return {e[0] for e in entries} == set(NEIGHBOURS) and all(owner == name for _, _, owner, _ in entries)


def test_r12_a_stalled_deaf_master_takes_the_neighbours_back(fleet, tmp_path):
    primary, backup = preferred_primary(fleet)
    # the period the formula rendered (the default), not a number of the test's own
    conf = fleet[primary].exec(["cat", "/etc/keepalived/keepalived.conf"]).stdout
    refresh = {int(n) for n in re.findall(r"^\s*garp_master_refresh (\d+)$", conf, re.M)}
    assert refresh == {GARP_REFRESH_S}, f"garp_master_refresh in {primary}'s keepalived.conf: {refresh}"
    resumed = stall_deaf(fleet, primary, backup)
    wait_for(lambda: neighbours_on(fleet, primary), GARP_REFRESH_S + 3,
             f"the neighbours to point at {primary} again", 0.2, lambda: str(neighbour_entries(fleet)))
    print(f"R12: neighbours back on {primary} at most {time.monotonic() - resumed:.1f} s after it resumed")
    # and new connections through every VIP are served
    scenario = Scenario(fleet, tmp_path, "r12-stalled-master").start(duration=5, inbound=20, outbound=10, udp=5)
    (result,) = scenario.collect()
    assert_nothing_lost(result)


def test_r12_negative_control_without_the_refresh_the_neighbours_stay_stranded(fleet):
    apply_pillar(fleet, pair_pillar(vrrp={"garp_master_refresh": 0}))
    # (not waiting for the neighbours: without the refresh a blip of the converge would strand them)
    primary, backup = settle(fleet, primary="fw-cent7i", neighbours=False)
    stall_deaf(fleet, primary, backup)
    time.sleep(GARP_REFRESH_S + 3)
    assert {(n, owner) for n, _, owner, _ in neighbour_entries(fleet)} == {(n, backup) for n in NEIGHBOURS}, \
        f"expected every neighbour stranded on {backup}: {neighbour_entries(fleet)}"
    apply_pillar(fleet, BASE)  # the refresh is back: the next tests start from a reachable primary
    wait_for(lambda: neighbours_on(fleet, primary), GARP_REFRESH_S + 3,
             f"the neighbours to point at {primary} again", 0.5, lambda: str(neighbour_entries(fleet)))


def test_r5_backup_conntrackd_restart_then_failover(fleet, tmp_path):
    primary, backup = preferred_primary(fleet)
    scenario = Scenario(fleet, tmp_path, "r5-backup-conntrackd-restart").start(duration=25)
    scenario.mark(f"restart conntrackd on {backup}")
    fleet[backup].exec(["/etc/init.d/conntrackd", "restart"])
    time.sleep(3)
    crash_and_take_over(fleet, scenario, primary, backup, TAKEOVER_S)
    (result,) = scenario.collect()
    assert_nothing_lost(result)


def test_r4_sync_cable_out_and_in_then_failover(fleet, tmp_path):
    primary, backup = preferred_primary(fleet)
    scenario = Scenario(fleet, tmp_path, "r4-sync-cable").start(duration=40)
    scenario.mark(f"{primary}: sync cable (enp0s9) out")
    fleet[primary].cable_out("enp0s9")
    # flows born while the backup hears nothing of them
    scenario.more_flows(tmp_path, duration=32, inbound=30, outbound=10, udp=10)
    scenario.mark("new flows running")
    time.sleep(10)
    scenario.mark(f"{primary}: sync cable in")
    fleet[primary].cable_in("enp0s9")
    time.sleep(5)
    crash_and_take_over(fleet, scenario, primary, backup, TAKEOVER_S)
    old, new = scenario.collect()
    assert new["summary"]["flows"] == 50
    assert_nothing_lost(old, new)


def test_r9_five_failovers_in_30_s(fleet, tmp_path):
    apply_pillar(fleet, BASE)
    primary, backup = preferred_primary(fleet)
    scenario = Scenario(fleet, tmp_path, "r9-five-failovers").start(duration=40)
    start = time.monotonic()
    for n in range(5):
        if n % 2 == 0:
            scenario.mark(f"failover {n + 1}: {primary} inside cable out")
            fleet[primary].cable_out("enp0s8")
            scenario.takeover(backup, 10)
        else:
            scenario.mark(f"failover {n + 1}: {primary} inside cable in (preempt)")
            fleet[primary].cable_in("enp0s8")
            scenario.takeover(primary, 10)
    five = time.monotonic() - start
    fleet[primary].cable_in("enp0s8")
    (result,) = scenario.collect()
    assert five <= 30, f"five failovers took {five:.1f} s"
    assert_nothing_lost(result)


def test_config_change_under_load_loses_no_flow(fleet, tmp_path):
    primary, backup = preferred_primary(fleet)
    scenario = Scenario(fleet, tmp_path, "config-change").start(duration=45)
    scenario.mark("converge the changed pillar")
    result = apply_pillar(fleet, SCALED)
    scenario.mark("converged")
    for node in (primary, backup):
        assert {"hafw-keepalived-config", "hafw-conntrackd-config"} <= set(result[node]["changed"]), result[node]
    assert fleet.vips(primary) != [] and fleet.vips(backup) == [], "the reload moved the VIPs"
    time.sleep(8)
    crash_and_take_over(fleet, scenario, primary, backup, TAKEOVER_S)
    (result,) = scenario.collect()
    assert_nothing_lost(result)


def fill_and_replicate(fleet, primary, backup, replica, where):
    """EXTRA_ENTRIES on the primary (lab.ctfill); wait until replica(backup) holds them.
    An earlier test may have left the same entries in the pair's tables (the race
    test's, carried by the failbacks since): those are "File exists", not errors."""
    fill = fleet[primary].exec(["sh", "-c", f"cd {REPO} && exec .venv/bin/python -m lab.ctfill "
                                            f"{EXTRA_ENTRIES} --timeout 600"], timeout=120)
    assert set(json.loads(fill.stdout)["errors"]) <= {"EEXIST"}, fill.stdout
    wait_for(lambda: replica(fleet[backup]) >= EXTRA_ENTRIES, 90,
             f"{backup}'s {where} to hold the {EXTRA_ENTRIES} entries", 1,
             lambda: f"{backup}'s {where}: {replica(fleet[backup])}")


def test_race_free_takeover_with_100k_extra_entries(fleet, tmp_path):
    apply_pillar(fleet, SCALED)
    primary, backup = preferred_primary(fleet)
    fill_and_replicate(fleet, primary, backup, lambda h: conntrackd_caches(h)[1], "external cache")
    scenario = Scenario(fleet, tmp_path, "race-100k").start(duration=20)
    crash_and_take_over(fleet, scenario, primary, backup, TAKEOVER_S)
    (result,) = scenario.collect()
    assert_nothing_lost(result)
    committed = int(fleet[backup].exec(["conntrack", "-C"]).stdout)
    assert committed >= EXTRA_ENTRIES, f"{backup} committed only {committed} entries"


def test_r6_nopreempt_no_failback_then_forced_failback(fleet, tmp_path):
    apply_pillar(fleet, NOPREEMPT)
    primary, backup = settle(fleet)
    fleet.crash(primary)
    fleet.wait_vips(backup, PAIR_VIPS, timeout=TAKEOVER_S)
    scenario = Scenario(fleet, tmp_path, "r6-nopreempt").start(duration=40)
    scenario.mark(f"reboot {primary}")
    highstate = fleet.reboot(primary)
    assert highstate["ok"], highstate
    wait_for(lambda: role(fleet, primary) == "backup", 30, f"{primary} to come back as backup")
    time.sleep(5)
    assert fleet.vips(primary) == [] and len(fleet.vips(backup)) == PAIR_VIPS, "nopreempt failed back"
    scenario.mark(f"restart keepalived on {backup}: forced failback")
    # stop, then start: Debian's init script `restart` starts 1 s after sending TERM and
    # fails ("already running") when keepalived's shutdown takes longer (the notify_stop
    # hook), leaving it stopped; the converge of the next test started it again
    fleet[backup].exec(["/etc/init.d/keepalived", "stop"])
    wait_for(lambda: not running(fleet, backup, "keepalived"), 15, f"keepalived to stop on {backup}")
    fleet[backup].exec(["/etc/init.d/keepalived", "start"])
    scenario.takeover(primary, TAKEOVER_S)
    (result,) = scenario.collect()
    assert_nothing_lost(result)


def flow_entries(host, proto, nat=False):
    """The flows' entries in the host's kernel table, as (src, sport), or with nat=True
    (src, sport, reply src, reply dst, reply dport): the reply tuple shows the NAT (an entry
    injected without its DNAT would leave the inbound flows' packets to the VIP, local on
    the new master, which answers with a reset). UDP to the outside server; TCP to it and
    to the SMTP DNAT, ESTABLISHED only (earlier tests' flows ended: their entries close)."""
    targets = [(INTERNET, OUT_UDP)] if proto == "udp" else [(INTERNET, OUT_TCP), SMTP]
    state = ["--state", "ESTABLISHED"] if proto == "tcp" else []
    entries = set()
    for addr, port in targets:
        out = host.exec(["conntrack", "-L", "-p", proto, *state, "-d", addr, "--dport", str(port)],
                        check=False).stdout
        for line in out.splitlines():
            if line.count("src=") == 2:
                cut = line.rindex("src=")
                orig = dict(re.findall(r"(src|sport)=(\S+)", line[:cut]))
                reply = dict(re.findall(r"(src|dst|dport)=(\S+)", line[cut:]))
                key = (orig["src"], orig["sport"])
                entries.add(key + (reply["src"], reply["dst"], reply["dport"]) if nat else key)
    return entries


def test_inject_mode_takes_over_without_a_commit(fleet, tmp_path):
    apply_pillar(fleet, INJECT)
    primary, backup = preferred_primary(fleet)
    # the replica is the backup's kernel table (no external cache)
    fill_and_replicate(fleet, primary, backup, conntrack_count, "kernel table")
    # still the settled pair the scenario needs after the fill (a CI run once saw every new TCP
    # connection through the primary fail from here on: if the pair is not settled, say so here)
    assert preferred_primary(fleet, primary) == (primary, backup)
    scenario = Scenario(fleet, tmp_path, "inject-100k").start(duration=45)
    scenario.mark(f"{primary}: {conntrack_count(fleet[primary])} entries, gate "
                  f"{'closed' if gate_closed(fleet[primary]) else 'open'}")
    udp_flows = 50  # Flows.start's default
    # past the stream timeout: without the backup's periodic resync its UDP entries would be gone
    time.sleep(UDP_STREAM_TIMEOUT_S + 10)
    # every UDP entry of the primary is on the backup, or back within a few refresh cycles: a
    # full resync of the 100k table takes seconds on a busy machine (a CI rehearsal caught 6
    # of 50 between two refreshes); without the refresh an expired entry never comes back
    seen = {}

    def udp_on_backup():
        seen["primary"], seen["backup"] = flow_entries(fleet[primary], "udp"), flow_entries(fleet[backup], "udp")
        return seen["primary"] <= seen["backup"]
    wait_for(udp_on_backup, 3 * INJECT_REFRESH_S, "the backup to hold every UDP entry of the primary", 1,
             lambda: f"{len(seen['primary'] - seen['backup'])} UDP entries expired on the backup, "
                     f"e.g. {sorted(seen['primary'] - seen['backup'])[:3]}")
    assert len(seen["primary"]) >= udp_flows  # (and the entries earlier tests' flows left)
    # the TCP flows' entries were injected once, at their start (a CI run once lost every TCP flow here)
    on_primary, on_backup = flow_entries(fleet[primary], "tcp", nat=True), flow_entries(fleet[backup], "tcp", nat=True)
    assert on_primary <= on_backup, f"{len(on_primary - on_backup)} of {len(on_primary)} TCP entries (with " \
                                    f"their NAT) missing on the backup, e.g. {sorted(on_primary - on_backup)[:3]}" \
                                    f"; the backup has e.g. {sorted(on_backup - on_primary)[:3]}"
    crash_and_take_over(fleet, scenario, primary, backup, TAKEOVER_S)
    (result,) = scenario.collect()
    assert_nothing_lost(result)
    log = fleet[backup].exec(["cat", HOOK_LOG]).stdout
    takeover = log[log.rindex("primary: begin"):]
    assert "step=commit" not in takeover and "step=gate-open rc=0" in takeover, takeover
