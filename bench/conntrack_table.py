#!/usr/bin/env python3
"""Reading a big conntrack table (issue 4): the conntrack module's count and summary vs `conntrack -L`.

For each size (default 100k and 1M entries, lab.ctfill's ESTABLISHED TCP
entries plus a few UDP ones) a throwaway network namespace is filled, then,
in the same run and namespace:

  cli_list_s          `conntrack -L > /dev/null`, the baseline
  count_s             hafw_ctnetlink.count() (the kernel's counter: what conntrack.count returns)
  summary_s           hafw_ctnetlink.summary() (conntrack.summary: one streaming pass)
  summary_peak_rss_mb peak RSS of a fresh Python process doing only the summary
  walk_s              a dump that decodes nothing (the reader's floor)
  digest_s            conntrack.sync_digest's table side: every entry decoded, passed
                      through the seed's conntrackd filter, hashed into 4096 buckets
                      (what conntrack.sync_health costs the master, once per pass)

Targets (issue 4): count <= 10 ms at 1M; summary <= 2 x cli_list_s;
peak RSS <= 150 MB. Each figure is the median of --repeat runs. Writes
bench/results/conntrack_table.json and prints a table. Needs root: the root
namespace's nf_conntrack_max is raised for the block and restored.
"""

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _util import RootConntrackLimits, restore_leftover_sysctls, say  # noqa: E402

RESULTS = REPO / "bench" / "results" / "conntrack_table.json"
PY = sys.executable
# run inside the namespace: one measurement, printed as JSON
PROBE = r"""
import json, resource, sys, time
sys.path.insert(0, %r)
import hafw_ctnetlink as c
import hafw_syncdiff as sd
what = sys.argv[1]
t = time.perf_counter()
if what == "count":
    n = c.count()
elif what == "summary":
    n = c.summary()["entries"]
elif what == "digest":
    digest = sd.Digest()
    for k in sd.table_keys(open(%r).read(), c.dump(raw=True)):
        digest.add(k)
    n = digest.total
else:
    n = sum(1 for _ in c.dump(raw=True))
dt = time.perf_counter() - t
print(json.dumps({"s": dt, "n": n, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""" % (str(REPO / "_utils"), str(REPO / "test/fixtures/golden/Debian/fw-cent7i/etc/conntrackd/conntrackd.conf"))


def ns_run(ns, *cmd, **kw):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True, text=True, **kw)


def probe(ns, what):
    return json.loads(ns_run(ns, PY, "-c", PROBE, what, timeout=600).stdout)


def cli_list(ns):
    t = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-L"], check=True, timeout=600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def measure(entries, repeat):
    ns = "hfctb%s" % secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        say("%s: filling %d entries" % (ns, entries))
        fill = json.loads(ns_run(ns, "sh", "-c", 'cd "%s" && exec "%s" -m lab.ctfill %d --timeout 900'
                                 % (REPO, PY, entries), timeout=900).stdout)
        for i in range(20):
            ns_run(ns, "conntrack", "-I", "-p", "udp", "-s", "10.0.0.%d" % (i + 1), "-d", "10.0.0.200",
                   "--sport", "53", "--dport", "5353", "-t", "600")
        runs = {"cli_list_s": [], "count_s": [], "summary_s": [], "walk_s": [], "digest_s": [], "rss": []}
        for _ in range(repeat):
            runs["cli_list_s"].append(cli_list(ns))
            runs["count_s"].append(probe(ns, "count")["s"])
            s = probe(ns, "summary")
            runs["summary_s"].append(s["s"])
            runs["rss"].append(s["rss_mb"])
            runs["walk_s"].append(probe(ns, "walk")["s"])
            runs["digest_s"].append(probe(ns, "digest")["s"])
            assert s["n"] >= entries, s
        med = {k: statistics.median(v) for k, v in runs.items()}
        return {"entries": entries, "repeat": repeat, "fill": fill,
                "cli_list_s": round(med["cli_list_s"], 3), "count_s": round(med["count_s"], 6),
                "summary_s": round(med["summary_s"], 3), "walk_s": round(med["walk_s"], 3),
                "digest_s": round(med["digest_s"], 3), "digest_over_cli": round(med["digest_s"] / med["cli_list_s"], 2),
                "summary_peak_rss_mb": round(max(runs["rss"]), 1),
                "summary_over_cli": round(med["summary_s"] / med["cli_list_s"], 2),
                "runs": {k: [round(x, 4) for x in v] for k, v in runs.items()},
                "load1": round(os.getloadavg()[0], 2), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def table(rows):
    head = ("entries", "cli -L s", "count ms", "summary s", "summary/cli", "walk s", "digest s", "peak MB",
            "targets")
    lines = ["  ".join("%-12s" % h for h in head)]
    for r in rows:
        ok = (r["entries"] < 1_000_000 or r["count_s"] <= 0.010) and r["summary_over_cli"] <= 2 \
            and r["summary_peak_rss_mb"] <= 150
        lines.append("  ".join("%-12s" % v for v in (
            r["entries"], r["cli_list_s"], round(r["count_s"] * 1000, 3), r["summary_s"], r["summary_over_cli"],
            r["walk_s"], r.get("digest_s", "-"), r["summary_peak_rss_mb"], "MET" if ok else "NOT MET")))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--summary", action="store_true", help="print the table of the results file and exit")
    args = p.parse_args(argv)
    if args.summary:
        print(table(json.loads(Path(args.out).read_text())))
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    if not 1 <= args.repeat <= 10 or any(not 1000 <= n <= 2_000_000 for n in sizes):
        p.error("bounds: --repeat 1-10, --sizes 1000-2000000")
    if os.geteuid() != 0:
        p.error("needs root (namespaces, the root namespace's conntrack limits)")
    restore_leftover_sysctls()
    rows = []
    with RootConntrackLimits(max(sizes) + 65536):
        for n in sizes:
            rows.append(measure(n, args.repeat))
            say("%d entries: %s" % (n, {k: rows[-1][k] for k in ("cli_list_s", "count_s", "summary_s",
                                                                  "summary_peak_rss_mb")}))
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
