"""Test traffic between lab hosts: long-lived TCP sessions and UDP flows, measured.

    python -m lab.traffic serve --tcp 2525 --udp 5353 [--bind ADDR] [--max-seconds S]
    python -m lab.traffic run --flows 200 --target 10.99.2.2:2525 \\
        [--udp-flows 50 --udp-target 10.99.2.2:5353] --rate 5 --duration 20 \\
        --out result.json [--events events.jsonl] [--timeout 2] [--stall 2]

Run both inside lab hosts, aimed only at lab addresses.  The server is in
lab/traffic_server.py, the flows and what they measure in lab/traffic_client.py
(read its docstring for the exact meaning of each field).  Output of `run`:

    {"summary": {"flows", "tcp", "udp", "lost_flows", "lost_tcp", "lost_udp",
                 "max_gap_ms", "p50_gap_ms", "p99_gap_ms", "duration_s", ...},
     "flows": [{"id", "proto", "sent", "replies", "lost", "late", "max_gap_ms",
                "reset", "error", "lost_flow", "timeline": [...], ...}],
     "events": [{"t": epoch_s, "t_rel": s_from_t0, "label": "..."}]}

p50/p99_gap_ms are percentiles over the flows of their max_gap_ms.
stdout: the server prints `ready ... pid=N` once listening and one `stopped
{totals}` line on exit; the client prints `connected tcp=A/B udp=C/D in Ss
pid=N` once every flow has connected (or failed to), and `done in Ss {summary}`.
The pids are as seen inside the host: `kill -TERM N` there stops either cleanly.
Everything is bounded: at most 5,000 flows, 50 Hz per flow, 50,000 requests/s
in all and one hour; the client also stops itself (SIGALRM) if its own
shutdown ever hangs.  Stdlib only.
"""
import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import time

from . import traffic_client as tc
from . import traffic_server


def address(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError("want ADDR:PORT, got %r" % text)
    return host.strip("[]"), int(port)


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def read_events(path, t0_epoch):
    """The {"t", "label"} lines of the events file; bad lines are counted, not fatal."""
    events, bad = [], 0
    if not path or not os.path.exists(path):
        return events, bad
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                event["t"] = float(event["t"])
                event["label"] = str(event["label"])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            event["t_rel"] = round(event["t"] - t0_epoch, 3)
            events.append(event)
    return sorted(events, key=lambda e: e["t"]), bad


def new_run(loop, flows, args):
    """A tc.Run of `flows` flows that SIGTERM or SIGINT end early (with their totals); (run, stopped event)."""
    run = tc.Run(loop, flows, args.rate, args.duration, args.timeout, args.stall)
    stopped = asyncio.Event()

    def stop_now():
        run.stop_at = min(run.stop_at, loop.time())
        stopped.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_now)
    return run, stopped


async def run_flows(args):
    loop = asyncio.get_running_loop()
    run, stopped = new_run(loop, args.flows + args.udp_flows, args)

    tcp = [tc.TcpFlow(run, i) for i in range(args.flows)]
    udp = [tc.UdpFlow(run, args.flows + i) for i in range(args.udp_flows)]
    gate = asyncio.Semaphore(args.connect_batch)

    async def connect(flow):
        async with gate:
            if loop.time() >= run.stop_at:
                flow.fail(TimeoutError("run over before connecting"), "connect: ")
                return
            try:
                async with asyncio.timeout(args.connect_timeout):
                    await loop.create_connection(lambda: flow, *args.target)
            except (OSError, TimeoutError) as exc:
                flow.fail(exc, "connect: ")

    async def open_udp(flow):
        try:
            await loop.create_datagram_endpoint(lambda: flow, remote_addr=args.udp_target)
        except OSError as exc:
            flow.fail(exc, "socket: ")
        else:
            flow.begin(loop.time())

    async def open_all():
        await asyncio.gather(*(open_udp(f) for f in udp), *(connect(f) for f in tcp))
        print("connected tcp=%d/%d udp=%d/%d in %.2fs pid=%d" % (
            sum(f.ended is None for f in tcp), len(tcp), sum(f.ended is None for f in udp),
            len(udp), loop.time() - run.t0, os.getpid()), flush=True)

    connecting = asyncio.ensure_future(open_all())
    driver = asyncio.ensure_future(run.drive())
    try:
        async with asyncio.timeout(max(0.0, run.stop_at - loop.time())):
            await stopped.wait()
    except TimeoutError:
        pass
    connecting.cancel()
    driver.cancel()
    await asyncio.gather(connecting, driver, return_exceptions=True)
    flows = tcp + udp
    drain_until = run.stop_at + args.timeout
    while (not stopped.is_set() and loop.time() < drain_until
           and any(f.outstanding() and f.ended is None for f in flows)):
        await asyncio.sleep(0.05)
    wall = loop.time() - run.t0
    for flow in flows:
        flow.close()
    await asyncio.sleep(0)
    records = [f.record() for f in flows]
    events, bad = read_events(args.events, run.t0_epoch)
    return {"summary": summarize(args, run, flows, records, wall, stopped.is_set(), bad),
            "flows": records, "events": events}


