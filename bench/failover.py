#!/usr/bin/env python3
"""Failover gap bench (issue 3): how long does traffic stop when the primary dies?

Runs on the live reference deployment (lab/fleet.py: salt-master, the
fw-cent7i/fw-cent7j pair converged by Salt from a variant of pillar.example,
fw-cent7m, client1, internet, mail servers, LB stand-in).  Each run starts
flows (lab/flows.py) plus a high-rate probe, crashes the primary fw-cent7i
(links cut, every process killed: no goodbye advert), lets fw-cent7j take
over, then reboots fw-cent7i, which preempts back (the failback is measured
too, with a second set of flows, unless --no-failback).

Parts (--part, default all three):

  timing  the gap against the VRRP timing: advert_int 1 s (VRRP v2), 0.1 s
          and 0.05 s (v3), no extra table entries; the gap as a ratio to the
          VRRP floor = 3 x advert + skew, skew = (256 - p) / 256 x advert,
          p = the backup's priority (70 for fw-cent7j)
  size    the gap against the table size at the candidate default timing
          (--size-timing, default v3 0.1 s): 0, 100k and 1M extra ESTABLISHED
          entries on the primary (lab.ctfill), replicated into the backup's
          conntrackd external cache before the crash, 1,000 flows; targets
          gap <= floor + 0.1 s at 100k, <= floor + 0.5 s at 1M.  Each size
          runs with both takeover designs (--takeover): commit (the external
          cache, committed by the hook: the default) and inject
          (DisableExternalCache: the entries are in the backup's kernel
          already).  In commit mode, before each run the backup must have
          purged the previous run's copy of the table (PurgeTimeout; waited
          for up to 150 s, else the run is shown as STALE) unless
          --back-to-back
  soak    --soak-minutes (default 10) at the candidate default timing with a
          busy loop pinned to each CPU and 100 light flows: every VRRP
          transition (a hook run on either node) is a spurious one

What a run measures:

  gap_ms      median, over the probe's UDP flows (--probe-rate, default
              50 Hz, so +-20 ms), of each flow's longest time without a reply:
              the outage a packet stream sees.  TCP flows see more (one
              request in flight, resumed only at the next retransmission,
              which backs off): gap_tcp_ms.
  gap_max_ms  the worst flow of the run, main flows (5 Hz: +-200 ms) or probe
  lost        flows lost (reset, error, or silent at the end), main + probe
  takeover_s  crash -> the backup's notify hook begins (keepalived forks it
              once the VIPs are up and the gratuitous ARPs are sent)
  commit_ms   the hook's `conntrackd -c`; commit_done_s, gate_open_s: crash ->
              commit returned, gate step done (a flow whose entry is committed
              already passes the gate: it drops only packets without an entry)

    .venv/bin/python bench/failover.py                    # all parts, 5 runs each (make bench)
    .venv/bin/python bench/failover.py --part timing --runs 3
    .venv/bin/python bench/failover.py --part size --sizes 100000,1000000 --runs 1
    .venv/bin/python bench/failover.py --part soak --soak-minutes 1
    .venv/bin/python bench/failover.py --part timing,size --quick   # smoke: 1 run, small sizes
    .venv/bin/python bench/failover.py --summary          # tables from the results file

Writes bench/results/failover.json (a list of runs; a new run of a scenario
replaces that scenario's earlier runs unless --append; --quick runs are kept
apart) and prints tables.  The 1M scenario raises net.netfilter.nf_conntrack_max
in the machine's root namespace (the only place it can be set) for its
duration and restores it afterwards, also on failure, Ctrl-C or SIGTERM (a
run killed with SIGKILL leaves a note in /run that the next run restores).
Every lab is torn down on exit.  Every wait and loop is bounded.  Root only.
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "_utils"))  # the formula's model, plain Python
import hafw_model  # noqa: E402
from _util import RootConntrackLimits, hook_time, pow2_at_least, restore_leftover_sysctls, say  # noqa: E402

from lab import Lab  # noqa: E402
from lab.diagnose import HOOK_LOG, conntrack_count, conntrackd_caches, gate_closed  # noqa: E402
from lab.fleet import Fleet  # noqa: E402
from lab.flows import INTERNET, OUT_TCP, OUT_UDP, PYTHON, Flows  # noqa: E402
from lab.wait import wait_for  # noqa: E402

RESULTS = HERE / "results" / "failover.json"
CLUSTER = "fw-pair"
PRIMARY, BACKUP = "fw-cent7i", "fw-cent7j"

CANDIDATE = "3:0.1"  # the candidate default VRRP timing (version:advert_int)
TIMINGS = "2:1,3:0.1,3:0.05"
SIZES = "0,100000,1000000"
TARGET_S = {100_000: 0.1, 1_000_000: 0.5}  # allowed gap above the floor
COMMIT_S_PER_100K = 1.5  # budget for the hook's commit (docs/takeover.md: ~1 s per 100k here)
MAX_FLOW_S = 60.0  # longest flows run the bench starts for a failover


# ---------------------------------------------------------------------------
# pillar and VRRP arithmetic
# ---------------------------------------------------------------------------

def parse_timing(text):
    """'3:0.1' -> (3, 0.1); whole seconds stay int (keepalived v2 wants '1', not '1.0')."""
    version, _, advert = text.partition(":")
    value = float(advert)
    return int(version), int(value) if value == int(value) else value


def timing_label(version, advert):
    return "v%d %gs" % (version, advert)


def table_sizing(entries):
    """nf_conntrack_max, conntrackd hash_limit and hash_size that hold `entries` plus the flows."""
    ct_max = max(65536, -(-int(entries * 1.25) // 65536) * 65536)
    return {"nf_conntrack_max": ct_max, "hash_limit": 2 * ct_max,
            "hash_size": max(32768, pow2_at_least(ct_max // 4))}


def make_pillar(version, advert, entries=0, takeover="commit", refresh_s=None):
    """pillar.example with the pair's VRRP timing set, its tables sized for `entries`,
    and conntrackd's takeover mode (commit: external cache; inject: DisableExternalCache)."""
    pillar = yaml.safe_load((REPO / "pillar.example").read_text())
    pair = pillar["hafw"]["clusters"][CLUSTER]
    pair["vrrp"]["version"] = version
    pair["vrrp"]["advert_int"] = advert
    sizing = table_sizing(entries)
    pair.setdefault("kernel", {})["nf_conntrack_max"] = sizing["nf_conntrack_max"]
    pair["conntrackd"]["hash_limit"] = sizing["hash_limit"]
    pair["conntrackd"]["hash_size"] = sizing["hash_size"]
    pair["conntrackd"]["disable_external_cache"] = takeover == "inject"
    if refresh_s:
        pair["conntrackd"]["inject_refresh_s"] = refresh_s
    return pillar


