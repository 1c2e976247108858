"""
make demo-lb: the whole reference path with the live load-balancer pair,
a load-balancer failover and a load-balancer restart under mail sessions.

1. Builds the lab with lb-cent7g/lb-cent7h in the IPVS qemu guest
   (lab/guest/), converges every host through the salt-master from
   pillar.example, starts postfix on both real servers and waits for
   SMTP_CHECK to put them in service.
2. Opens 60 SMTP sessions from client1 through fw-cent7m, the firewall
   pair's DNAT and the LB VIP to postfix (one NOOP every 4 s each).
3. Failover: crashes the LB master; the backup takes the VIPs with the
   sessions it got from IPVS sync. The crashed node boots again (BACKUP:
   nopreempt).
4. Restart (seed *1): the new master's peer reboots (an empty IPVS table)
   and must take over 20 s later: the master crashes. The kernel's default
   sync would have sent it a session again only every 50 packets (the
   seed's finding: it comes back without them); the formula's time-based
   sync (every active connection every 10 s) has sent it every session.
5. Writes lab-report/lb-report.json (sessions, lost_failover, lost_restart,
   max_gap_ms, ...) and lab-report/lb-timeline.png; tears down.
"""

import json
import pathlib
import sys
import tempfile
import time

from lab import Lab
from lab.fleet import Fleet
from lab.flows import Flows
from lab.lb import LB, LB_VIPS, established, weights
from lab.lb import master as lb_master
from lab.report import write_report
from lab.wait import wait_for

REPO = pathlib.Path(__file__).resolve().parents[1]
REPORT = REPO / "lab-report"
SESSIONS = 60


def say(msg):
    print(f"demo-lb: {msg}", flush=True)


def lost_between(result, start_rel, end_rel):
    """Lost sessions whose last reply came in [start_rel, end_rel) (s since t0)."""
    return sum(1 for f in result["flows"] if f["lost_flow"]
               and start_rel <= (f.get("last_reply_ms") or 0) / 1000 < end_rel)


def crash_and_wait(fleet, flows, master, backup, label):
    flows.mark(f"{label}: crash {master}")
    t0 = time.monotonic()
    fleet.crash(master)
    fleet.wait_vips(backup, LB_VIPS, timeout=60)
    flows.mark(f"{backup} holds the VIPs")
    say(f"  {backup} holds the VIPs {time.monotonic() - t0:.1f} s after the crash")


def main():
    started = time.monotonic()
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="hafw-demo-lb-") as work:
        fleet = Fleet(lab, ipvs_guest=True, say=lambda m: say("  " + m))
        say("1/5 building the lab (load balancers in the IPVS guest), converging every host")
        fleet.up()
        flows = Flows(fleet, pathlib.Path(work) / "flows", mail_server="postfix")
        flows.serve()
        master = lb_master(fleet)
        wait_for(lambda: sorted(weights(fleet, master).values()) == [1, 1], 60, "SMTP_CHECK on both real servers", 1)
        backup = next(n for n in LB if n != master)
        setup_s = time.monotonic() - started
        say(f"  ready in {setup_s:.0f} s: {master} is the LB master, both postfix servers in service")

        say(f"2/5 opening {SESSIONS} SMTP sessions through both pairs")
        flows.start(duration=62, inbound=SESSIONS, outbound=10, udp=0, rate=0.25)
        wait_for(lambda: len(established(fleet, backup)) >= SESSIONS, 30, "the sessions on the backup (IPVS sync)", 1)

        say(f"3/5 load-balancer failover: crashing {master}")
        t_failover = time.time()
        crash_and_wait(fleet, flows, master, backup, "failover")
        fleet.reboot(master)
        fleet.wait_vrrp(timeout=60)
        master, backup = backup, master
        time.sleep(2)

        say(f"4/5 load-balancer restart: {backup} reboots (empty IPVS table), {master} crashes 20 s later")
        flows.mark(f"restart {backup}")
        t_restart = time.time()
        fleet.reboot(backup)
        time.sleep(20)
        say(f"  {backup} holds {len(established(fleet, backup))} of {SESSIONS} sessions when {master} crashes")
        crash_and_wait(fleet, flows, master, backup, "restart")
        fleet.reboot(master)

        say("5/5 waiting for the sessions to end (each sends a mail), writing the report")
        result = flows.collect(timeout=150)
    t0 = result["summary"]["t0"]
    summary = result["summary"]
    extra = {"sessions": summary["flows"], "smtp_sessions": SESSIONS,
             "lost_failover": lost_between(result, 0, t_restart - t0),
             "lost_restart": lost_between(result, t_restart - t0, 1e9), "max_gap_ms": summary["max_gap_ms"],
             "resets": summary["resets"], "mails_accepted": summary.get("mails_accepted"),
             "failover_at_s": round(t_failover - t0, 1), "restart_at_s": round(t_restart - t0, 1),
             "setup_s": round(setup_s, 1), "demo_s": round(time.monotonic() - started, 1),
             "title": "60 SMTP sessions: LB failover, then LB restart + failover"}
    write_report(result, REPORT, extra, name="lb-")
    say(f"report: {json.dumps({k: v for k, v in extra.items() if k != 'title'})}")
    say(f"written: {REPORT / 'lb-report.json'}, {REPORT / 'lb-timeline.png'}")
    return 0 if extra["lost_failover"] == extra["lost_restart"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
