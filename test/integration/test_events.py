"""
Event-driven failover handling on a live fleet (issue 5): the keepalived
beacon on every pair node (from pillar), the salt-master's reactor
(reactor/master.d/hafw-reactor.conf), and lab/eventlog.py recording what
reaches the master's bus.

- A primary crash: the new master's transition reaches the master as
  salt/beacon/<node>/keepalived/G1/MASTER with the previous state, the VIPs
  and conntrackd's sync status; the reactor's consistency state returns,
  and the transition log on the master has the line.
- The notify hook off on the backup (its notify_* lines removed, as when an
  SELinux denial stops keepalived from running it): after a crash of the
  primary the reactor alone runs the primary transition, and the flows
  survive; the longer gap is recorded in lab-report/failover/.

The latency figures over ten crashes are bench/events.py's (make bench).
"""

import json
import time

import pytest

from lab.saltmaster import VENV_BIN
from lab.wait import wait_for
from test.support.failover import (
    PAIR_VIPS,
    REPORT,
    Scenario,
    assert_nothing_lost,
    default_timing,
    live_fleet,
    preferred_primary,
    revive,
    role,
)

pytestmark = pytest.mark.skipif(not (VENV_BIN / "salt-master").exists(), reason="run make setup first")

TAKEOVER_S = 10


@pytest.fixture(scope="module")
def fleet():
    yield from live_fleet(default_timing())


def test_a_crash_reaches_the_master_and_the_reactor_answers(fleet):
    primary, backup = preferred_primary(fleet)
    time.sleep(2)  # the beacon's reader thread has read the settling transitions
    crashed_at = time.time()
    fleet.crash(primary)
    fleet.wait_vips(backup, PAIR_VIPS, timeout=TAKEOVER_S)
    event = wait_for(lambda: fleet.beacon_event(backup, "MASTER", crashed_at), 10,
                     f"the beacon event of {backup} becoming master", 0.2)
    data = event["data"]
    assert data["id"] == backup and data["kind"] == "GROUP" and data["previous"] in ("BACKUP", "FAULT")
    assert data["source"] == "fifo" and len(data["vips"]) == PAIR_VIPS
    assert data["sync_status"]["running"] is True and data["sync_status"]["mode"] == "ftfw"
    ret = wait_for(lambda: fleet.reactor_return(backup, event["t"]), 20, "the reactor's consistency state", 0.2)
    assert ret["data"]["success"] and ret["data"]["retcode"] == 0, ret["data"]
    recorded = wait_for(lambda: [t for t in fleet.salt_run("hafw.transitions", f"node={backup}")
                                 if t["state"] == "MASTER" and t["at"] == data["at"]], 10,
                        "the reactor's record of the transition", 0.5)
    assert recorded[0]["name"] == "G1" and recorded[0]["previous"] == data["previous"]
    figures = {"event_after_crash_s": round(event["t"] - crashed_at, 3),
               "reactor_return_after_event_s": round(ret["t"] - event["t"], 3)}
    REPORT.mkdir(parents=True, exist_ok=True)
    (REPORT / "events-crash.json").write_text(json.dumps(figures, indent=1))
    revive(fleet)


def test_the_reactor_alone_commits_when_the_hook_is_off(fleet, tmp_path):
    primary, backup = preferred_primary(fleet)
    # keepalived on the backup no longer runs the hook (a reload, as after a denial or a bad edit)
    fleet[backup].exec(["sh", "-c", "sed -i '/notify_/d' /etc/keepalived/keepalived.conf && "
                        "/etc/init.d/keepalived reload >/dev/null"])
    time.sleep(2)
    try:
        scenario = Scenario(fleet, tmp_path, "events-reactor-only").start(duration=30, inbound=60, outbound=20,
                                                                          udp=20)
        time.sleep(3)
        crashed_at = time.time()
        scenario.mark(f"crash {primary} (the hook is off on {backup})")
        fleet.crash(primary)
        scenario.takeover(backup, TAKEOVER_S)
        wait_for(lambda: role(fleet, backup) == "primary", 20, f"the reactor's primary transition on {backup}")
        scenario.mark(f"{backup}: primary transition done (by the reactor)")
        event = fleet.beacon_event(backup, "MASTER", crashed_at)
        assert event, f"no beacon event of {backup} becoming master"
        # the hook wrote its role file; the state still checks the role again before it returns
        ret = wait_for(lambda: fleet.reactor_return(backup, crashed_at), 20, "the reactor's return", 0.2)
        (result,) = scenario.collect()
        assert_nothing_lost(result)
        changes = json.dumps(ret["data"]["return"])
        assert '"primary"' in changes  # the state ran the primary transition itself
    finally:
        revive(fleet)
        converged = fleet.converge()  # the formula's keepalived.conf back on the backup
        assert all(r["ok"] for r in converged.values()), converged
