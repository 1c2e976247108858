"""
Operating a live firewall pair through Salt (issue 4): the node's role,
whether a failover now would lose connections, the consistency state, and
the planned switchover in both directions, on a fleet of its own with
pillar.example and the formula's default VRRP timing.

- sync_health on a settled pair with flows running: nothing would be lost.
- The sync cable out while new flows start: sync_health on the primary
  counts them as missing from the backup's replica; cable in and a resync:
  none missing again.
- The consistency state: a primary whose gate was closed behind the hook's
  back is put right (the primary transition runs again), a second run
  changes nothing.
- Planned switchover with 250 live flows: ``vrrp_sync.backup`` on the
  primary (maintenance: the role moves to the peer) and then
  ``vrrp_sync.master`` on it (the role comes back): 0 flows lost, 0 resets.
- Persistent maintenance: the demoted primary reboots and stays backup
  although it has the higher priority and preempts.
- nopreempt (the load balancers' setting): a backup never takes the role by
  priority, so the switchover relies on the step-down's FAULT: 0 lost.
"""

import time

import pytest

from lab.saltmaster import VENV_BIN
from lab.wait import wait_for
from test.support.failover import (
    PAIR_VIPS,
    Scenario,
    assert_nothing_lost,
    default_timing,
    live_fleet,
    preferred_primary,
    role,
    settle,
)

pytestmark = pytest.mark.skipif(not (VENV_BIN / "salt-master").exists(), reason="run make setup first")

HOOK = "/etc/conntrackd/primary-backup.sh"



@pytest.fixture(scope="module")
def fleet():
    yield from live_fleet(default_timing())


def call(fleet, minion, *args, timeout=60):
    """salt MINION ARGS: the minion's return (a failed call's message fails the test)."""
    out = fleet.salt(minion, *args, timeout=timeout)
    assert minion in out, (args, out)
    return out[minion]


def state(fleet, minion, fun, *args, timeout=120):
    """salt MINION state.single FUN name=G1 ARGS: the one state's result dict."""
    out = call(fleet, minion, "state.single", fun, "name=G1", *args, timeout=timeout)
    assert isinstance(out, dict) and len(out) == 1, out
    return next(iter(out.values()))


def health(fleet, minion):
    result = call(fleet, minion, "conntrack.sync_health", timeout=120)
    assert isinstance(result, dict), result
    return result


def test_role_and_sync_health_of_a_settled_pair(fleet, tmp_path):
    primary, backup = preferred_primary(fleet)
    roles = {n: call(fleet, n, "conntrack.role") for n in (primary, backup)}
    assert roles[primary]["group"] == "MASTER" and roles[primary]["consistent"], roles[primary]
    assert roles[backup]["group"] == "BACKUP" and roles[backup]["consistent"], roles[backup]
    assert roles[primary]["gate"] == "open" and roles[backup]["gate"] == "closed"
    scenario = Scenario(fleet, tmp_path, "operating-health").start(duration=20, inbound=60, outbound=20, udp=20)
    for node in (primary, backup):  # asked on either node, the comparison is the same
        h = health(fleet, node)
        assert h["healthy"] and h["would_lose"] == 0, h
        assert (h["master"], h["backup"]) == (primary, backup)
        assert h["table"] >= 100, h  # the flows' entries, replicated
    assert_nothing_lost(*scenario.collect())


def test_sync_health_counts_what_the_backup_missed(fleet, tmp_path):
    primary, backup = preferred_primary(fleet)
    scenario = Scenario(fleet, tmp_path, "operating-shortfall")
    fleet[primary].cable_out("enp0s9")
    try:
        # 40 new flows the backup hears nothing of (each is one entry on the primary)
        scenario.start(duration=40, inbound=20, outbound=10, udp=10)
        h = health(fleet, primary)
        assert not h["healthy"] and h["exact"], h
        assert 40 <= h["would_lose"] <= 45, h  # the flows' entries (and no more than a few others)
        assert h["sample"] and "would lose" in h["verdict"]
    finally:
        fleet[primary].cable_in("enp0s9")
    call(fleet, backup, "conntrack.request_resync")

    def healed():
        return health(fleet, primary)["would_lose"] == 0
    wait_for(healed, 60, "the backup's replica to hold the primary's connections again", 2)
    scenario.collect()


