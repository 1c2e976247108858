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


# hosts that reach the pair through its VIPs, and the VIP each uses
NEIGHBOURS = {"internet": "192.168.0.40", "fw-cent7m": "192.168.0.60", "lb-standin": "192.168.1.40"}
NEIGHBOURS_SETTLE_S = 15  # the default garp_master_refresh (10 s) and room for a busy machine


def neighbour_entries(fleet, neighbours=NEIGHBOURS):
    """[(neighbour, vip, owner, state)]: whose MAC each neighbour of the pair has for the
    VIPs (owner: the pair node with that MAC, else the MAC itself)."""
    owners = {}
    for name in PAIR:
        for link in fleet[name].links:
            if link.get("mac"):
                owners[link["mac"].lower()] = name
    vips = set(fleet.topology["pair_vips"][PAIR[0]])
    entries = []
    for neighbour in neighbours:
        if neighbour not in fleet.topology["hosts"] or not fleet[neighbour].running:
            continue
        for entry in json.loads(fleet[neighbour].exec(["ip", "-j", "-4", "neigh", "show"], check=False).stdout or "[]"):
            if entry.get("dst") in vips:
                mac = entry.get("lladdr", "").lower()
                entries.append((neighbour, entry["dst"], owners.get(mac, mac or "?"), "/".join(entry.get("state", []))))
    return entries


def vip_neighbours(fleet):
    """"internet: 192.168.0.40 -> fw-cent7i REACHABLE, ...": a stale entry sends the
    traffic to the backup, whose gate drops new connections: a failure's message must show it."""
    return ", ".join(f"{n}: {vip} -> {owner} {state}" for n, vip, owner, state in neighbour_entries(fleet)) \
        or "no neighbour entry for the VIPs"


def hook_log_tail(host, lines=200):
    """The last lines of the transition hook's log; from a crashed host's disk (the
    overlay's upper dir: its /var survives the power cut) when it is down."""
    if host.running:
        return host.exec(["tail", "-n", str(lines), HOOK_LOG], check=False).stdout
    on_disk = getattr(host, "dir", None)
    path = on_disk / "var.upper" / HOOK_LOG.removeprefix("/var/") if on_disk else None
    if path is None or not path.exists():
        return "(down, log not readable)\n"
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])


def revive(fleet):
    """Reboot the pair's crashed nodes (a converge would wait for them in vain)."""
    for name in PAIR:
        if not fleet[name].running:
            fleet.reboot(name)


def settle(fleet, primary=None, timeout=120, neighbours=True):
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
    # and (neighbours=True) the network knows it: every neighbour entry for the VIPs has the
    # primary's MAC. A backup that took over for a moment may have moved them; the master's
    # periodic gratuitous ARP (vrrp:garp_master_refresh, 10 s by default) takes them back. An
    # entry without an address ("?") resolves by broadcast at its next use: the holder answers.
    def neighbours_follow():
        return not neighbours or all(owner in (pair["primary"], "?") for _, _, owner, _ in neighbour_entries(fleet))
    wait_for(neighbours_follow, NEIGHBOURS_SETTLE_S, f"the neighbours' ARP entries to point at {pair['primary']}",
             0.5, lambda: vip_neighbours(fleet))
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
        self.mark("flows running; " + vip_neighbours(self.fleet))
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
        logs.append(f"at the end: {vip_neighbours(self.fleet)}\n")
        tails = {name: hook_log_tail(self.fleet[name]) for name in PAIR}
        full = logs + [f"--- {name}: {HOOK_LOG}\n{tail}" for name, tail in tails.items()]
        (REPORT / f"{self.name}.log").write_text("".join(full))
        # for a failed assertion (CI keeps no lab-report): each node's latest lines
        short = logs + [f"--- {name}: {HOOK_LOG}\n" + "".join(tail.splitlines(keepends=True)[-45:])
                        for name, tail in tails.items()]
        for result in results:
            result["timeline"] = "".join(short)
        return results


def assert_nothing_lost(*results):
    """0 flows lost and 0 resets in every result."""
    for result in results:
        summary = result["summary"]
        lost = [f for f in result["flows"] if f["lost_flow"] or f["reset"]]
        if summary["lost_flows"] or summary["resets"]:
            timeline = result.get("timeline", "")
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