def backup_node(pillar):
    """fw-cent7j as the formula's model derives it from the pillar (priority, hook timeout...)."""
    return hafw_model.node(pillar["hafw"], BACKUP)


def floor_s(advert, priority):
    """VRRP master-down interval: 3 x advert + skew (RFC 5798; keepalived uses it for v2 too)."""
    return 3 * advert + (256 - priority) / 256 * advert




# ---------------------------------------------------------------------------
# looking into the firewalls
# ---------------------------------------------------------------------------

def sh(host, cmd, timeout=60, check=False):
    return host.exec(["sh", "-c", cmd], timeout=timeout, check=check).stdout



LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)([+-]\d{4}) hafw-conntrackd\[(\d+)\] (\w+): "
                      r"([\w-]+): (.*)$")


def hook_lines(host):
    """[(epoch, pid, level, transition, text)] of the node's hook log (/var survives reboots)."""
    if not host.running:
        return []
    out = []
    for line in sh(host, "cat %s 2>/dev/null" % HOOK_LOG, timeout=30).splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        t = hook_time(m.group(1), m.group(2))
        if t is not None:
            out.append((t, int(m.group(3)), m.group(4), m.group(5), m.group(6)))
    return out


def hook_run(host, transition, since):
    """The first `transition` hook run that began after `since` (epoch):
    {begin, steps: {name: {ms, rc, at}}, done, total_ms}, or None."""
    run, pid = None, None
    for t, p, _, trans, text in hook_lines(host):
        if run is None:
            if trans == transition and t >= since and text.startswith("begin"):
                run, pid = {"begin": t, "steps": {}, "done": None, "total_ms": None}, p
            continue
        if p != pid:
            continue
        m = re.match(r"step=(\S+) rc=(\d+) ms=(\d+)", text)
        if m:
            run["steps"][m.group(1)] = {"ms": int(m.group(3)), "rc": int(m.group(2)), "at": t}
        elif text.startswith("done"):
            run["done"] = t
            m = re.search(r"total_ms=(\d+)", text)
            run["total_ms"] = int(m.group(1)) if m else None
            break
    return run


def transitions_between(host, t0, t1):
    """Hook runs (every VRRP transition of the sync group runs one) begun in [t0, t1]."""
    return [(round(t, 3), trans) for t, _, _, trans, text in hook_lines(host)
            if t0 <= t <= t1 and text.startswith("begin") and trans in ("primary", "backup", "fault", "stop")]


def hooks_idle(host, since):
    """True when every hook run begun after `since` (the host's last boot: a crash
    kills a running hook, which then never logs its end) has logged its end."""
    open_pids = set()
    for t, pid, _, _, text in hook_lines(host):
        if t < since:
            continue
        if text.startswith("begin"):
            open_pids.add(pid)
        elif text.startswith("done"):
            open_pids.discard(pid)
    return not open_pids


def extra_count(host, timeout=120):
    """lab.ctfill's entries (-> 172.31.0.1:443) in the host's kernel table."""
    out = sh(host, "conntrack -L -p tcp -d 172.31.0.1 --dport 443 2>/dev/null | wc -l", timeout=timeout).strip()
    return int(out) if out.isdigit() else -1


def labs_alive():
    """Lab runs alive on the machine, this bench's included (their switch namespaces): a noise indicator."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return 0
    return sum(n.endswith("-switch") for n in names)


def git_commit():
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------
# traffic: lab.flows.Flows (the scenario's flows) and a high-rate probe
# ---------------------------------------------------------------------------

class Probe:
    """UDP and TCP flows at a high rate (lab.traffic, in mail-cent7b, to the
    internet host: SNATed by the pair) next to a Flows run: the gap at
    1/rate resolution, which the Flows' own 5 Hz cannot give."""

    def __init__(self, fleet, work, udp, tcp, rate):
        self.host = fleet["mail-cent7b"]
        self.work, self.udp, self.tcp, self.rate = Path(work), udp, tcp, rate
        self.events = self.work / "events.jsonl"
        self.n = 0
        self.out = None

    def start(self, duration):
        self.n += 1
        self.out = self.work / ("probe-%d.json" % self.n)
        log = self.work / ("probe-%d.log" % self.n)
        args = "--rate %g --duration %.2f --out %s --events %s" % (self.rate, duration, self.out, self.events)
        if self.tcp:
            args += " --flows %d --target %s:%d" % (self.tcp, INTERNET, OUT_TCP)
        if self.udp:
            args += " --udp-flows %d --udp-target %s:%d" % (self.udp, INTERNET, OUT_UDP)
        cmd = "cd %s && exec %s -m lab.traffic run %s </dev/null >>%s 2>&1" % (REPO, PYTHON, args, log)
        self.host.exec(["sh", "-c", cmd + " &"])
        wait_for(lambda: log.exists() and "connected" in log.read_text(), 30, "probe connected")

    def collect(self, timeout):
        wait_for(self.out.exists, timeout, "probe result", interval=0.5)
        return json.loads(self.out.read_text())