def test_consistency_state_reruns_a_missed_primary_transition(fleet):
    primary, backup = preferred_primary(fleet)
    # the gate closed behind the hook's back, as after a lost notify (the role file says backup)
    fleet[primary].exec(["sh", "-c", f"echo 'backup 0' >/run/conntrackd/hafw-role && {HOOK} gate-sync"])
    assert call(fleet, primary, "conntrack.role")["consistent"] is False
    dry = state(fleet, primary, "vrrp_sync.consistent", "test=True", "settle=0")
    assert dry["result"] is None and dry["comment"].startswith("would primary"), dry
    assert role(fleet, primary) == "backup"  # test=True changed nothing
    fixed = state(fleet, primary, "vrrp_sync.consistent", "settle=0")
    assert fixed["result"] is True and fixed["changes"]["actions"] == ["primary"], fixed
    assert role(fleet, primary) == "primary"
    again = state(fleet, primary, "vrrp_sync.consistent")
    assert again["result"] is True and again["changes"] == {}, again
    assert state(fleet, backup, "vrrp_sync.consistent")["changes"] == {}


def test_planned_switchover_both_ways_loses_nothing(fleet, tmp_path):
    primary, backup = preferred_primary(fleet)
    scenario = Scenario(fleet, tmp_path, "operating-switchover").start(duration=45)
    time.sleep(3)
    dry = state(fleet, primary, "vrrp_sync.backup", "test=True")
    assert dry["result"] is None and dry["comment"].startswith(f"would hand the master role from {primary}")
    assert len(fleet.vips(primary)) == PAIR_VIPS  # nothing moved

    scenario.mark(f"vrrp_sync.backup on {primary}")
    moved = state(fleet, primary, "vrrp_sync.backup")
    assert moved["result"] is True, moved
    assert moved["changes"]["master"] == {"old": primary, "new": backup}
    scenario.mark(f"{backup} is master")
    assert len(fleet.vips(backup)) == PAIR_VIPS and not fleet.vips(primary)
    assert call(fleet, primary, "vrrp_sync.maintenance")["demoted"] is True
    # the demoted node stays backup although its priority (80) is higher and it preempts
    time.sleep(8)
    assert len(fleet.vips(backup)) == PAIR_VIPS
    assert state(fleet, primary, "vrrp_sync.backup")["changes"] == {}

    scenario.mark(f"vrrp_sync.master on {primary}")
    back = state(fleet, primary, "vrrp_sync.master")
    assert back["result"] is True, back
    assert back["changes"]["master"] == {"old": backup, "new": primary}
    scenario.mark(f"{primary} is master again")
    assert len(fleet.vips(primary)) == PAIR_VIPS
    assert call(fleet, backup, "vrrp_sync.maintenance")["demoted"] is True  # the peer stepped down
    assert state(fleet, primary, "vrrp_sync.master")["changes"] == {}
    assert_nothing_lost(*scenario.collect())
    # the pair as pillar.example wants it: nobody demoted
    call(fleet, backup, "vrrp_sync.undemote")


def test_persistent_maintenance_survives_a_reboot(fleet):
    primary, backup = preferred_primary(fleet)
    moved = state(fleet, primary, "vrrp_sync.backup", "persistent=True")
    assert moved["result"] is True and moved["changes"]["maintenance"]["persistent"] is True, moved
    result = fleet.reboot(primary)
    assert result and result["ok"], result  # the startup highstate
    # back with the resync hold passed and priority 80 > 70, preempting: still backup
    wait_for(lambda: role(fleet, primary) == "backup", 60, f"{primary} to run its backup transition", 1)
    time.sleep(5)
    assert not fleet.vips(primary) and len(fleet.vips(backup)) == PAIR_VIPS
    assert call(fleet, primary, "vrrp_sync.maintenance")["persistent"] is True
    back = state(fleet, primary, "vrrp_sync.master")
    assert back["result"] is True and len(fleet.vips(primary)) == PAIR_VIPS, back
    call(fleet, backup, "vrrp_sync.undemote")


def test_switchover_under_nopreempt_loses_nothing(fleet, tmp_path):
    fleet.set_pillar(default_timing(preempt=False))
    result = fleet.converge()
    assert all(r["ok"] for r in result.values()), result
    master_node, backup_node = settle(fleet)
    scenario = Scenario(fleet, tmp_path, "operating-switchover-nopreempt").start(
        duration=25, inbound=60, outbound=20, udp=20)
    time.sleep(2)
    scenario.mark(f"vrrp_sync.master on {backup_node}")
    moved = state(fleet, backup_node, "vrrp_sync.master")
    assert moved["result"] is True, moved
    scenario.mark(f"{backup_node} is master")
    assert len(fleet.vips(backup_node)) == PAIR_VIPS and not fleet.vips(master_node)
    assert_nothing_lost(*scenario.collect())
    call(fleet, master_node, "vrrp_sync.undemote")
