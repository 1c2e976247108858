"""Report of a traffic run (lab/traffic.py): report.json and timeline.png.

    from lab.report import write_report
    write_report(result, "out/", {"case": "crash fw1", "events": [{"t": ..., "label": ...}]})

    python -m lab.report RESULT.json OUT_DIR      # same, from a result file

report.json is the run's summary with the `extra` keys merged over it, plus
"events" (the run's and extra's, by time) and "lost_flow_list" (id, proto,
reset, error, max_gap_ms of each lost flow).  timeline.png shows, against
seconds since the run's start, the replies per second of all TCP and all UDP
flows (top) and a heatmap of every flow (bottom: one row per flow, green =
all the replies expected in a ~0.5 s window came, red = none), with a
vertical line and label for each event.
"""
import json
import math
import sys
from pathlib import Path


def _events(result, extra):
    """Run and extra events, each with t_rel (s since the run's t0), by time."""
    t0 = result["summary"]["t0"]
    events = []
    for event in list(result.get("events", [])) + list(extra.get("events", [])):
        event = dict(event)
        if "t_rel" not in event:
            event["t_rel"] = round(float(event["t"]) - t0, 3)
        events.append(event)
    return sorted(events, key=lambda e: e["t_rel"])


def write_report(result, out_dir, extra=None, name=""):
    """Write out_dir/{name}report.json and out_dir/{name}timeline.png; return their paths."""
    extra = dict(extra or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events = _events(result, extra)
    lost = [{k: f[k] for k in ("id", "proto", "reset", "error", "max_gap_ms")}
            for f in result["flows"] if f["lost_flow"]]
    report = {**result["summary"], **{k: v for k, v in extra.items() if k != "events"},
              "events": events, "lost_flow_list": lost}
    paths = {"report": out / f"{name}report.json", "timeline": out / f"{name}timeline.png"}
    paths["report"].write_text(json.dumps(report, indent=1) + "\n")
    plot_timeline(result, events, paths["timeline"], extra.get("title"))
    return paths


def _smoothed(timelines, rate, bucket_s, duration_s):
    """Per flow, replies in a centred window of whole periods / replies expected there.

    Nothing is expected after sending stopped: those buckets are NaN (no colour).
    """
    import numpy as np

    period = 1.0 / rate
    window_s = period * max(1, math.ceil(0.5 / period))
    kernel = np.ones(max(1, round(window_s / bucket_s)))
    window_s = len(kernel) * bucket_s
    n = len(timelines[0])
    sending = (np.arange(n) * bucket_s) < duration_s
    expected = np.convolve(sending * (rate * bucket_s), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = [np.convolve(t, kernel, mode="same") / expected for t in timelines]
    grid = np.clip(np.array(rows), 0.0, 1.0)
    grid[:, ~sending] = np.nan
    return grid, window_s


def plot_timeline(result, events, path, title=None):
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    summary, flows = result["summary"], result["flows"]
    bucket_s = summary["bucket_ms"] / 1000.0
    # TCP rows first, then UDP; the heatmap's row 0 is at the top.
    ordered = [f for f in flows if f["proto"] == "tcp"] + [f for f in flows if f["proto"] == "udp"]
    n_buckets = len(ordered[0]["timeline"]) if ordered else 1
    # Show the run plus at most 0.5 s of the drain after it.
    shown = min(n_buckets, int(math.ceil((summary["duration_s"] + 0.5) / bucket_s)))
    seconds = (np.arange(shown) + 0.5) * bucket_s

    fig = Figure(figsize=(12, 7.5), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2.4])
    for proto, color in (("tcp", "tab:blue"), ("udp", "tab:orange")):
        group = [f["timeline"][:shown] for f in ordered if f["proto"] == proto]
        if group:
            per_s = np.sum(np.array(group), axis=0) / bucket_s
            top.plot(seconds, per_s, color=color, linewidth=1,
                     label="%s: %d flows" % (proto.upper(), len(group)))
            top.axhline(len(group) * summary["rate_hz"], color=color, linestyle=":", linewidth=0.8)
    top.set_ylabel("replies / s")
    top.set_ylim(bottom=0)
    top.legend(loc="lower left", fontsize=8)
    top.grid(alpha=0.3)

    if ordered:
        grid, window_s = _smoothed([f["timeline"][:shown] for f in ordered],
                                   summary["rate_hz"], bucket_s, summary["duration_s"])
        cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#dddddd")
        image = bottom.imshow(grid, aspect="auto", cmap=cmap, vmin=0, vmax=1,
                              interpolation="nearest",
                              extent=(0, shown * bucket_s, len(ordered), 0))
        bar = fig.colorbar(image, ax=bottom, pad=0.01, fraction=0.03)
        bar.set_label("share of expected replies (%.1f s window)" % window_s)
        n_tcp = summary["tcp"]
        if 0 < n_tcp < len(ordered):
            bottom.axhline(n_tcp, color="black", linewidth=1)
        ticks = [(n_tcp / 2, "TCP\n%d" % n_tcp)] if n_tcp else []
        if len(ordered) > n_tcp:
            ticks.append((n_tcp + (len(ordered) - n_tcp) / 2, "UDP\n%d" % (len(ordered) - n_tcp)))
        bottom.set_yticks([t for t, _ in ticks], [label for _, label in ticks])
    bottom.set_xlabel("seconds since the run started")
    bottom.set_ylabel("flows")
    bottom.set_xlim(0, shown * bucket_s)

    for i, event in enumerate(events):
        for ax in (top, bottom):
            ax.axvline(event["t_rel"], color="black", linestyle="--", linewidth=1)
        top.annotate(event["label"], (event["t_rel"], 1.0), xycoords=("data", "axes fraction"),
                     xytext=(3, -3 - 11 * (i % 4)), textcoords="offset points", fontsize=8,
                     va="top", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.8})

    heading = ("%d TCP + %d UDP flows at %g Hz for %gs: %d lost (TCP %d, UDP %d), "
               "%d resets, max gap %s ms, p50 gap %s ms"
               % (summary["tcp"], summary["udp"], summary["rate_hz"], summary["duration_s"],
                  summary["lost_flows"], summary["lost_tcp"], summary["lost_udp"],
                  summary["resets"], summary["max_gap_ms"], summary["p50_gap_ms"]))
    fig.suptitle("%s\n%s" % (title, heading) if title else heading, fontsize=10)
    fig.savefig(path, format="png")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m lab.report RESULT.json OUT_DIR", file=sys.stderr)
        return 2
    paths = write_report(json.loads(Path(argv[0]).read_text()), argv[1])
    print("\n".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