def start_traffic(flows, probe, duration, mix, rate):
    """Both clients of Flows and the probe; returns the epoch when all are connected."""
    for name in ("client1", "mail-cent7b"):  # Flows.start waits for "connected" in these
        (flows.work / ("%s.log" % name)).write_text("")  # logs: a previous run's line must not count
    t0 = time.time()
    flows.start(duration, inbound=mix[0], outbound=mix[1], udp=mix[2], rate=rate)
    if probe:
        probe.start(max(1.0, duration - (time.time() - t0)))
    return time.time()


def gaps(result, proto):
    return [f["max_gap_ms"] for f in result["flows"] if f["proto"] == proto]


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def by_client(*results):
    """Lost and reset flows per client (client1: inbound DNAT; mail-cent7b: outbound SNAT; probe),
    and the commonest errors that ended flows."""
    out, errors = {}, {}
    for label, result in results:
        if not result:
            continue
        for f in result["flows"]:
            name = label or f["id"].split(":")[0]
            c = out.setdefault(name, {"flows": 0, "lost": 0, "resets": 0})
            c["flows"] += 1
            c["lost"] += bool(f["lost_flow"])
            c["resets"] += bool(f["reset"])
            if f["lost_flow"]:
                key = "%s %s: %s" % (name, f["proto"], (f["error"] or "silent at the end")[:60])
                errors[key] = errors.get(key, 0) + 1
    return out, dict(sorted(errors.items(), key=lambda kv: -kv[1])[:6])


def traffic_measures(main, probe):
    """What the two results say about one failover."""
    s = main["summary"]
    out = {"flows": s["flows"], "lost": s["lost_flows"], "lost_tcp": s["lost_tcp"], "lost_udp": s["lost_udp"],
           "resets": s["resets"], "errors": s["errors"], "rate_hz": s["rate_hz"],
           "main_gap_udp_ms": median(gaps(main, "udp")), "main_gap_tcp_ms": median(gaps(main, "tcp")),
           "p50_gap_ms": s["p50_gap_ms"], "p99_gap_ms": s["p99_gap_ms"], "main_max_gap_ms": s["max_gap_ms"],
           "requests_lost": s["lost"]}
    worst = [s["max_gap_ms"]]
    if probe:
        p = probe["summary"]
        out.update(probe_flows=p["flows"], probe_rate_hz=p["rate_hz"], probe_lost=p["lost_flows"],
                   gap_ms=median(gaps(probe, "udp")), gap_tcp_ms=median(gaps(probe, "tcp")),
                   gap_udp_min_ms=min(gaps(probe, "udp"), default=None),
                   gap_udp_max_ms=max(gaps(probe, "udp"), default=None))
        out["lost"] += p["lost_flows"]
        out["lost_tcp"] += p["lost_tcp"]
        out["lost_udp"] += p["lost_udp"]
        out["resets"] += p["resets"]
        worst.append(p["max_gap_ms"])
    else:
        out["gap_ms"], out["gap_tcp_ms"] = out["main_gap_udp_ms"], out["main_gap_tcp_ms"]
    out["gap_max_ms"] = max((w for w in worst if w is not None), default=None)
    out["by_client"], out["lost_why"] = by_client((None, main), ("probe", probe))
    return out


# ---------------------------------------------------------------------------
# one scenario: a fleet, then `runs` crash + reboot cycles
# ---------------------------------------------------------------------------

class Scenario:
    def __init__(self, part, version, advert, entries, mix, rate, probe, args, takeover="commit"):
        self.part, self.version, self.advert, self.entries = part, version, advert, entries
        self.mix, self.rate, self.probe, self.args = mix, rate, probe, args
        self.takeover = takeover
        self.inject = self.takeover == "inject"
        self.pillar = make_pillar(version, advert, entries, self.takeover, args.inject_refresh)
        self.ct_max = self.pillar["hafw"]["clusters"][CLUSTER]["kernel"]["nf_conntrack_max"]
        backup = backup_node(self.pillar)
        self.priority = backup["vrrp"]["priority"]
        self.hook_timeout_s = backup["conntrackd"]["hook_timeout_s"]
        self.floor = floor_s(advert, self.priority)
        self.commit_budget = 0.0 if self.inject else COMMIT_S_PER_100K * entries / 100000
        # after the crash: the outage, then room for TCP's retransmission backoff and the stall rule
        self.post = min(MAX_FLOW_S - args.pre, max(6.0, 2 * (self.floor + self.commit_budget) + 4))
        self.name = (timing_label(version, advert) if part == "timing"
                     else "%d entries" % entries if part == "size" else "soak " + timing_label(version, advert))
        if part == "size" and entries and args.back_to_back:
            self.name += " back-to-back"
        if self.inject:
            self.name += " inject"

    def base(self, run):
        return {"part": self.part, "scenario": self.name, "run": run, "quick": self.args.quick,
                "vrrp_version": self.version, "advert_int": self.advert, "backup_priority": self.priority,
                "floor_ms": round(self.floor * 1000, 1), "entries": self.entries,
                "nf_conntrack_max": self.ct_max, "hook_timeout_s": self.hook_timeout_s,
                "takeover": self.takeover,
                "inject_refresh_s": self.pillar["hafw"]["clusters"][CLUSTER]["conntrackd"].get("inject_refresh_s"),
                "batch": self.args.batch, "commit": self.args.commit,
                "load1": round(os.getloadavg()[0], 2),
                "labs_alive": labs_alive()}


