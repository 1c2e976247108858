"""
The reference scenario's traffic through a running fleet (lab/fleet.py).

- inbound SMTP: client1 (192.168.9.0/24) -> 192.168.0.60:25, SNATed by
  fw-cent7m, DNATed by the firewall pair to 192.168.1.60, DNATed again by
  the load-balancer stand-in to mail-cent7a:25;
- outbound TCP and UDP: mail-cent7b (192.168.2.62) -> the `internet` host
  (192.168.0.100), SNATed by the pair to 192.168.0.40.

Servers and clients are lab/traffic.py processes inside their hosts, started
with the project's venv; the clients stop by themselves after the duration.
With Flows(..., mail_server="postfix") the mail hosts run a real postfix
instead (lab/mailserver.py, on both), and the inbound sessions speak SMTP
(lab/smtp_session.py: EHLO, NOOPs, one mail each at the end).
Events (crash, takeover...) are appended to a shared file that both clients
copy into their results; `collect()` merges the two results into one.
"""

import json
import pathlib
import time

from lab import mailserver
from lab.traffic import percentile

REPO = pathlib.Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
SMTP = ("192.168.0.60", 25)         # the pair's DNAT of the SMTP service
INTERNET = "192.168.0.100"          # outside server for outbound (SNAT) flows
OUT_TCP, OUT_UDP = 2525, 5353
MAIL_HOSTS = ("mail-cent7a", "mail-cent7b")  # the LVS real servers
MAIL_SERVERS = ("responder", "postfix")


def _start(host, args, log, module="lab.traffic"):
    """A lab.traffic (or other module's) process in the host, detached, output to a log file."""
    cmd = f"cd {REPO} && exec {PYTHON} -m {module} {args} </dev/null >>{log} 2>&1"
    host.exec(["sh", "-c", cmd + " &"])


def _wait_for(host, log, word, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if word in host.exec(["sh", "-c", f"cat {log} 2>/dev/null || true"]).stdout:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{host.name}: no {word!r} in {log} after {timeout} s")


class Flows:
    """One run of the scenario's flows; files go to `work` (a directory on the real fs)."""

    def __init__(self, fleet, work, mail_server="responder"):
        """mail_server: "responder" (lab/traffic_server.py on mail-cent7a) or "postfix"."""
        if mail_server not in MAIL_SERVERS:
            raise ValueError(f"mail_server: one of {MAIL_SERVERS}, not {mail_server!r}")
        self.fleet = fleet
        self.mail_server = mail_server
        self.work = pathlib.Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.events = self.work / "events.jsonl"
        self.events.write_text("")
        self.clients = {}

    def serve(self, max_seconds=900):
        """Start the servers (idempotent per host: a second call starts nothing new)."""
        servers = [("internet", f"--tcp {OUT_TCP} --udp {OUT_UDP}")]
        if self.mail_server == "postfix":
            for name in MAIL_HOSTS:
                if not mailserver.running(self.fleet[name]):
                    mailserver.configure(self.fleet[name])
                    mailserver.start(self.fleet[name])
        else:
            servers.insert(0, ("mail-cent7a", f"--tcp {SMTP[1]} --udp 5300"))
        for name, args in servers:
            log = self.work / f"server-{name}.log"
            if not log.exists():
                _start(self.fleet[name], f"serve {args} --max-seconds {max_seconds}", log)
                _wait_for(self.fleet[name], log, "ready", 15)

    def start(self, duration, inbound=150, outbound=50, udp=50, rate=5.0, serve=True):
        """Start both clients; returns once every flow is connected.

        serve=False: the servers run already (started by another Flows).
        """
        if serve:
            self.serve()
        common = f"--rate {rate} --duration {duration} --events {self.events}"
        runs = {"client1": f"--flows {inbound} --target {SMTP[0]}:{SMTP[1]}",
                "mail-cent7b": f"--flows {outbound} --target {INTERNET}:{OUT_TCP} "
                               f"--udp-flows {udp} --udp-target {INTERNET}:{OUT_UDP}"}
        if not inbound:
            del runs["client1"]
        if not (outbound or udp):
            del runs["mail-cent7b"]  # a client with no flow never says "connected"
        for name, args in runs.items():
            out, log = self.work / f"{name}.json", self.work / f"{name}.log"
            out.unlink(missing_ok=True)
            log.write_text("")  # "connected" must come from this run
            smtp = name == "client1" and self.mail_server == "postfix"
            _start(self.fleet[name], f"run {args} {common} --out {out}", log,
                   "lab.smtp_session" if smtp else "lab.traffic")
            self.clients[name] = (out, log)
        for name, (_, log) in self.clients.items():
            _wait_for(self.fleet[name], log, "connected", 30)

    def mark(self, label):
        """Record an event (epoch time) that both clients copy into their results."""
        with self.events.open("a") as f:
            f.write(json.dumps({"t": time.time(), "label": label}) + "\n")

    def collect(self, timeout):
        """Wait for both clients to finish; return one merged result."""
        deadline = time.monotonic() + timeout
        results = {}
        for name, (out, _) in self.clients.items():
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.5)
            if not out.exists():
                raise TimeoutError(f"{name}: no result after {timeout} s")
            results[name] = json.loads(out.read_text())
        return merge(results)


def merge(results):
    """Several lab.traffic results as one: flows concatenated, timelines aligned on the earliest start."""
    t0 = min(r["summary"]["t0"] for r in results.values())
    bucket_ms = max(r["summary"]["bucket_ms"] for r in results.values())
    flows, events = [], {}
    for name, result in results.items():
        pad = int(round((result["summary"]["t0"] - t0) * 1000 / bucket_ms))
        for flow in result["flows"]:
            flows.append({**flow, "id": f"{name}:{flow['id']}", "timeline": [0] * pad + flow["timeline"]})
        for event in result.get("events", []):
            events[(event["t"], event["label"])] = {**event, "t_rel": round(event["t"] - t0, 3)}
    gaps = [f["max_gap_ms"] for f in flows]
    first = next(iter(results.values()))["summary"]
    summary = {
        "flows": len(flows), "tcp": sum(f["proto"] == "tcp" for f in flows),
        "udp": sum(f["proto"] == "udp" for f in flows),
        "lost_flows": sum(f["lost_flow"] for f in flows),
        "lost_tcp": sum(f["lost_flow"] for f in flows if f["proto"] == "tcp"),
        "lost_udp": sum(f["lost_flow"] for f in flows if f["proto"] == "udp"),
        "resets": sum(bool(f["reset"]) for f in flows), "errors": sum(bool(f["error"]) for f in flows),
        "sent": sum(f["sent"] for f in flows), "replies": sum(f["replies"] for f in flows),
        "lost": sum(f["lost"] for f in flows), "max_gap_ms": max(gaps, default=None),
        "p50_gap_ms": percentile(gaps, 0.5), "p99_gap_ms": percentile(gaps, 0.99),
        "rate_hz": first["rate_hz"], "duration_s": max(r["summary"]["duration_s"] for r in results.values()),
        "t0": t0, "bucket_ms": bucket_ms,
    }
    if any("mail_accepted" in f for f in flows):  # SMTP sessions (lab/smtp_session.py)
        summary["mails"] = sum(f.get("message_id") is not None for f in flows)
        summary["mails_accepted"] = sum(bool(f.get("mail_accepted")) for f in flows)
    return {"flows": flows, "summary": summary, "events": sorted(events.values(), key=lambda e: e["t"])}
