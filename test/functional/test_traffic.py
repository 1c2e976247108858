"""The traffic tool (lab/traffic.py) and its report (lab/report.py), on a lab.

    cli (10.99.1.2) -- front -- (10.99.1.1) rtr (10.99.2.1) -- back -- srv (10.99.2.2)

The server runs in srv, the client in cli, and the path is broken on rtr
(REJECT, DROP, conntrack flush) to see that the tool reports what happened.
All traffic stays between these lab hosts; every run is a few seconds long.
Needs root, iproute2, iptables and conntrack.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import Lab, netns
from lab import traffic as traffic_cli
from lab.report import write_report
from lab.wait import wait_for
from test.support.clients import run_client

REPO = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(REPO)}
SERVER = "10.99.2.2"
TCP, UDP = 2525, 5353
PREFIXES = []  # lab runs made here: none may be left at the end
STARTED = []  # every Popen started here: all must have ended at the end




def read(path):
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module", autouse=True)
def no_leftovers():
    yield
    assert [ns for ns in netns.list_netns() if any(ns.startswith(p) for p in PREFIXES)] == []
    assert [p.args for p in STARTED if p.poll() is None] == []


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    logs = tmp_path_factory.mktemp("traffic")
    with Lab() as lab:
        PREFIXES.append(lab.prefix)
        lab.add_switch("front")
        lab.add_switch("back")
        cli, rtr, srv = (lab.add_host(name) for name in ("cli", "rtr", "srv"))
        lab.connect(cli, "front", "eth0", "10.99.1.2/24")
        lab.connect(rtr, "front", "eth0", "10.99.1.1/24")
        lab.connect(rtr, "back", "eth1", "10.99.2.1/24")
        lab.connect(srv, "back", "eth0", SERVER + "/24")
        cli.add_route("default", via="10.99.1.1")
        srv.add_route("default", via="10.99.2.1")
        rtr.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        log = logs / "server.log"
        with open(log, "wb") as out:
            server = srv.popen([sys.executable, "-m", "lab.traffic", "serve", "--tcp", str(TCP),
                                "--udp", str(UDP), "--bind", SERVER, "--max-seconds", "600"],
                               env=ENV, stdout=out, stderr=subprocess.STDOUT)
        STARTED.append(server)
        try:
            wait_for(lambda: "ready" in read(log) or server.poll() is not None, 20, "the server")
            assert server.poll() is None, read(log)
            yield {"lab": lab, "cli": cli, "rtr": rtr, "srv": srv, "logs": logs}
            # SIGTERM the server itself (its pid inside srv), so that it prints its totals.
            inner_pid = read(log).split("pid=")[1].split()[0]
            srv.exec(["kill", "-TERM", inner_pid])
            server.wait(10)
            assert '"why": "signal"' in read(log), read(log)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(10)


def run_traffic(net, name, tcp=200, udp=50, duration=4.0, rate=5, during=None):
    """Run the client in cli for `duration` s; during(mark) runs once all flows are up."""
    logs = net["logs"]
    out, events, log = logs / (name + ".json"), logs / (name + ".events"), logs / (name + ".log")
    cmd = [sys.executable, "-m", "lab.traffic", "run", "--flows", str(tcp),
           "--target", "%s:%d" % (SERVER, TCP), "--udp-flows", str(udp),
           "--udp-target", "%s:%d" % (SERVER, UDP), "--rate", str(rate),
           "--duration", str(duration), "--out", str(out), "--events", str(events)]

    def mark(label):
        with open(events, "a") as f:
            f.write(json.dumps({"t": time.time(), "label": label}) + "\n")

    return run_client(net["cli"], cmd, log, out, duration + 30, STARTED,
                      during=during and (lambda _: during(mark)))


def flows(result, proto):
    return [f for f in result["flows"] if f["proto"] == proto]


def rtr_break(net, rules, seconds, mark, label):
    """Insert iptables FORWARD rules on rtr for `seconds`, then remove them."""
    rtr = net["rtr"]
    try:
        for rule in rules:
            rtr.exec(["iptables", "-I", "FORWARD", *rule])
        mark(label)
        time.sleep(seconds)
    finally:
        for rule in rules:
            rtr.exec(["iptables", "-D", "FORWARD", *rule], check=False)
        mark("path restored")


def test_all_flows_get_replies(net):
    result = run_traffic(net, "clean", tcp=200, udp=50, duration=4.0)
    s = result["summary"]
    assert (s["flows"], s["tcp"], s["udp"], s["started"]) == (250, 200, 50, 250)
    assert (s["lost_flows"], s["lost"], s["resets"], s["errors"]) == (0, 0, 0, 0), s
    assert s["replies"] == s["sent"] >= 250 * 4 * 5 * 0.8
    assert all(f["replies"] >= 10 for f in result["flows"])
    # 5 Hz: a reply every 200 ms; far below the 1.5 s of the gap case even on a busy machine
    assert s["max_gap_ms"] < 1000 and s["p50_gap_ms"] < 500, s
    assert 3.9 <= s["duration_s"] <= 4.1 and s["wall_s"] < 6.5
    assert len(result["flows"][0]["timeline"]) >= 40
    assert result["events"] == []


def test_a_reset_path_ends_every_tcp_flow_and_udp_recovers(net):
    rules = [["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
             ["-p", "udp", "-j", "REJECT", "--reject-with", "icmp-port-unreachable"]]

    def during(mark):
        time.sleep(1.0)
        rtr_break(net, rules, 1.0, mark, "rtr rejects")
    result = run_traffic(net, "reset", tcp=200, udp=50, duration=5.0, during=during)
    s = result["summary"]
    tcp, udp = flows(result, "tcp"), flows(result, "udp")
    # Every TCP flow sends within the 1 s window, gets a RST and ends for good.
    assert (s["lost_tcp"], s["resets"]) == (200, 200), s
    assert all(f["reset"] and f["lost_flow"] and f["ended_ms"] is not None for f in tcp)
    assert all("ConnectionResetError" in f["error"] for f in tcp)
    # UDP: requests lost in the window, then replies again.  rtr's kernel rate-limits
    # the ICMP errors it sends to one address (a burst of 6, then 1/s): only some
    # flows see one, so `errors` on UDP is a hint, not a count of rejected datagrams.
    assert s["lost_udp"] == 0, s
    assert all(f["lost"] >= 3 and f["max_gap_ms"] >= 900 for f in udp)
    assert 1 <= sum(f["errors"] for f in udp) < 50
    assert all("ConnectionRefusedError" in f["error"] for f in udp if f["errors"])
    assert [e["label"] for e in result["events"]] == ["rtr rejects", "path restored"]
    assert 0.5 < result["events"][0]["t_rel"] < result["events"][1]["t_rel"] < 5


def test_a_dropped_path_is_a_gap_that_flows_survive(net, tmp_path):
    def during(mark):
        time.sleep(1.0)
        rtr_break(net, [["-j", "DROP"]], 1.5, mark, "rtr drops")
    result = run_traffic(net, "gap", tcp=200, udp=50, duration=8.0, during=during)
    s = result["summary"]
    # TCP retransmits carry every session over the gap: nothing reset, nothing lost for good.
    assert (s["lost_flows"], s["resets"], s["errors"]) == (0, 0, 0), s
    assert s["max_gap_ms"] >= 1500 and s["p50_gap_ms"] >= 1500, s
    assert all(f["max_gap_ms"] >= 1450 for f in result["flows"])
    tcp = flows(result, "tcp")
    # Each TCP flow's request in the window was answered, late or within the timeout.
    assert all(f["replies"] == f["sent"] for f in tcp)
    assert sum(f["lost"] for f in flows(result, "udp")) >= 50 * 5

    paths = write_report(result, tmp_path / "report",
                         {"case": "gap", "title": "DROP on rtr for 1.5 s",
                          "events": [{"t": result["summary"]["t0"] + 7.5, "label": "extra"}]})
    report = json.loads(paths["report"].read_text())
    assert report["case"] == "gap" and report["max_gap_ms"] == s["max_gap_ms"]
    assert [e["label"] for e in report["events"]] == ["rtr drops", "path restored", "extra"]
    png = paths["timeline"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20000


def test_a_flushed_conntrack_table_under_drop_policy_stalls_tcp(net):
    """What a failover without state sync does: mid-stream TCP is NEW, and dropped."""
    rtr = net["rtr"]
    rules = [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
             ["-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"],
             ["-p", "udp", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"]]
    for rule in rules:
        rtr.exec(["iptables", "-A", "FORWARD", *rule])
    rtr.exec(["iptables", "-P", "FORWARD", "DROP"])

    def during(mark):
        time.sleep(1.0)
        rtr.exec(["conntrack", "-F"])
        mark("conntrack -F on rtr")
    try:
        result = run_traffic(net, "stall", tcp=100, udp=20, duration=6.0, during=during)
    finally:
        rtr.exec(["iptables", "-P", "FORWARD", "ACCEPT"])
        rtr.exec(["iptables", "-F", "FORWARD"])
    s = result["summary"]
    # No reset and no error: the TCP flows just stop getting replies (stalled).
    assert (s["lost_tcp"], s["lost_udp"], s["resets"]) == (100, 0, 0), s
    stalled = flows(result, "tcp")
    assert all(f["lost_flow"] and f["error"] is None and f["ended_ms"] is None for f in stalled)
    flush = result["events"][0]["t_rel"] * 1000
    assert all(f["last_reply_ms"] < flush + 300 for f in stalled)
    assert all(f["max_gap_ms"] >= 6000 - flush - 300 for f in stalled)


def test_sigterm_stops_the_client_early_with_its_output(net):
    def during(mark):
        pid = read(net["logs"] / "term.log").split("pid=")[1].split()[0]
        time.sleep(1.0)
        mark("SIGTERM")
        net["cli"].exec(["kill", "-TERM", pid])
    started = time.monotonic()
    result = run_traffic(net, "term", tcp=20, udp=5, duration=60.0, during=during)
    assert time.monotonic() - started < 10
    s = result["summary"]
    assert s["stopped_early"] and s["duration_s"] < 5 and s["lost_flows"] == 0, s
    assert [e["label"] for e in result["events"]] == ["SIGTERM"]


def test_report_of_a_made_up_run(tmp_path):
    timeline = [1, 0] * 20 + [0] * 10 + [1, 0] * 5
    result = {"summary": {"flows": 2, "tcp": 1, "udp": 1, "rate_hz": 5.0, "duration_s": 6.0,
                          "lost_flows": 1, "lost_tcp": 0, "lost_udp": 1, "resets": 0,
                          "max_gap_ms": 1200, "p50_gap_ms": 1200, "t0": 1000.0, "bucket_ms": 100},
              "flows": [{"id": 0, "proto": "tcp", "reset": False, "error": None, "max_gap_ms": 1200,
                         "lost_flow": False, "timeline": timeline},
                        {"id": 1, "proto": "udp", "reset": False, "error": None, "max_gap_ms": 1200,
                         "lost_flow": True, "timeline": timeline[:40] + [0] * 20}],
              "events": [{"t": 1004.0, "label": "crash fw1"}]}
    paths = write_report(result, tmp_path, {"fw": "fw1", "events": [{"t": 1005.0, "label": "takeover"}]})
    report = json.loads(paths["report"].read_text())
    assert report["fw"] == "fw1" and report["lost_flows"] == 1
    assert [(e["label"], e["t_rel"]) for e in report["events"]] == [("crash fw1", 4.0), ("takeover", 5.0)]
    assert report["lost_flow_list"] == [{"id": 1, "proto": "udp", "reset": False, "error": None,
                                         "max_gap_ms": 1200}]
    assert os.path.getsize(paths["timeline"]) > 10000


@pytest.mark.parametrize("args", [
    ["--flows", "5001", "--target", "10.99.2.2:1"],
    ["--flows", "10", "--target", "10.99.2.2:1", "--rate", "51"],
    ["--flows", "10", "--target", "10.99.2.2:1", "--duration", "3601"],
    ["--flows", "5000", "--target", "10.99.2.2:1", "--rate", "11"],  # 55,000 requests/s
    ["--udp-flows", "10"],  # no --udp-target
])
def test_run_refuses_unbounded_or_incomplete_runs(args, tmp_path, capsys):
    base = {"--duration": "1", "--rate": "5"}
    for key, value in base.items():
        if key not in args:
            args = [*args, key, value]
    with pytest.raises(SystemExit) as exit_:
        traffic_cli.main(["run", "--out", str(tmp_path / "x.json"), *args])
    assert exit_.value.code == 2
    assert not (tmp_path / "x.json").exists()