def problems_logged(fleet, since):
    """The hook's warning and error lines on both nodes since `since` (what went wrong, if anything)."""
    return {name: ["+%.1fs %s: %s" % (t - since, trans, text[:300])
                   for t, _, level, trans, text in hook_lines(fleet[name]) if level != "info" and t >= since][-12:]
            for name in (PRIMARY, BACKUP)}


def settle(fleet, boots, timeout=90):
    """The pair as a run wants it: fw-cent7i primary with every VIP, fw-cent7j's gate
    closed, no hook still running on either node (boots: {host: epoch of its last boot})."""
    fleet.wait_vips(PRIMARY, timeout=timeout)
    fleet.wait_vrrp(timeout=timeout)
    wait_for(lambda: gate_closed(fleet[BACKUP]) and not gate_closed(fleet[PRIMARY]), 30,
             "the gate closed on %s only" % BACKUP)
    wait_for(lambda: all(hooks_idle(fleet[n], boots[n]) for n in (PRIMARY, BACKUP)), timeout,
             "no hook running", interval=0.5)


def quiesce(fleet, sc, res, timeout=150):
    """Before a run with a big table: wait until the backup has dropped the entries it
    committed as primary in the previous run (its backup hook's `conntrackd -t` purges
    them after PurgeTimeout, 60 s by default) and both conntrackd caches have stopped
    changing.  Without this, run 2+ would commit over stale entries (clashes: a slower
    commit) on a machine still busy with the purge: a different scenario (--back-to-back)."""
    if not sc.entries or sc.args.back_to_back:
        return
    if sc.inject:  # the backup's kernel table is the replica: nothing stale to wait for
        res["backup_kernel_at_start"] = conntrack_count(fleet[BACKUP])
        return
    t0 = time.time()
    limit = 5000 + sc.entries // 100
    stale = conntrack_count(fleet[BACKUP])
    res["backup_kernel_at_start"] = stale
    if stale > limit:
        say("  waiting for %s to purge %d stale entries (PurgeTimeout)" % (BACKUP, stale))
        try:
            wait_for(lambda: conntrack_count(fleet[BACKUP]) <= limit, timeout, "%s's table purged" % BACKUP,
                     interval=2.0)
        except TimeoutError:
            res["quiesce_timeout"] = True
    last = None
    for _ in range(30):
        now = (conntrackd_caches(fleet[PRIMARY]), conntrackd_caches(fleet[BACKUP]), conntrack_count(fleet[PRIMARY]))
        if now == last:
            break
        last = now
        time.sleep(2.0)
    res["quiesce_s"] = round(time.time() - t0, 1)


def prepare_table(fleet, sc, res):
    """Make sure the primary holds sc.entries extra entries and the backup's external cache has them."""
    primary, backup = fleet[PRIMARY], fleet[BACKUP]
    n = sc.entries
    have = extra_count(primary) if n else 0
    res["primary_extra_before_fill"] = have
    t0 = time.time()
    if n and have < n:
        say("  filling %d entries on %s (%g/s)" % (n, PRIMARY, sc.args.fill_rate))
        cmd = 'cd %s && exec %s -m lab.ctfill "$@"' % (REPO, PYTHON)
        out = primary.exec(["sh", "-c", cmd, "ctfill", str(n), "--rate", str(sc.args.fill_rate)],
                           timeout=n / sc.args.fill_rate * 2 + 120).stdout
        res["fill"] = json.loads(out)
    if n:
        # commit: the backup's external cache; inject: its kernel table
        replica = (lambda: conntrack_count(backup)) if sc.inject else (lambda: conntrackd_caches(backup)[1])
        wait_for(lambda: replica() >= n, n / 10000 + 60, "%s's replica >= %d" % (BACKUP, n), interval=1.0)
        last = replica()
        for _ in range(30):  # then until it stops growing (the sync has caught up)
            time.sleep(1.0)
            now = replica()
            if now == last:
                break
            last = now
        res["sync_s"] = round(time.time() - t0, 1)
    res["primary_extra"] = extra_count(primary) if n else 0
    res["primary_kernel"] = conntrack_count(primary)
    res["backup_external"] = conntrackd_caches(backup)[1]
    res["backup_kernel"] = conntrack_count(backup)


