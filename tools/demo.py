"""
make demo: the reference deployment as a live Salt fleet, and a failover
under load that loses nothing.

1. Builds the lab (lab/topology.yaml): the firewall pair, the standalone NAT
   firewall, clients, mail servers, a salt-master; converges the three
   firewalls through the master (`salt '*fw*' state.apply`).
2. Starts 250 flows (lab/flows.py): 150 inbound SMTP sessions through two
   NATs, 50 TCP and 50 UDP outbound flows SNATed by the pair.
3. Crashes the primary (links cut, every process killed), waits for the
   backup to hold every VIP; reboots the crashed node, whose minion converges
   it at start, and waits for it to take the VIPs back (preempt).
4. Writes lab-report/report.json and lab-report/timeline.png, tears down.
"""

import json
import pathlib
import sys
import tempfile
import time

import yaml

from lab import Lab
from lab.fleet import Fleet
from lab.flows import Flows
from lab.report import write_report

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


def main():
    started = time.monotonic()
    advert = yaml.safe_load((REPO / "pillar.example").read_text())[
        "hafw"]["clusters"]["fw-pair"]["vrrp"]["advert_int"]
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="hafw-demo-") as work:
        fleet = Fleet(lab, say=lambda m: say("  " + m))
        say("1/4 building the lab and converging the firewalls through the salt-master")
        fleet.up()
        setup_s = time.monotonic() - started
        primary = max(("fw-cent7i", "fw-cent7j"), key=lambda n: len(fleet.vips(n)))
        backup = "fw-cent7j" if primary == "fw-cent7i" else "fw-cent7i"
        say(f"  ready in {setup_s:.0f} s: {primary} is primary, {backup} backup")

        say("2/4 starting 250 flows (150 inbound SMTP, 50 TCP + 50 UDP outbound)")
        flows = Flows(fleet, pathlib.Path(work) / "flows")
        flows.start(duration=75)
        time.sleep(5)

        say(f"3/4 crashing {primary}")
        flows.mark(f"crash {primary}")
        t_crash = time.monotonic()
        fleet.crash(primary)
        fleet.wait_vips(backup, PAIR_VIPS, timeout=20)
        flows.mark(f"{backup} took over")
        say(f"  {backup} holds the VIPs {time.monotonic() - t_crash:.1f} s after the crash")
        time.sleep(8)
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
             "demo_s_after_setup": round(time.monotonic() - started - setup_s, 1)}
    write_report(result, REPORT, extra)
    say(f"report: {json.dumps(extra)}")
    say(f"written: {REPORT / 'report.json'}, {REPORT / 'timeline.png'}")
    return 0 if lost_failover == lost_failback == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
