"""
Failover scenarios on the live fleet (lab/fleet.py), shared by the
integration tests: bring the firewall pair to a settled state, run the
scenario's flows (lab/flows.py), do something to the pair while they run,
and return the merged per-flow result (also saved in lab-report/failover/).
"""

import copy
import json
import pathlib

from lab.diagnose import HOOK_LOG, gate_closed
from lab.fleet import Fleet
from lab.flows import Flows
from lab.lab import Lab
from lab.salt import example_pillar
from lab.wait import wait_for

REPO = pathlib.Path(__file__).resolve().parents[2]
REPORT = REPO / "lab-report" / "failover"
PAIR = ("fw-cent7i", "fw-cent7j")
PAIR_VIPS = 4
DAEMONS = ("keepalived", "conntrackd")


def running(fleet, name, daemon):
    return fleet[name].running and fleet[name].exec(["pgrep", "-x", daemon], check=False).returncode == 0


def role(fleet, name):
    """What the transition hook last recorded on the node: primary, backup, fault, stop or ''."""
    return fleet.hook_role(name)


def holder(fleet):
    """The node holding every pair VIP, or None."""
    for name in PAIR:
        if len(fleet.vips(name)) == PAIR_VIPS:
            return name
    return None


def revive(fleet):
    """Reboot the pair's crashed nodes (a converge would wait for them in vain)."""
    for name in PAIR:
        if not fleet[name].running:
            fleet.reboot(name)


def settle(fleet, primary=None, timeout=120):
    """The steady pair: both nodes up with both daemons, one VRRP master (the
    node `primary` if given: it takes the VIPs back by preempt), the hooks
    done (role recorded, gate open on the primary only). Crashed nodes are
    rebooted, stopped daemons started by a converge. Returns (primary, backup)."""
    revive(fleet)
    if not all(running(fleet, n, d) for n in PAIR for d in DAEMONS):
        result = fleet.converge()
        assert all(r["ok"] for r in result.values()), result
    fleet.wait_vrrp(timeout=timeout)
    pair = {}

    def settled():
        # the holder is read again each time: at start-up the VIPs may still move (preempt)
        holding = holder(fleet)
        if holding is None or primary not in (None, holding):
            return False
        backup = next(n for n in PAIR if n != holding)
        pair.update(primary=holding, backup=backup)
        return (role(fleet, holding) == "primary" and role(fleet, backup) == "backup"
                and gate_closed(fleet[backup]) and not gate_closed(fleet[holding]))
    wait_for(settled, timeout, "a settled pair" + (f" with {primary} primary" if primary else ""), 0.5,
             lambda: ", ".join("%s: %s, %d VIPs" % (n, role(fleet, n), len(fleet.vips(n))) for n in PAIR))
    return pair["primary"], pair["backup"]


def preferred_primary(fleet, name="fw-cent7i"):
    """settle() with the higher-priority node as primary (pillar.example preempts)."""
    return settle(fleet, primary=name)


class Scenario:
    """Flows through the pair while a scenario's actions run; `work` is a scratch dir."""

    def __init__(self, fleet, work, name):
        self.fleet, self.name = fleet, name
        self.flows = Flows(fleet, pathlib.Path(work) / "flows")
        self.extra = []  # more Flows started during the scenario

    def start(self, duration, **counts):
        self.flows.start(duration=duration, **counts)
        self.mark("flows running")
        return self

    def more_flows(self, work, duration, **counts):
        """A second set of flows, started now (servers already run)."""
        flows = Flows(self.fleet, pathlib.Path(work) / f"flows-{len(self.extra) + 1}")
        flows.start(duration=duration, serve=False, **counts)
        self.extra.append(flows)
        return flows

    def mark(self, label):
        for flows in (self.flows, *self.extra):
            flows.mark(label)

    def takeover(self, node, timeout):
        """Wait until `node` holds every VIP; mark it; the seconds it took."""
        seconds = self.fleet.wait_vips(node, PAIR_VIPS, timeout=timeout)
        self.mark(f"{node} holds the VIPs")
        return seconds

    def collect(self, timeout=120):
        """Every set's result; the first set's summary is saved as lab-report/failover/NAME.json."""
        results = [self.flows.collect(timeout)] + [f.collect(timeout) for f in self.extra]
        REPORT.mkdir(parents=True, exist_ok=True)
        summaries = []
        for result in results:
            # UDP shows the outage itself; TCP adds its retransmission backoff
            by_proto = {p: max((f["max_gap_ms"] for f in result["flows"] if f["proto"] == p), default=None)
                        for p in ("tcp", "udp")}
            summaries.append({**result["summary"], **{f"max_gap_ms_{p}": gap for p, gap in by_proto.items()}})
        (REPORT / f"{self.name}.json").write_text(json.dumps(summaries, indent=1))
        # the scenario's events and both hooks' logs, to read a gap against
        logs = ["".join(f"{e['t_rel']:8.3f} s  {e['label']}\n" for e in results[0]["events"])]
        for name in PAIR:
            if self.fleet[name].running:
                logs.append(f"--- {name}: {HOOK_LOG}\n" + self.fleet[name].exec(["tail", "-n", "200", HOOK_LOG],
                                                                                 check=False).stdout)
        (REPORT / f"{self.name}.log").write_text("".join(logs))
        for result in results:
            result["timeline"] = "".join(logs)  # for a failed assertion: CI keeps no lab-report
        return results


def assert_nothing_lost(*results):
    """0 flows lost and 0 resets in every result."""
    for result in results:
        summary = result["summary"]
        lost = [f for f in result["flows"] if f["lost_flow"] or f["reset"]]
        if summary["lost_flows"] or summary["resets"]:
            timeline = result.get("timeline", "")
            if len(timeline) > 12000:  # the scenario's marks come first; keep the hooks' latest lines
                timeline = timeline[:3000] + "\n[...]\n" + timeline[-9000:]
            first = json.dumps([{k: v for k, v in f.items() if k != "timeline"} for f in lost[:3]])
            raise AssertionError(f"{summary}\nfirst lost flows: {first}\n{timeline}")


def r1_crash(fleet, work, name, takeover_s):
    """R1: 250 flows through the settled pair, the primary crashes, the backup takes over;
    asserts none was lost; the result."""
    primary, backup = preferred_primary(fleet)
    scenario = Scenario(fleet, work, name).start(duration=30)
    crash_and_take_over(fleet, scenario, primary, backup, takeover_s)
    (result,) = scenario.collect()
    assert result["summary"]["flows"] == 250
    assert_nothing_lost(result)
    return result


def crash_and_take_over(fleet, scenario, primary, backup, timeout):
    scenario.mark(f"crash {primary}")
    fleet.crash(primary)
    return scenario.takeover(backup, timeout)


def default_timing(**vrrp):
    """pillar.example with the formula's default VRRP timing for the pair (quick takeovers), and vrrp changes."""
    pillar = copy.deepcopy(example_pillar())
    pair = pillar["hafw"]["clusters"]["fw-pair"]["vrrp"]
    for key in ("advert_int", "version"):
        pair.pop(key, None)
    pair.update(vrrp)
    return pillar


def live_fleet(pillar):
    """A fleet up with pillar, for a module-scoped fixture: `yield from live_fleet(...)`."""
    with Lab() as lab:
        fleet = Fleet(lab, pillar=pillar)
        fleet.up()
        yield fleet