def failover(fleet, flows, probe, sc, res):
    """Crash the primary under traffic; what the flows and the backup's hook saw."""
    args = sc.args
    duration = args.pre + sc.post
    t_ready = start_traffic(flows, probe, duration, sc.mix, sc.rate)
    res["backup_gate_closed"] = gate_closed(fleet[BACKUP])
    time.sleep(max(0.0, t_ready + args.pre - time.time()))
    t_crash = time.time()
    fleet.crash(PRIMARY)
    res["crash_call_s"] = round(time.time() - t_crash, 3)
    flows.mark("crash %s" % PRIMARY)
    fleet.wait_vips(BACKUP, timeout=sc.floor + 30)
    res["vips_seen_s"] = round(time.time() - t_crash, 2)  # polled every 0.2 s: coarse
    hook_budget = 5 * sc.hook_timeout_s + 30
    hook = wait_for(lambda: (h := hook_run(fleet[BACKUP], "primary", t_crash)) and h["done"] and h,
                    hook_budget, "%s's primary hook" % BACKUP, interval=0.5)
    main = flows.collect(timeout=duration + 60)
    pr = probe.collect(timeout=60) if probe else None
    res.update(traffic_measures(main, pr))
    res["takeover_s"] = round(hook["begin"] - t_crash, 3)
    commit = hook["steps"].get("commit", {})
    res["commit_ms"] = commit.get("ms")
    res["commit_rc"] = commit.get("rc")
    # committed entries pass the gate at once (it drops only packets without one)
    res["commit_done_s"] = round(commit["at"] - t_crash, 3) if commit else None
    gate = hook["steps"].get("gate-open")
    res["gate_open_s"] = round(gate["at"] - t_crash, 3) if gate else None
    res["hook_total_ms"] = hook["total_ms"]
    res["backup_kernel_after"] = conntrack_count(fleet[BACKUP])
    res["gap_over_floor"] = round(res["gap_ms"] / (sc.floor * 1000), 2) if res.get("gap_ms") else None


def failback(fleet, flows, probe, sc, res, boots):
    """Reboot the crashed primary under traffic: it converges at boot and preempts back."""
    pre, reboot_budget = 2.0, 20.0 + sc.entries / 50000  # a big table slows the boot's converge
    duration = pre + reboot_budget + sc.post
    t_ready = start_traffic(flows, probe, duration, sc.mix, sc.rate)
    time.sleep(max(0.0, t_ready + pre - time.time()))
    t_reboot = boots[PRIMARY] = time.time()
    fleet.reboot(PRIMARY, timeout=180)
    fb = {"reboot_s": round(time.time() - t_reboot, 1)}
    fleet.wait_vips(PRIMARY, timeout=60)
    hook = wait_for(lambda: (h := hook_run(fleet[PRIMARY], "primary", t_reboot)) and h["done"] and h,
                    5 * sc.hook_timeout_s + 60, "%s's primary hook after the reboot" % PRIMARY,
                    interval=0.5)
    main = flows.collect(timeout=duration + 60)
    pr = probe.collect(timeout=60) if probe else None
    m = traffic_measures(main, pr)
    fb.update({k: m[k] for k in ("lost", "lost_tcp", "lost_udp", "resets", "gap_ms", "gap_tcp_ms",
                                 "gap_max_ms") if k in m})
    fb["takeover_s"] = round(hook["begin"] - t_reboot, 2)  # reboot -> fw-cent7i's primary hook
    commit = hook["steps"].get("commit", {})
    fb["commit_ms"] = commit.get("ms")
    # the flows must go on long enough after the commit for TCP to retransmit (backoff ~ the hold)
    done = commit.get("at", hook["begin"])
    fb["window_left_s"] = round(t_ready + duration - done, 1)
    fb["in_window"] = fb["window_left_s"] >= max(4.0, done - hook["begin"] + 2.0)
    fb["by_client"], fb["lost_why"] = m["by_client"], m["lost_why"]
    # the whole table, from /proc (listing 1M entries under a resync takes minutes)
    fb["primary_kernel_after"] = conntrack_count(fleet[PRIMARY])
    res["failback"] = fb


def run_scenario(sc, runs, results):
    """Build a fleet for the scenario's pillar and do `runs` failovers (+ failbacks)."""
    args = sc.args
    say("== %s: %s, %d run(s), flows %s at %g Hz%s, floor %.0f ms" % (
        sc.part, sc.name, runs, "/".join(map(str, sc.mix)), sc.rate,
        " + probe %d UDP/%d TCP at %g Hz" % (args.probe_udp, args.probe_tcp, args.probe_rate) if sc.probe else "",
        sc.floor * 1000))
    results.begin(sc.part, sc.name, sc.args.quick)
    with RootConntrackLimits(sc.ct_max), Lab() as lab, \
            tempfile.TemporaryDirectory(prefix="hafw-failover-") as work:
        t0 = time.monotonic()
        boots = dict.fromkeys((PRIMARY, BACKUP), time.time())
        fleet = Fleet(lab, pillar=sc.pillar, say=lambda m: say("  " + m)).up()
        build_s = round(time.monotonic() - t0, 1)
        flows = Flows(fleet, Path(work) / "flows")
        flows.serve(max_seconds=runs * 600 + 900)  # the servers outlive every run of this fleet
        probe = Probe(fleet, flows.work, args.probe_udp, args.probe_tcp, args.probe_rate) if sc.probe else None
        for run in range(1, runs + 1):
            res = sc.base(run)
            res["fleet_build_s"] = build_s
            t_run, t_run_epoch = time.monotonic(), time.time()
            try:
                settle(fleet, boots)
                quiesce(fleet, sc, res)
                prepare_table(fleet, sc, res)
                failover(fleet, flows, probe, sc, res)
                say("  run %d: gap %s ms (TCP %s, worst %s) = %sx floor, takeover %.2f s, commit %s ms, "
                    "lost %d/%d" % (run, res.get("gap_ms"), res.get("gap_tcp_ms"), res.get("gap_max_ms"),
                                    res.get("gap_over_floor"), res["takeover_s"], res["commit_ms"], res["lost"],
                                    res["flows"] + res.get("probe_flows", 0)))
                if args.failback:
                    failback(fleet, flows, probe, sc, res, boots)
                    fb = res["failback"]
                    say("  run %d failback: gap %s ms (worst %s), lost %s, reboot %.0f s%s" % (
                        run, fb.get("gap_ms"), fb.get("gap_max_ms"), fb["lost"], fb["reboot_s"],
                        "" if fb["in_window"] else " (preempted outside the flows' window)"))
                else:
                    boots[PRIMARY] = time.time()
                    fleet.reboot(PRIMARY, timeout=180)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - recorded; this fleet's state is unknown: next scenario
                res["error"] = "%s: %s" % (type(e).__name__, str(e)[:2000])
                res["traceback"] = traceback.format_exc()[-3000:]
                try:
                    res["hook_problems"] = problems_logged(fleet, t_run_epoch)
                except Exception:  # noqa: BLE001 - best effort, the run has failed already
                    pass
                say("  run %d FAILED: %s" % (run, res["error"][:500]))
                res["run_s"] = round(time.monotonic() - t_run, 1)
                results.add(res)
                return
            res["hook_problems"] = problems_logged(fleet, t_run_epoch)
            res["run_s"] = round(time.monotonic() - t_run, 1)
            results.add(res)


