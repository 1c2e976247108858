"""
Failover of the firewall pair under load, on the live fleet with
pillar.example unchanged (VRRP v2, advert_int 3, preempt: fw-cent7i has the
higher priority).

Flows (lab/flows.py): 150 inbound SMTP sessions through fw-cent7m's SNAT and
the pair's DNAT, 50 outbound TCP and 50 outbound UDP flows SNATed by the
pair; 250 in all, each sending at 5 Hz. Every scenario asserts that no flow
was lost and no connection reset, and saves its summary (longest gap...) in
lab-report/failover/.

- R1: the primary crashes (links cut, every process killed): the backup
  takes both VIPs of the sync group, commits the replicated state.
- R6 (preempt): the crashed primary reboots (empty table, startup
  highstate) and takes the VIPs back by priority: the forced failback.
- R2: only the primary's keepalived is SIGKILLed: its VIPs stay configured
  on it while the backup takes them over.
- R3: the primary's inside link goes down (VI_2 faults, the sync group
  moves VI_1 too), and comes back (failback).
- Negative control: R1 with conntrackd stopped on the backup must lose
  flows, so the suite proves it measures what it claims.
"""

import pytest

from lab import Lab
from lab.diagnose import gate_closed
from lab.fleet import Fleet
from lab.saltmaster import VENV_BIN
from test.support.failover import (
    PAIR_VIPS,
    Scenario,
    assert_nothing_lost,
    crash_and_take_over,
    preferred_primary,
    r1_crash,
    settle,
)

# advert_int 3: 3 missed adverts + skew (~11 s), plus room for a busy machine
TAKEOVER_S = 20

pytestmark = pytest.mark.skipif(not (VENV_BIN / "salt-master").exists(), reason="run make setup first")


@pytest.fixture(scope="module")
def fleet():
    with Lab() as lab:
        fleet = Fleet(lab)
        fleet.up()
        yield fleet


def test_takeover_gate_is_closed_on_the_backup_only(fleet):
    """The hook owns the gate's jump: closed on the backup, open on the primary,
    and a converge (which restores the ruleset) leaves it so (gate-sync)."""
    primary, backup = preferred_primary(fleet)
    fleet[backup].exec(["iptables", "-t", "mangle", "-A", "FORWARD", "-j", "ACCEPT"])  # drift
    result = fleet.converge()
    assert all(r["ok"] for r in result.values()), result
    assert result[backup]["changed"], "the drift was not repaired"
    assert gate_closed(fleet[backup]) and not gate_closed(fleet[primary])


def test_r1_primary_crash_loses_no_flow(fleet, tmp_path):
    r1_crash(fleet, tmp_path, "r1-crash", TAKEOVER_S)


def test_r6_reboot_and_forced_failback_lose_no_flow(fleet, tmp_path):
    """The old primary (crashed in R1, or now) reboots under load: the startup
    highstate brings its daemons back, its conntrackd resyncs from the
    primary, and with preempt it takes the VIPs back."""
    if fleet["fw-cent7i"].running:  # R1 did not leave it crashed
        primary, backup = preferred_primary(fleet)
        fleet.crash(primary)
        fleet.wait_vips(backup, PAIR_VIPS, timeout=TAKEOVER_S)
    scenario = Scenario(fleet, tmp_path, "r6-failback").start(duration=75)
    scenario.mark("reboot fw-cent7i")
    highstate = fleet.reboot("fw-cent7i")
    scenario.mark("fw-cent7i: startup highstate returned")
    assert highstate["ok"], highstate
    scenario.takeover("fw-cent7i", timeout=45)
    (result,) = scenario.collect()
    assert_nothing_lost(result)
    assert fleet.vips("fw-cent7j") == []


def test_r2_keepalived_sigkill_duplicate_vips_lose_no_flow(fleet, tmp_path):
    """SIGKILL leaves the VIPs configured on the old primary: for a while both
    nodes hold them. The backup's gratuitous ARPs move the traffic; no flow
    may be lost on either side of that window."""
    primary, backup = preferred_primary(fleet)
    scenario = Scenario(fleet, tmp_path, "r2-keepalived-sigkill").start(duration=30)
    scenario.mark(f"SIGKILL keepalived on {primary}")
    fleet[primary].exec(["pkill", "-KILL", "-x", "keepalived"])
    scenario.takeover(backup, TAKEOVER_S)
    (result,) = scenario.collect()
    assert_nothing_lost(result)


def test_r3_inside_link_down_moves_both_vips_and_back(fleet, tmp_path):
    primary, backup = preferred_primary(fleet)  # settle() restarts R2's keepalived
    scenario = Scenario(fleet, tmp_path, "r3-inside-link").start(duration=50)
    scenario.mark(f"{primary}: enp0s8 cable out")
    fleet[primary].cable_out("enp0s8")
    scenario.takeover(backup, TAKEOVER_S)
    assert fleet.vips(primary) == [], "the sync group left VIPs on the faulted node"
    scenario.mark(f"{primary}: enp0s8 cable in")
    fleet[primary].cable_in("enp0s8")
    scenario.takeover(primary, TAKEOVER_S)
    (result,) = scenario.collect()
    assert_nothing_lost(result)


def test_negative_control_without_conntrackd_flows_are_lost(fleet, tmp_path):
    primary, backup = settle(fleet)
    fleet[backup].exec(["pkill", "-x", "conntrackd"])
    scenario = Scenario(fleet, tmp_path, "negative-control").start(duration=30)
    crash_and_take_over(fleet, scenario, primary, backup, TAKEOVER_S)
    (result,) = scenario.collect()
    summary = result["summary"]
    # without the replicated table the new master knows none of the NATed
    # connections: forwarded packets are dropped (FORWARD policy DROP)
    assert summary["lost_flows"] > 0.5 * summary["flows"], summary