def summarize(args, run, flows, records, wall, stopped_early, bad_events):
    gaps = [r["max_gap_ms"] for r in records]
    starts = [f.start - run.t0 for f in flows if f.start is not None]
    usage = resource.getrusage(resource.RUSAGE_SELF)

    def total(key):
        return sum(r[key] for r in records)

    def lost(proto):
        return sum(1 for r in records if r["lost_flow"] and r["proto"] == proto)
    return {
        "flows": len(records), "tcp": args.flows, "udp": args.udp_flows,
        "target": "%s:%d" % args.target if args.target else None,
        "udp_target": "%s:%d" % args.udp_target if args.udp_target else None,
        "rate_hz": args.rate, "duration_s": round(run.stop_at - run.t0, 3),
        "wall_s": round(wall, 3), "timeout_s": run.timeout, "stall_s": run.stall,
        "started": len(starts), "connect_s": round(max(starts), 3) if starts else None,
        "sent": total("sent"), "replies": total("replies"), "lost": total("lost"),
        "late": total("late"), "resets": sum(r["reset"] for r in records),
        "errors": sum(1 for r in records if r["error"]),
        "lost_flows": lost("tcp") + lost("udp"), "lost_tcp": lost("tcp"), "lost_udp": lost("udp"),
        "max_gap_ms": max(gaps, default=None), "p50_gap_ms": percentile(gaps, 0.5),
        "p99_gap_ms": percentile(gaps, 0.99),
        "max_rtt_ms": max((r["max_rtt_ms"] for r in records), default=None),
        "t0": round(run.t0_epoch, 3), "bucket_ms": round(run.bucket_s * 1000),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "stopped_early": stopped_early, "bad_event_lines": bad_events,
    }


def write_json(path, data):
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, path)


def check_run_args(parser, args):
    if not 0 < args.flows + args.udp_flows <= tc.MAX_FLOWS or min(args.flows, args.udp_flows) < 0:
        parser.error("flows: between 1 and %d in all (TCP + UDP)" % tc.MAX_FLOWS)
    if not 0 < args.rate <= tc.MAX_RATE:
        parser.error("--rate: above 0, at most %g Hz" % tc.MAX_RATE)
    if (args.flows + args.udp_flows) * args.rate > tc.MAX_MESSAGES_PER_S:
        parser.error("flows x rate: at most %d requests/s" % tc.MAX_MESSAGES_PER_S)
    if not 0 < args.duration <= tc.MAX_DURATION:
        parser.error("--duration: above 0, at most %g s" % tc.MAX_DURATION)
    if not 0 < args.timeout <= 60 or not 1 <= args.connect_batch <= 1000:
        parser.error("--timeout: (0, 60] s; --connect-batch: 1..1000")
    if args.flows and not args.target:
        parser.error("--flows needs --target ADDR:PORT")
    if args.udp_flows and not args.udp_target:
        parser.error("--udp-flows needs --udp-target ADDR:PORT")


def add_run_options(run, flow="flow", connect_help=None):
    """The options every flow runner shares (this one and lab.smtp_session's)."""
    run.add_argument("--rate", type=float, default=5.0, help="requests per second per " + flow)
    run.add_argument("--duration", type=float, required=True, help="seconds of sending")
    run.add_argument("--out", required=True, metavar="FILE.json")
    run.add_argument("--events", metavar="FILE", help='JSON lines {"t": epoch, "label": ...}')
    run.add_argument("--timeout", type=float, default=2.0, help="a reply later than this is lost")
    run.add_argument("--stall", type=float, default=2.0,
                     help="no reply in the last max(STALL, 3/rate) s: the %s is lost" % flow)
    run.add_argument("--connect-batch", type=int, default=200, help="connects in flight at once")
    run.add_argument("--connect-timeout", type=float, default=5.0, help=connect_help)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab.traffic", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="TCP SMTP-like responder and UDP echo")
    serve.add_argument("--tcp", type=int, metavar="PORT")
    serve.add_argument("--udp", type=int, metavar="PORT")
    serve.add_argument("--bind", default="0.0.0.0", metavar="ADDR")
    serve.add_argument("--max-seconds", type=float, default=3600.0,
                       help="exit by itself after this long (default 3600)")
    run = sub.add_parser("run", help="run flows against a server, write FILE.json")
    run.add_argument("--flows", type=int, default=0, help="TCP sessions")
    run.add_argument("--target", type=address, metavar="ADDR:PORT")
    run.add_argument("--udp-flows", type=int, default=0)
    run.add_argument("--udp-target", type=address, metavar="ADDR:PORT")
    add_run_options(run)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return traffic_server.main(args)
    check_run_args(parser, args)
    traffic_server.raise_fd_limit()
    # Last resort: whatever happens, this process is gone soon after the run.
    signal.alarm(int(args.duration + args.timeout + args.connect_timeout + 60))
    started = time.monotonic()
    result = asyncio.run(run_flows(args))
    write_json(args.out, result)
    summary = {k: v for k, v in result["summary"].items() if k not in ("target", "udp_target")}
    print("done in %.1fs %s" % (time.monotonic() - started, json.dumps(summary)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