# ---------------------------------------------------------------------------
# soak: CPU stress, count transitions
# ---------------------------------------------------------------------------

BUSY = """import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""


def start_stress(seconds, per_cpu=1):
    """`per_cpu` busy loops pinned to each CPU; each ends by itself after `seconds`."""
    cpus = sorted(os.sched_getaffinity(0))
    return [subprocess.Popen([sys.executable, "-c", BUSY, str(cpu), str(seconds)], stdin=subprocess.DEVNULL)
            for cpu in cpus for _ in range(per_cpu)]


def stop_stress(procs):
    for p in procs:  # only the processes started above, by pid
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass


def run_soak(args, results):
    version, advert = parse_timing(args.soak_timing)
    sc = Scenario("soak", version, advert, 0, (50, 25, 25), 5.0, False, args)
    minutes = args.soak_minutes
    seconds = minutes * 60
    say("== soak: %s for %g min, %d busy loop(s) on each of %d CPUs, flows %s at 5 Hz, floor %.0f ms" % (
        timing_label(version, advert), minutes, args.stress_per_cpu, len(os.sched_getaffinity(0)),
        "/".join(map(str, sc.mix)),
        sc.floor * 1000))
    results.begin("soak", sc.name, args.quick)
    res = sc.base(1)
    res["soak_minutes"] = minutes
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="hafw-failover-") as work:
        boots = dict.fromkeys((PRIMARY, BACKUP), time.time())
        fleet = Fleet(lab, pillar=sc.pillar, say=lambda m: say("  " + m)).up()
        settle(fleet, boots)
        res["labs_alive"] = labs_alive()
        n_vips = len(fleet.topology["pair_vips"][PRIMARY])
        flows = Flows(fleet, Path(work) / "flows")
        flows.serve(max_seconds=seconds + 900)
        start_traffic(flows, None, seconds, sc.mix, sc.rate)
        stress = start_stress(seconds + 60, args.stress_per_cpu)
        res["stress_pids"] = [p.pid for p in stress]
        res["stress_per_cpu"] = args.stress_per_cpu
        t0 = time.time()
        polls = anomalies = 0
        first_anomalies = []
        try:
            step = 1.0
            for _ in range(int(seconds / step) + 5):
                if time.time() - t0 >= seconds:
                    break
                held = (len(fleet.vips(PRIMARY)), len(fleet.vips(BACKUP)))
                polls += 1
                if held != (n_vips, 0):
                    anomalies += 1
                    if len(first_anomalies) < 10:
                        first_anomalies.append((round(time.time() - t0, 1), held))
                if polls % 60 == 0:
                    say("  %d s: %d VIP checks, %d anomalies, load %.1f" % (
                        time.time() - t0, polls, anomalies, os.getloadavg()[0]))
                time.sleep(max(0.0, t0 + polls * step - time.time()))
        finally:
            res["load1_end"] = round(os.getloadavg()[0], 2)
            stop_stress(stress)
        t1 = time.time()
        result = flows.collect(timeout=120)
        trans = {n: transitions_between(fleet[n], t0, t1) for n in (PRIMARY, BACKUP)}
    s = result["summary"]
    res.update(flows=s["flows"], lost=s["lost_flows"], lost_tcp=s["lost_tcp"], lost_udp=s["lost_udp"],
               resets=s["resets"], gap_max_ms=s["max_gap_ms"], p50_gap_ms=s["p50_gap_ms"],
               p99_gap_ms=s["p99_gap_ms"], gap_ms=None, soak_s=round(t1 - t0, 1), vip_checks=polls,
               vip_anomalies=anomalies, first_anomalies=first_anomalies,
               transitions=sum(len(v) for v in trans.values()), transition_log=trans)
    say("  soak: %d transitions, %d VIP anomalies in %d checks, %d/%d flows lost" % (
        res["transitions"], anomalies, polls, res["lost"], res["flows"]))
    results.add(res)


# ---------------------------------------------------------------------------
# results file and tables
# ---------------------------------------------------------------------------

class Results:
    def __init__(self, path, append):
        self.path, self.append = Path(path), append
        self.runs = load_runs(self.path)
        self.new = []

    def begin(self, part, scenario, quick):
        if not self.append:
            self.runs = [r for r in self.runs
                         if (r.get("part"), r.get("scenario"), bool(r.get("quick"))) != (part, scenario, quick)]

    def add(self, run):
        self.runs.append(run)
        self.new.append(run)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.runs, indent=1) + "\n")
        tmp.replace(self.path)


def load_runs(path):
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return []
    return data if isinstance(data, list) else []


def fmt(v, spec="%.0f"):
    return "-" if v is None else spec % v


def table(header, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def stale_backup(r):
    """The backup's kernel still held the previous run's copy of the table at the crash
    (not purged yet): the commit then meets clashes.  Such runs are shown apart.
    In inject mode the backup's kernel table is the replica: never stale."""
    entries = r.get("entries") or 0
    return bool(entries) and r.get("takeover") != "inject" and (r.get("backup_kernel") or 0) > 5000 + entries // 100


