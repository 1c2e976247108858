"""
make demo: the reference deployment as a live Salt fleet, and a failover
under load that loses nothing.

1. Builds the lab (lab/topology.yaml): the firewall pair, the standalone NAT
   firewall, clients, mail servers, a salt-master; converges the three
   firewalls through the master (`salt '*fw*' state.apply`).
2. Starts 250 flows (lab/flows.py): 150 inbound SMTP sessions through two
   NATs, 50 TCP and 50 UDP outbound flows SNATed by the pair.
3. Crashes the primary (links cut, every process killed), waits for the
   backup to hold every VIP, for the keepalived beacon's event of its sync
   group becoming MASTER on the master's bus, and for the reactor's job
   (vrrp_sync.consistent on the new master); reboots the crashed node, whose
   minion converges it at start, and waits for it to take the VIPs back
   (preempt).
4. Writes lab-report/report.json (with beacon_event_latency_s: crash to
   event, and reactor_job_ok) and lab-report/timeline.png, tears down.
"""

import datetime
import json
import pathlib
import sys
import tempfile
import time

import yaml

from lab import Lab
from lab.diagnose import HOOK_LOG
from lab.fleet import Fleet
from lab.flows import Flows
from lab.report import write_report
from lab.wait import wait_for

REPO = pathlib.Path(__file__).resolve().parents[1]
REPORT = REPO / "lab-report"
PAIR_VIPS = 4


def say(msg):
    print(f"demo: {msg}", flush=True)


def lost_by_phase(result, failback_t_rel):
    """Lost flows split by when their last reply came: before or after the failback."""
    before = after = 0
    for flow in result["flows"]:
        if flow["lost_flow"]:
            last = (flow.get("last_reply_ms") or 0) / 1000
            before, after = (before + 1, after) if last < failback_t_rel else (before, after + 1)
    return before, after


def became_master_at(fleet, node, since):
    """When keepalived made node MASTER (its notify runs the hook: the hook log's first
    "primary: begin" after since, epoch s), or None."""
    out = fleet[node].exec(["grep", " primary: begin", HOOK_LOG], check=False).stdout
    for line in out.splitlines():
        stamp = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
        if stamp >= since:
            return stamp
    return None


def beacon_and_reactor(fleet, node, crashed_at):
    """Wait for the beacon's event of node's sync group becoming MASTER and the reactor's job
    on node; say what came; the report's figures: beacon_event_latency_s is from keepalived's
    transition (the notify) to the event on the master's bus (None if it never came)."""
    try:
        event = wait_for(lambda: fleet.beacon_event(node, "MASTER", crashed_at), 15, "the beacon event", 0.2)
    except TimeoutError:
        say(f"  no beacon event from {node} within 15 s")
        return {"beacon_event_latency_s": None, "reactor_job_ok": False}
    data = event["data"]
    transition = became_master_at(fleet, node, crashed_at) or data["at"]
    latency = round(event["t"] - transition, 3)
    say(f"  event {event['tag']} on the master {latency:.2f} s after the transition "
        f"(previous {data['previous']}, {len(data['vips'])} VIPs, from the {data['source']})")
    try:
        ret = wait_for(lambda: fleet.reactor_return(node, event["t"]), 20, "the reactor's job", 0.2)
    except TimeoutError:
        say(f"  no return of the reactor's job on {node} within 20 s")
        return {"beacon_event_latency_s": latency, "reactor_job_ok": False}
    ok = bool(ret["data"].get("success")) and ret["data"].get("retcode") == 0
    states = ret["data"].get("return") or {}
    comment = next(iter(states.values()), {}).get("comment", "") if isinstance(states, dict) else states
    say(f"  reactor: vrrp_sync.consistent on {node} returned {'ok' if ok else 'FAILED'} "
        f"{ret['t'] - event['t']:.2f} s after the event: {comment}")
    return {"beacon_event_latency_s": latency, "reactor_job_ok": ok,
            "beacon_event_after_crash_s": round(event["t"] - crashed_at, 3),
            "reactor_return_after_event_s": round(ret["t"] - event["t"], 3),
            "events": [{"t": event["t"], "label": "beacon event on the master"},
                       {"t": ret["t"], "label": "reactor job returned"}]}


def main():
    started = time.monotonic()
    advert = yaml.safe_load((REPO / "pillar.example").read_text())[
        "hafw"]["clusters"]["fw-pair"]["vrrp"]["advert_int"]
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="hafw-demo-") as work:
        fleet = Fleet(lab, say=lambda m: say("  " + m))
        say("1/4 building the lab and converging the firewalls through the salt-master")
        fleet.up()
        # the seed's MASTER (priority 80 against 70, preempt): the first node to win VRRP may be
        # the other one, for the few seconds before fw-cent7i's adverts make it take over
        primary, backup = "fw-cent7i", "fw-cent7j"
        fleet.wait_vips(primary, PAIR_VIPS, timeout=60)
        wait_for(lambda: fleet.hook_role(primary) == "primary" and fleet.hook_role(backup) == "backup", 30,
                 "the transition hooks to settle", 0.5)
        setup_s = time.monotonic() - started
        say(f"  ready in {setup_s:.0f} s: {primary} is primary, {backup} backup")

        say("2/4 starting 250 flows (150 inbound SMTP, 50 TCP + 50 UDP outbound)")
        flows = Flows(fleet, pathlib.Path(work) / "flows")
        flows.start(duration=75)
        time.sleep(5)

        say(f"3/4 crashing {primary}")
        flows.mark(f"crash {primary}")
        t_crash, crashed_at = time.monotonic(), time.time()
        fleet.crash(primary)
        fleet.wait_vips(backup, PAIR_VIPS, timeout=20)
        flows.mark(f"{backup} took over")
        say(f"  {backup} holds the VIPs {time.monotonic() - t_crash:.1f} s after the crash")
        events = beacon_and_reactor(fleet, backup, crashed_at)
        time.sleep(max(0.0, 8 - (time.monotonic() - t_crash)))
        say(f"  rebooting {primary} (its minion runs a highstate at start)")
        flows.mark(f"reboot {primary}")
        fleet.reboot(primary)
        fleet.wait_vips(primary, PAIR_VIPS, timeout=60)
        flows.mark(f"{primary} took the VIPs back")
        t_failback = time.time()
        say(f"  {primary} is primary again")

        say("4/4 waiting for the flows to finish, writing the report")
        result = flows.collect(timeout=120)
    t_failback_rel = t_failback - result["summary"]["t0"]
    lost_failover, lost_failback = lost_by_phase(result, t_failback_rel)
    extra = {"flows": result["summary"]["flows"], "lost_failover": lost_failover,
             "lost_failback": lost_failback, "max_gap_ms": result["summary"]["max_gap_ms"],
             "vrrp_advert_int": advert, "setup_s": round(setup_s, 1),
             "demo_s_after_setup": round(time.monotonic() - started - setup_s, 1), **events}
    write_report(result, REPORT, extra)
    say(f"report: {json.dumps(extra)}")
    say(f"written: {REPORT / 'report.json'}, {REPORT / 'timeline.png'}")
    return 0 if lost_failover == lost_failback == 0 and events["reactor_job_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