def groups(runs, part):
    out = {}
    for r in runs:
        if r.get("part") == part:
            out.setdefault((r["scenario"], bool(r.get("quick")), stale_backup(r)), []).append(r)
    return out


def med(rs, key, sub=None):
    vals = [(r.get(sub) or {}).get(key) if sub else r.get(key) for r in rs]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def span(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return "%.0f-%.0f" % (min(vals), max(vals)) if vals else "-"


def lost_text(rs, key="lost", sub=None):
    ok = [r for r in rs if "error" not in r and (not sub or r.get(sub))]
    total = sum(((r.get(sub) or {}) if sub else r).get(key) or 0 for r in ok)
    flows = sum(r.get("flows", 0) + r.get("probe_flows", 0) for r in ok)
    return "%d/%d" % (total, flows)


def timing_table(runs):
    rows = []
    for (name, quick, _), rs in sorted(groups(runs, "timing").items(),
                                       key=lambda kv: (kv[0][1], -kv[1][0]["advert_int"])):
        ok = [r for r in rs if "error" not in r]
        floor = rs[0]["floor_ms"]
        gap = med(ok, "gap_ms")
        rows.append((name + (" (quick)" if quick else ""), "%d/%d" % (len(ok), len(rs)), fmt(floor),
                     fmt(med(ok, "takeover_s"), "%.3f"), fmt(gap), span(ok, "gap_ms"),
                     fmt(gap / floor if gap else None, "%.2f"), fmt(med(ok, "gap_tcp_ms")),
                     fmt(max((r["gap_max_ms"] for r in ok if r.get("gap_max_ms")), default=None)),
                     lost_text(ok), str(sum(r.get("resets", 0) for r in ok)),
                     fmt(med(ok, "gap_ms", "failback")), lost_text(ok, "lost", "failback")))
    return table(("VRRP", "runs ok", "floor ms", "takeover s", "gap ms", "gap range", "gap/floor", "TCP gap ms",
                  "worst ms", "lost", "resets", "failback gap ms", "failback lost"), rows)


def size_table(runs):
    rows = []
    for (name, quick, stale), rs in sorted(groups(runs, "size").items(),
                                           key=lambda kv: (kv[0][1], kv[1][0]["entries"], kv[0][2], kv[0][0])):
        ok = [r for r in rs if "error" not in r]
        r0 = rs[0]
        floor, entries = r0["floor_ms"], r0["entries"]
        gap, worst = med(ok, "gap_ms"), max((r["gap_max_ms"] for r in ok if r.get("gap_max_ms")), default=None)
        target = floor + TARGET_S[entries] * 1000 if entries in TARGET_S else None
        if target is None or gap is None:
            verdict = "-"
        else:
            verdict = "%s (worst flow: %s)" % ("MET" if gap <= target else "NOT MET",
                                               "met" if worst is not None and worst <= target else "not met")
        label = name.replace(" entries", "") + (" (quick)" if quick else "") + (" STALE backup" if stale else "")
        rows.append((label,
                     timing_label(r0["vrrp_version"], r0["advert_int"]),
                     "%d/%d" % (len(ok), len(rs)), fmt(floor), fmt(med(ok, "sync_s"), "%.1f"),
                     fmt(med(ok, "takeover_s"), "%.3f"), fmt(med(ok, "commit_ms")), fmt(med(ok, "gate_open_s"), "%.2f"),
                     fmt(gap), fmt(med(ok, "gap_tcp_ms")), fmt(worst), fmt(target), verdict, lost_text(ok),
                     fmt(med(ok, "gap_ms", "failback")), lost_text(ok, "lost", "failback")))
    return table(("entries", "VRRP", "runs ok", "floor ms", "sync s", "takeover s", "commit ms", "gate open s",
                  "gap ms", "TCP gap ms", "worst ms", "target ms", "target", "lost", "failback gap ms",
                  "failback lost"), rows)


def soak_table(runs):
    rows = []
    for r in [r for r in runs if r.get("part") == "soak"]:
        rows.append((r["scenario"] + (" (quick)" if r.get("quick") else ""), "%g" % r["advert_int"],
                     fmt(r.get("soak_minutes"), "%g"), str(r.get("stress_per_cpu", "-")),
                     str(r.get("transitions", "-")),
                     "%s/%s" % (r.get("vip_anomalies", "-"), r.get("vip_checks", "-")),
                     "%s/%s" % (r.get("lost", "-"), r.get("flows", "-")), fmt(r.get("gap_max_ms")),
                     fmt(r.get("load1_end"), "%.1f"), r.get("error", "")[:60]))
    return table(("soak", "advert s", "minutes", "busy loops/CPU", "transitions", "VIP anomalies", "lost",
                  "worst gap ms", "load1 at end", "error"), rows)


def print_tables(runs, parts):
    captions = {"timing": "medians over the runs; gap = the UDP probe flows' median longest silence",
                "size": "medians over the runs; gap = the UDP probe flows' median longest silence; target = "
                        "floor + 0.1 s (100k), + 0.5 s (1M); STALE: the backup still held the previous run's "
                        "entries",
                "soak": "transitions = hook runs (VRRP transitions) on either node during the soak"}
    for part, fn in (("timing", timing_table), ("size", size_table), ("soak", soak_table)):
        if part in parts and any(r.get("part") == part for r in runs):
            print("\n%s (%s)" % (part, captions[part]))
            print(fn(runs))
            errors = [r for r in runs if r.get("part") == part and "error" in r]
            for r in errors:
                print("  ! %s run %s: %s" % (r["scenario"], r["run"], r["error"][:200]))


# ---------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="timing,size,soak", help="any of timing,size,soak (default: all)")
    p.add_argument("--runs", type=int, default=None, help="failovers per scenario (default 5; --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 run, sizes 0 and 20000, fewer flows, 1-minute soak")
    p.add_argument("--timings", default=TIMINGS, help="part timing: VERSION:ADVERT,... (default %s)" % TIMINGS)
    p.add_argument("--sizes", default=None, help="part size: extra entries (default %s)" % SIZES)
    p.add_argument("--size-timing", default=CANDIDATE, help="part size: VRRP VERSION:ADVERT (default %s)" % CANDIDATE)
    p.add_argument("--soak-minutes", type=float, default=None, help="part soak (default 10; --quick: 1)")
    p.add_argument("--soak-timing", default=CANDIDATE, help="part soak: VRRP VERSION:ADVERT (default %s)" % CANDIDATE)
    p.add_argument("--stress-per-cpu", type=int, default=1, help="part soak: busy loops per CPU (default 1)")
    p.add_argument("--size-flows", type=int, default=None, help="part size: main flows (default 1000)")
    p.add_argument("--probe-rate", type=float, default=50.0, help="Hz of the probe flows (max 50)")
    p.add_argument("--probe-udp", type=int, default=20)
    p.add_argument("--probe-tcp", type=int, default=10)
    p.add_argument("--pre", type=float, default=4.0, help="s of traffic before the crash")
    p.add_argument("--fill-rate", type=float, default=25000.0, help="entries/s of the fill (conntrackd keeps up)")
    p.add_argument("--back-to-back", action="store_true",
                   help="part size: do not wait for the backup to purge the previous run's entries")
    p.add_argument("--takeover", default="commit,inject",
                   help="part size: commit (the external cache, the default design), inject "
                        "(DisableExternalCache) or both (default commit,inject)")
    p.add_argument("--inject-refresh", type=int, default=None,
                   help="part size, --takeover inject: the backup's resync interval in s (default: the model's)")
    p.add_argument("--no-failback", dest="failback", action="store_false",
                   help="reboot without traffic: do not measure the failback")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--append", action="store_true", help="keep the earlier runs of the scenarios run now")
    p.add_argument("--summary", action="store_true", help="print the tables of the results file and exit")
    args = p.parse_args(argv)
    parts = [x for x in args.part.split(",") if x]
    if set(parts) - {"timing", "size", "soak"}:
        p.error("--part: timing, size, soak")
    if args.summary:
        print_tables(load_runs(args.out), parts)
        return 0
    if os.geteuid() != 0:
        p.error("needs root (namespaces, the root netns's conntrack limits)")
    runs = args.runs if args.runs is not None else (1 if args.quick else 5)
    sizes = [int(x) for x in (args.sizes or ("0,20000" if args.quick else SIZES)).split(",")]
    soak_minutes = args.soak_minutes if args.soak_minutes is not None else (1 if args.quick else 10)
    args.soak_minutes = soak_minutes
    size_flows = args.size_flows or (200 if args.quick else 1000)
    if not 1 <= runs <= 20 or not 0 < soak_minutes <= 60 or not 0 < args.probe_rate <= 50 \
            or not 1 <= size_flows <= 2000 or any(not 0 <= s <= 2_000_000 for s in sizes) or not 1 <= args.pre <= 20 \
            or not 1 <= args.stress_per_cpu <= 4:
        p.error("bounds: --runs 1-20, --soak-minutes (0, 60], --probe-rate (0, 50], --size-flows 1-2000, "
                "--sizes 0-2000000, --pre 1-20, --stress-per-cpu 1-4")
    if not set(args.takeover.split(",")) <= {"commit", "inject"}:
        p.error("--takeover: commit, inject or commit,inject")
    args.batch = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.commit = git_commit()
    restore_leftover_sysctls()
    results = Results(args.out, args.append)

    scenarios = []
    if "timing" in parts:
        mix = (10, 5, 5) if args.quick else (30, 10, 10)
        for text in args.timings.split(","):
            version, advert = parse_timing(text)
            scenarios.append(Scenario("timing", version, advert, 0, mix, 5.0, True, args))
    if "size" in parts:
        version, advert = parse_timing(args.size_timing)
        mix = (size_flows * 3 // 5, size_flows // 5, size_flows - size_flows * 3 // 5 - size_flows // 5)
        for n in sizes:
            for mode in args.takeover.split(","):
                scenarios.append(Scenario("size", version, advert, n, mix, 5.0, True, args, takeover=mode))
    started = time.monotonic()
    for sc in scenarios:
        run_scenario(sc, runs, results)
    if "soak" in parts:
        run_soak(args, results)
    say("done in %.1f min; results: %s" % ((time.monotonic() - started) / 60, args.out))
    print_tables(results.new, parts)
    return 0


if __name__ == "__main__":
    # SIGTERM/SIGHUP as Ctrl-C: the labs are torn down and the root sysctls restored
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    sys.exit(main())
