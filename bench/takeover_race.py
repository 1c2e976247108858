#!/usr/bin/env python3
"""Takeover race bench (issue 3): does a VIP take traffic before the commit?

keepalived adds the VIPs and sends gratuitous ARPs *before* it forks the
notify hook, and the hook's `conntrackd -c` (commit the external cache to the
kernel) takes ~1 s per 100k entries here.  Packets of taken-over connections
that reach the new primary inside that window find no conntrack entry.  This
bench measures what that does to live DNAT/SNAT flows, per design:

  baseline  the formula as rendered, without its gate (tcp_loose=1, hook:
            -c -f -R -B)
  loose0    baseline + nf_conntrack_tcp_loose=0 + INVALID dropped in INPUT
            and FORWARD
  gate      raw-table gate: on a non-primary node raw PREROUTING jumps to
            HAFW_GATE (drops all but VRRP, lo, the sync link and the node's
            own addresses); the formula's hook, told to use table raw,
            removes the jump only after -c returned and re-adds it on
            backup/fault/stop
  ctgate    the formula as rendered: its gate in mangle PREROUTING drops only
            packets in state NEW or INVALID (no entry) on the VRRP
            interfaces: committed connections pass (docs/takeover.md)
  inject    baseline + DisableExternalCache on (states go straight into the
            backup's kernel table; the commit has nothing to do)

Lab (lab library, per-run prefix, torn down on success/failure/Ctrl-C):

  client 192.168.0.10 --[out]-- fw1 .41 / fw2 .42 (VIPs .40 .60 .88) --[in]-- server 192.168.1.60
                                 fw1 192.168.3.41 --[sync]-- fw2 192.168.3.42

The firewall files are the formula's own, rendered with tools.render for
fw-cent7i/fw-cent7j of pillar.example (addresses exist only inside the lab);
the bench changes advert_int (3 -> 1), the conntrackd log file, a scaled UDP
stream timeout and adds counting rules.  Flows (each end sends a line every
200 ms, independently, so either direction may arrive first at the new
primary): dnat-tcp client -> 192.168.0.60:25 (DNAT to the server),
snat-tcp server -> client:8080 (SNAT to 192.168.0.40), snat-udp server ->
client:5353 (SNAT).  The table is filled with EXTRA entries on fw1 (ctnetlink
batches), synced to fw2, then fw1's keepalived gets SIGTERM (or fw1's links
go down) and the flows are watched.

    .venv/bin/python bench/takeover_race.py [--designs baseline,loose0,gate,ctgate,inject]
        [--extra 100000] [--flows 20] [--failover stop|linkdown] [--repeat 1] [--append]
    .venv/bin/python bench/takeover_race.py --fill-rates      # compare fill methods
    .venv/bin/python bench/takeover_race.py --summary         # tables from the results file

The endpoints accept GARPs at once (neigh locktime 0) so that the traffic
moves when fw2 announces the VIPs: the worst case for the race.

Internal modes, run inside lab hosts: `agent SPEC_JSON`, `fill COUNT ...`.
Writes bench/results/takeover_race.json and prints a table.  Root only.
"""

import argparse
import json
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _util import hook_time  # noqa: E402

from lab.ctfill import extra_tuple, fill  # noqa: E402
from lab.diagnose import HOOK_LOG, conntrack_count, conntrackd_caches  # noqa: E402
from lab.wait import wait_for  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "takeover_race.json"
PY = sys.executable

CLIENT, SERVER = "192.168.0.10", "192.168.1.60"
VIP_SNAT, VIP_DNAT = "192.168.0.40", "192.168.0.60"
NODES = {"fw1": "fw-cent7i", "fw2": "fw-cent7j"}
ADDR = {"fw1": {"enp0s3": "192.168.0.41", "enp0s8": "192.168.1.41", "enp0s9": "192.168.3.41"},
        "fw2": {"enp0s3": "192.168.0.42", "enp0s8": "192.168.1.42", "enp0s9": "192.168.3.42"}}
HOOK = "/etc/conntrackd/primary-backup.sh"
CTD_LOG = "/var/log/conntrackd-bench.log"
KA_LOG = "/var/log/keepalived-bench.log"
GATE_CHAIN = "HAFW_GATE"
GATES = ("gate", "ctgate")  # the designs with a gate


# ===========================================================================
# agent: flows inside a lab host (stdlib only)
# ===========================================================================

def agent(spec):
    """Open/accept flows, send a line every `interval` s on each, record arrivals.

    spec: listen_tcp [[port, kind]], listen_udp [[port, kind]],
    connect_tcp/connect_udp [[dst, port, kind, n]], connect_at, end_at, interval.
    Prints one JSON document: a list of flows.
    """
    interval = spec["interval"]
    sel = selectors.DefaultSelector()
    flows = []

    def new_flow(kind, role, proto, sock, key, peer=None):
        f = {"kind": kind, "role": role, "proto": proto, "key": key, "rx": [], "tx": 0,
             "err": None, "err_t": None, "icmp": [], "sock": sock, "peer": peer, "buf": b""}
        flows.append(f)
        return f

    def fail(f, what):
        if f["err"] is None:
            f["err"], f["err_t"] = what, time.time()
        try:
            sel.unregister(f["sock"])
        except (KeyError, ValueError):
            pass
        f["sock"].close()

    for port, kind in spec.get("listen_tcp", []):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(512)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, ("listen", kind))
    udp_servers = {}
    for port, kind in spec.get("listen_udp", []):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_IP, 11, 1)  # IP_RECVERR: see ICMP errors on this socket
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
        udp_servers[s] = {"kind": kind, "peers": {}}
        sel.register(s, selectors.EVENT_READ, ("udpsrv", kind))

    while time.time() < spec["connect_at"]:
        time.sleep(0.02)
    for dst, port, kind, n in spec.get("connect_tcp", []):
        for _ in range(n):
            s = socket.create_connection((dst, port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            f = new_flow(kind, "connect", "tcp", s, s.getsockname()[1])
            sel.register(s, selectors.EVENT_READ, ("flow", f))
    for dst, port, kind, n in spec.get("connect_udp", []):
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect((dst, port))
            s.setblocking(False)
            f = new_flow(kind, "connect", "udp", s, s.getsockname()[1])
            sel.register(s, selectors.EVENT_READ, ("flow", f))

    def drain_errqueue(s):
        for _ in range(64):
            try:
                s.recvmsg(512, 512, socket.MSG_ERRQUEUE)
            except OSError:
                return

    next_tick = time.time()
    end_at = spec["end_at"]
    while True:
        now = time.time()
        if now >= end_at:
            break
        if now >= next_tick:
            next_tick += interval
            for f in flows:
                if f["err"] is not None:
                    continue
                msg = b"%d %.3f\n" % (f["tx"], now)
                try:
                    if f["proto"] == "tcp":
                        f["sock"].send(msg)
                    elif f["peer"] is None:
                        f["sock"].send(msg)
                    else:
                        f["sock"].sendto(msg, f["peer"])
                    f["tx"] += 1
                except BlockingIOError:
                    pass
                except ConnectionRefusedError:
                    f["icmp"].append(round(time.time(), 3))
                except (ConnectionResetError, BrokenPipeError) as e:
                    fail(f, "reset" if isinstance(e, ConnectionResetError) else "epipe")
                except OSError as e:
                    if f["proto"] == "udp":
                        f["icmp"].append(round(time.time(), 3))
                    else:
                        fail(f, "oserror:%s" % e.errno)
        timeout = max(0.0, min(next_tick, end_at) - time.time())
        for key, _ in sel.select(timeout):
            tag, data = key.data
            s = key.fileobj
            if tag == "listen":
                for _ in range(64):
                    try:
                        c, addr = s.accept()
                    except BlockingIOError:
                        break
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    c.setblocking(False)
                    f = new_flow(data, "accept", "tcp", c, addr[1])
                    sel.register(c, selectors.EVENT_READ, ("flow", f))
            elif tag == "udpsrv":
                srv = udp_servers[s]
                for _ in range(256):
                    try:
                        pkt, addr = s.recvfrom(2048)
                    except BlockingIOError:
                        break
                    except ConnectionRefusedError:
                        # An ICMP error for a packet this socket sent: which peer?
                        t = round(time.time(), 3)
                        # Dequeue the error (IP_RECVERR); it is counted per socket.
                        drain_errqueue(s)
                        srv.setdefault("icmp", []).append(t)
                        continue
                    except OSError:
                        drain_errqueue(s)
                        continue
                    f = srv["peers"].get(addr)
                    if f is None:
                        f = new_flow(srv["kind"], "accept", "udp", s, addr[1], peer=addr)
                        srv["peers"][addr] = f
                    f["rx"].append(round(time.time(), 3))
            else:
                f = data
                if f["err"] is not None:
                    continue
                try:
                    if f["proto"] == "tcp":
                        chunk = s.recv(65536)
                        if not chunk:
                            fail(f, "eof")
                            continue
                        t = round(time.time(), 3)
                        f["rx"].extend([t] * chunk.count(b"\n"))
                    else:
                        for _ in range(64):
                            try:
                                s.recv(2048)
                            except BlockingIOError:
                                break
                            f["rx"].append(round(time.time(), 3))
                except BlockingIOError:
                    pass
                except ConnectionRefusedError:
                    f["icmp"].append(round(time.time(), 3))
                except ConnectionResetError:
                    fail(f, "reset")
                except OSError as e:
                    if f["proto"] == "udp":
                        f["icmp"].append(round(time.time(), 3))
                    else:
                        fail(f, "oserror:%s" % e.errno)
    # ICMP errors seen by the unconnected UDP server sockets: attribute them
    # to the socket's flows as a whole (reported per kind).
    out = []
    for srv in udp_servers.values():
        if srv.get("icmp"):
            out.append({"kind": srv["kind"], "role": "accept", "proto": "udp", "key": None,
                        "rx": [], "tx": 0, "err": None, "err_t": None, "icmp": srv["icmp"],
                        "aggregate": True})
    for f in flows:
        out.append({k: v for k, v in f.items() if k not in ("sock", "buf", "peer")})
    json.dump(out, sys.stdout)
    sys.stdout.flush()


# ===========================================================================
# orchestration (runs on the machine; imports the lab library)
# ===========================================================================

def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def render_formula(workdir):
    """Render the formula's files for both pillar.example firewall nodes."""
    out = {}
    for fw, node in NODES.items():
        d = Path(workdir) / node
        subprocess.run([PY, "-m", "tools.render", "--node", node, "--out", str(d)],
                       cwd=REPO, check=True, capture_output=True, text=True, timeout=120)
        out[fw] = {p: (d / p.lstrip("/")).read_text() for p in (
            "/etc/conntrackd/conntrackd.conf", "/etc/conntrackd/primary-backup.sh",
            "/etc/keepalived/keepalived.conf", "/etc/iptables/rules.v4")}
    return out


# --- the designs, from the formula's rendered hook and ruleset ---------------

def design_hook(text, design):
    """The rendered hook with the design's gate: the formula's own (ctgate), the
    same steps on table raw (gate), or none (the chain is never jumped to)."""
    chain, table = "GATE_CHAIN_DEFAULT='%s'\n" % GATE_CHAIN, "GATE_TABLE_DEFAULT='mangle'\n"
    if chain not in text or table not in text:
        raise RuntimeError("the rendered hook has no gate settings to change")
    if design == "gate":
        return text.replace(table, "GATE_TABLE_DEFAULT='raw'\n")
    return text if design == "ctgate" else text.replace(chain, "GATE_CHAIN_DEFAULT=''\n")


def raw_gate(fw):
    """The gate chain in table raw (no jump: the hook owns it); it drops every packet
    that is not VRRP, on lo or the sync link, or to the node's own addresses."""
    own = ADDR[fw]
    lines = ["*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":%s - [0:0]" % GATE_CHAIN,
             "-A %s -i lo -j RETURN" % GATE_CHAIN,
             "-A %s -i enp0s9 -m comment --comment \"hafw: conntrackd sync link\" -j RETURN" % GATE_CHAIN,
             "-A %s -p vrrp -m comment --comment \"hafw: VRRP\" -j RETURN" % GATE_CHAIN]
    for ifname in ("enp0s3", "enp0s8"):
        lines.append("-A %s -d %s/32 -i %s -m comment --comment \"hafw: own address\" -j RETURN"
                     % (GATE_CHAIN, own[ifname], ifname))
    lines += ["-A %s -m comment --comment \"hafw: closed until this node's commit is done\" -j DROP"
              % GATE_CHAIN, "COMMIT"]
    return "\n".join(lines) + "\n"


COUNT_RULES = [  # appended to *filter on the firewalls: counters only (no target)
    "-A OUTPUT -p tcp -m tcp --tcp-flags RST RST -m comment --comment bench-rst-out",
    "-A OUTPUT -p icmp -m icmp --icmp-type 3 -m comment --comment bench-icmp-unreach-out",
]
INVALID_RULES = [
    "-I INPUT 1 -m conntrack --ctstate INVALID -m comment --comment bench-invalid-in -j DROP",
    "-I FORWARD 1 -m conntrack --ctstate INVALID -m comment --comment bench-invalid-fwd -j DROP",
]


def ruleset(rules_v4, fw, design):
    """rules.v4 as rendered, plus the design's rules and the bench's counters."""
    head, sep, tail = rules_v4.rpartition("COMMIT")  # the *filter table's COMMIT
    extra = list(COUNT_RULES)
    text = head + "\n".join(extra) + "\n" + sep + tail
    if design == "gate":  # ctgate: the formula's own mangle gate is in rules_v4 already
        text += raw_gate(fw)
    return text


def conntrackd_conf(text, design, hash_limit):
    text = text.replace("\tLogFile off", "\tLogFile %s" % CTD_LOG)
    if hash_limit:
        text = re.sub(r"\tHashLimit \d+", "\tHashLimit %d" % hash_limit, text)
    text = text.replace("\tSyslog on", "\tSyslog off")
    if design == "inject":
        text = text.replace("\t\tStartupResync on\n", "\t\tStartupResync on\n\t\tDisableExternalCache on\n")
    return text


def keepalived_conf(text, advert_int):
    return re.sub(r"advert_int \d+", "advert_int %d" % advert_int, text)


# --- host helpers -------------------------------------------------------------

def put(host, path, text, mode="0644"):
    host.exec(["mkdir", "-p", os.path.dirname(path)])
    host.exec(["tee", path], input=text)
    host.exec(["chmod", mode, path])


def sh(host, cmd, timeout=30, check=True):
    return host.exec(["sh", "-c", cmd], timeout=timeout, check=check).stdout


def has_vip(host):
    return VIP_SNAT in sh(host, "ip -4 -br addr show dev enp0s3", check=False)


def flow_entries(host):
    """Entries of the bench's flows in a kernel table: {kind: (count, [timeouts])}."""
    out = sh(host, "conntrack -L 2>/dev/null | grep -e 'dport=25 ' -e 'dport=8080 ' -e 'dport=5353 '",
             check=False)
    res = {}
    for line in out.splitlines():
        kind = ("dnat-tcp" if "dport=25 " in line else "snat-tcp" if "dport=8080 " in line
                else "snat-udp")
        n, timeouts = res.get(kind, (0, []))
        res[kind] = (n + 1, timeouts + [int(line.split()[2])])
    return {k: {"count": n, "timeout_min": min(t), "timeout_max": max(t)} for k, (n, t) in res.items()}


def counters(host):
    """{comment or chain/target: packets} of the bench's counting rules, gate and policies."""
    res = {}
    for table in ("filter", "raw", "mangle"):
        out = sh(host, "iptables -w 5 -t %s -L -v -n -x" % table, check=False)
        chain = None
        for line in out.splitlines():
            m = re.match(r"Chain (\S+) \(policy (\S+) (\d+) packets", line)
            if m:
                chain = m.group(1)
                res["%s/%s/policy-%s" % (table, chain, m.group(2))] = int(m.group(3))
                continue
            m = re.match(r"Chain (\S+)", line)
            if m:
                chain = m.group(1)
                continue
            parts = line.split()
            if len(parts) > 2 and parts[0].isdigit():
                c = re.search(r"/\* (.*?) \*/", line)
                if c and (c.group(1).startswith("bench-") or "closed until" in c.group(1)):
                    name = "gate-drop" if "closed until" in c.group(1) else c.group(1)
                    res[name] = res.get(name, 0) + int(parts[0])
                elif chain == "FORWARD" and parts[2] == "LOG":
                    res["forward-policy-drop"] = int(parts[0])
    stats = sh(host, "conntrack -S 2>/dev/null", check=False)
    for key in ("invalid", "insert_failed", "drop", "early_drop", "clash_resolve"):
        res["ct-" + key] = sum(int(x) for x in re.findall(r"\b%s=(\d+)" % key, stats))
    return res


def parse_log_times(text):
    """[(epoch_s, line)] of hook log lines."""
    out = []
    for line in text.splitlines():
        m = re.match(r"(\S+T\S+?)([+-]\d{4}) ", line)
        if not m:
            continue
        t = hook_time(m.group(1), m.group(2))
        if t is not None:
            out.append((t, line))
    return out


# --- one trial -----------------------------------------------------------------

def build_lab(lab, files, design, args):
    for sw in ("out", "in", "sync"):
        lab.add_switch(sw)
    client = lab.add_host("client")
    lab.connect(client, "out", "eth0", CLIENT + "/24")
    server = lab.add_host("server")
    lab.connect(server, "in", "eth0", SERVER + "/24")
    server.add_route("default", via="192.168.1.40")
    fws = {}
    for fw in ("fw1", "fw2"):
        h = lab.add_host(fw)
        for ifname, sw in (("enp0s3", "out"), ("enp0s8", "in"), ("enp0s9", "sync")):
            lab.connect(h, sw, ifname, ADDR[fw][ifname] + "/24")
        fws[fw] = h
    # endpoints: count RSTs and ICMP errors received, and un-NATed leaks
    sh(client, "iptables -w 5 -A INPUT -s 192.168.1.0/24 -m comment --comment bench-leak -j DROP;"
               "iptables -w 5 -A INPUT -p tcp --tcp-flags RST RST -m comment --comment bench-rst-in;"
               "iptables -w 5 -A INPUT -p icmp -m comment --comment bench-icmp-in")
    sh(server, "iptables -w 5 -A INPUT -p tcp --tcp-flags RST RST -m comment --comment bench-rst-in;"
               "iptables -w 5 -A INPUT -p icmp -m comment --comment bench-icmp-in")
    # Accept every gratuitous ARP at once (locktime 0): the traffic moves to
    # the new primary as soon as it sends its GARPs, the worst case for the
    # race (with the default 1 s, a GARP that follows a recent ARP update is
    # ignored and the move happens at a random later time).
    for h in (client, server):
        sh(h, "sysctl -qw net.ipv4.neigh.eth0.locktime=0")
    for fw, h in fws.items():
        f = files[fw]
        hook = f["/etc/conntrackd/primary-backup.sh"]
        hook = design_hook(hook, design)
        put(h, HOOK, hook, "0755")
        put(h, "/etc/conntrackd/conntrackd.conf", conntrackd_conf(f["/etc/conntrackd/conntrackd.conf"], design,
                                                                   args.hash_limit))
        put(h, "/etc/keepalived/keepalived.conf",
            keepalived_conf(f["/etc/keepalived/keepalived.conf"], args.advert_int))
        put(h, "/etc/iptables/rules.v4", ruleset(f["/etc/iptables/rules.v4"], fw, design))
        sysctls = {"net.ipv4.ip_forward": 1,
                   # scaled down from 120 s so that a bounded run shows what
                   # happens to a long-lived UDP flow's state on the backup
                   "net.netfilter.nf_conntrack_udp_timeout_stream": args.udp_stream_timeout}
        if design == "loose0":
            sysctls["net.netfilter.nf_conntrack_tcp_loose"] = 0
        for k, v in sysctls.items():
            sh(h, "sysctl -qw %s=%s" % (k, v))
        sh(h, "iptables-restore < /etc/iptables/rules.v4")
        if design == "loose0":
            for rule in INVALID_RULES:
                sh(h, "iptables -w 5 " + rule)
        sh(h, "mkdir -p /run/conntrackd /run/keepalived /var/log")
        if design in GATES:  # as the firewall state would after loading the rules
            sh(h, HOOK + " gate-sync >/dev/null 2>&1")
        sh(h, "conntrackd -C /etc/conntrackd/conntrackd.conf -d >/dev/null 2>&1")
    for fw, h in fws.items():
        wait_for(lambda h=h: conntrackd_caches(h)[0] >= 0, 10, "conntrackd on " + fw)
    return client, server, fws


def start_keepalived(h):
    sh(h, "keepalived -n -l -D -G -f /etc/keepalived/keepalived.conf -p /run/keepalived.pid "
          "-r /run/keepalived_vrrp.pid >%s 2>&1 </dev/null &" % KA_LOG)


def watch_move(client, server, fw2, t_fail, timeout=12.0):
    """When did fw2 get the VIP, and the client's/server's ARP entries move to fw2?"""
    macs = {ifn: sh(fw2, "cat /sys/class/net/%s/address" % ifn).strip() for ifn in ("enp0s3", "enp0s8")}
    want = {"vip_up_s": lambda: has_vip(fw2),
            "client_arp_s": lambda: macs["enp0s3"] in sh(client, "ip neigh show %s" % VIP_DNAT, check=False),
            "server_arp_s": lambda: macs["enp0s8"] in sh(server, "ip neigh show 192.168.1.40", check=False)}
    got = {k: None for k in want}
    for _ in range(int(timeout / 0.02)):
        for k, fn in want.items():
            if got[k] is None and fn():
                got[k] = round(time.time() - t_fail, 3)
        if all(v is not None for v in got.values()) or time.time() - t_fail > timeout:
            break
        time.sleep(0.02)
    return got


def hook_log(h):
    return h.exec(["cat", HOOK_LOG], check=False).stdout


def trial(files, design, args, rep):
    from lab import Lab
    res = {"design": design, "rep": rep, "extra": args.extra, "flows_per_kind": args.flows,
           "failover": args.failover, "pre_s": args.pre, "post_s": args.post,
           "udp_stream_timeout": args.udp_stream_timeout, "advert_int": args.advert_int}
    t_start = time.monotonic()
    with Lab() as lab:
        res["lab_prefix"] = lab.prefix
        client, server, fws = build_lab(lab, files, design, args)
        fw1, fw2 = fws["fw1"], fws["fw2"]
        start_keepalived(fw1)
        wait_for(lambda: has_vip(fw1), 15, "fw1 MASTER (VIPs)")
        start_keepalived(fw2)
        wait_for(lambda: "backup: done" in hook_log(fw2), 15, "fw2 BACKUP hook done")
        # StartupResync / notify_backup settle
        time.sleep(1.0)

        # --- fill the table on fw1, wait until fw2 holds the states ---
        if args.extra:
            t0 = time.time()
            out = fw1.exec([PY, str(Path(__file__).resolve()), "fill", str(args.extra),
                            "--rate", str(args.fill_rate)], timeout=120).stdout
            res["fill"] = json.loads(out)
            want = args.extra

            def synced():
                if design == "inject":
                    return conntrack_count(fw2) >= want
                return conntrackd_caches(fw2)[1] >= want
            try:
                wait_for(synced, args.sync_timeout, "fw2 synced %d" % want, interval=0.5)
                res["sync_s"] = round(time.time() - t0, 2)
            except TimeoutError:
                res["sync_s"] = None
            res["fw2_external_after_fill"] = conntrackd_caches(fw2)[1]
            res["fw2_kernel_after_fill"] = conntrack_count(fw2)
            res["fw1_kernel_after_fill"] = conntrack_count(fw1)
            log("  %s: filled %d on fw1 in %.1fs (%s/s), fw2 ext=%d kern=%d, sync %ss" % (
                design, args.extra, res["fill"]["seconds"], res["fill"]["rate"],
                res["fw2_external_after_fill"], res["fw2_kernel_after_fill"], res["sync_s"]))

        # --- flows ---
        now = time.time()
        connect_at = now + 1.5
        t_fail_plan = connect_at + args.pre
        end_at = t_fail_plan + args.post
        n = args.flows
        base = {"interval": 0.2, "connect_at": connect_at, "end_at": end_at}
        cspec = dict(base, listen_tcp=[[8080, "snat-tcp"]], listen_udp=[[5353, "snat-udp"]],
                     connect_tcp=[[VIP_DNAT, 25, "dnat-tcp", n]])
        sspec = dict(base, listen_tcp=[[25, "dnat-tcp"]],
                     connect_tcp=[[CLIENT, 8080, "snat-tcp", n]],
                     connect_udp=[[CLIENT, 5353, "snat-udp", n]])
        script = str(Path(__file__).resolve())
        pc = client.popen([PY, script, "agent", json.dumps(cspec)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
        ps = server.popen([PY, script, "agent", json.dumps(sspec)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(max(0, t_fail_plan - 2.0 - time.time()))
            res["fw2_external_before"] = conntrackd_caches(fw2)[1]
            res["fw2_kernel_before"] = conntrack_count(fw2)
            res["fw2_flow_entries_before"] = flow_entries(fw2)
            res["counters_before"] = {"fw2": counters(fw2), "client": counters(client),
                                      "server": counters(server)}
            time.sleep(max(0, t_fail_plan - time.time()))

            # --- failover ---
            t_fail = time.time()
            if args.failover == "stop":
                pid = sh(fw1, "cat /run/keepalived.pid").strip()
                sh(fw1, "kill -TERM %d" % int(pid))
            else:
                for ifname in ("enp0s3", "enp0s8", "enp0s9"):
                    fw1.link_down(ifname)
            res["t_fail"] = t_fail
            res.update(watch_move(client, server, fw2, t_fail))
            try:
                wait_for(lambda: "primary: done" in hook_log(fw2), 30, "fw2 primary hook done")
            except TimeoutError:
                pass
            cout, cerr = pc.communicate(timeout=max(5, end_at - time.time() + 20))
            sout, serr = ps.communicate(timeout=20)
        finally:
            for p in (pc, ps):
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
        if pc.returncode or ps.returncode:
            raise RuntimeError("agent failed: client rc %s %s / server rc %s %s"
                               % (pc.returncode, cerr[-800:], ps.returncode, serr[-800:]))
        res["counters_after"] = {"fw2": counters(fw2), "client": counters(client),
                                 "server": counters(server)}
        res["fw2_kernel_after"] = conntrack_count(fw2)
        hl = hook_log(fw2)
        res["fw2_hook_log"] = [line for line in hl.splitlines() if "primary" in line or "gate" in line][-12:]
        res["fw2_ctd_log"] = [line for line in fw2.exec(["cat", CTD_LOG], check=False).stdout.splitlines()
                              if re.search(r"commit|can't|inject|error|ERROR", line)][-12:]
        res["hook_times"] = hook_times(hl, t_fail)
        res["flows"] = analyse(json.loads(cout), json.loads(sout), t_fail, end_at)
    res["trial_s"] = round(time.monotonic() - t_start, 1)
    return res


def hook_times(text, t_fail):
    """Offsets (s after the failover) of the primary hook's milestones on fw2."""
    out = {}
    for t, line in parse_log_times(text):
        if t < t_fail - 0.5 or "primary" not in line:
            continue
        m = re.search(r"step=(\S+) rc=(\d+) ms=(\d+)", line)
        if "primary: begin" in line:
            out["begin"] = round(t - t_fail, 3)
        elif m:
            out[m.group(1)] = {"done": round(t - t_fail, 3), "rc": int(m.group(2)), "ms": int(m.group(3))}
        elif "primary: done" in line:
            out["done"] = round(t - t_fail, 3)
    return out


def analyse(cflows, sflows, t_fail, end_at):
    """Per kind: flows reset/dead/remapped, ICMP errors, gap (s) of the survivors.

    Flows are paired by the connector's local port (= the port the accepting
    end sees: SNAT and DNAT keep it when it is free).  An accepting end whose
    first packet came after the failover is a *new NAT mapping* of an
    existing flow ("remap": the SNAT source port changed): for UDP, the old
    mapping is then dead for the peer.
    """
    by = {}
    for flows in (cflows, sflows):
        for f in flows:
            k = by.setdefault(f["kind"], {"ends": {}, "icmp": 0})
            k["icmp"] += len(f["icmp"])
            if not f.get("aggregate"):
                k["ends"].setdefault(f["key"], {})[f["role"]] = f
    out = {}
    for kind, k in sorted(by.items()):
        n = reset = dead = remap = 0
        gaps = []
        errs = {}
        for ends in k["ends"].values():
            conn, acc = ends.get("connect"), ends.get("accept")
            if conn is None:
                if acc and acc["rx"] and acc["rx"][0] >= t_fail - 0.5:
                    remap += 1
                continue
            n += 1
            both = [f for f in (conn, acc) if f]
            bad = [f for f in both if f["err"]]
            for f in bad:
                errs[f["err"]] = errs.get(f["err"], 0) + 1
            alive = len(both) == 2 and all(f["rx"] and f["rx"][-1] > end_at - 2.0 for f in both)
            if bad:
                reset += 1
            elif not alive:
                dead += 1
            else:
                g = 0.0
                for f in both:
                    prev = t_fail - 1.0
                    for t in f["rx"]:
                        if t >= prev:
                            g = max(g, t - prev)
                            prev = t
                gaps.append(g)
        out[kind] = {"flows": n, "reset": reset, "dead": dead, "remap": remap, "errors": errs,
                     "icmp_errors": k["icmp"],
                     "gap_max_s": round(max(gaps), 2) if gaps else None,
                     "gap_median_s": round(statistics.median(gaps), 2) if gaps else None}
    return out


# --- fill-rate comparison --------------------------------------------------------

def conntrack_args(i):
    """conntrack(8) arguments of lab.ctfill's i-th entry, for the tools compared with it."""
    src, dst, sport, dport = extra_tuple(i)
    return ("-p tcp -s %s -d %s --sport %d --dport %d --state ESTABLISHED -u SEEN_REPLY,ASSURED -t 3600"
            % (src, dst, sport, dport))


def fill_rates(args):
    from lab import Lab
    out = {}
    with Lab() as lab:
        h = lab.add_host("ctfill")
        n1 = 300
        lines = ["conntrack -I %s >/dev/null 2>&1" % conntrack_args(i) for i in range(n1)]
        t = time.time()
        sh(h, "\n".join(lines), timeout=120)
        out["conntrack -I (one process per entry)"] = round(n1 / (time.time() - t))
        sh(h, "conntrack -F >/dev/null 2>&1")
        n2 = 20000
        lines = ["-I " + conntrack_args(i) for i in range(n2)]
        path = "/tmp/hafw-bench-load.%d" % os.getpid()
        put(h, path, "\n".join(lines) + "\n")
        t = time.time()
        sh(h, "conntrack -R %s >/dev/null 2>&1" % path, timeout=120, check=False)
        dt = time.time() - t
        got = conntrack_count(h)
        sh(h, "rm -f %s" % path)
        out["conntrack -R FILE (batch load, conntrack-tools 1.4.7)"] = round(got / dt) if got > 0 else 0
        out["conntrack -R entries created of %d" % n2] = got
        sh(h, "conntrack -F >/dev/null 2>&1")
        r = json.loads(h.exec([PY, str(Path(__file__).resolve()), "fill", str(args.extra)],
                              timeout=120).stdout)
        out["ctnetlink batches of 256 (this script)"] = r["rate"]
        out["ctnetlink entries created of %d" % args.extra] = conntrack_count(h)
        out["ctnetlink errors"] = r["errors"]
    return out


# --- report ------------------------------------------------------------------------

def fmt(v):
    return "%.2f" % v if v is not None else "-"


def max_or_none(*vals):
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def table(results):
    rows = []
    hdr = ("design", "rep", "kind", "flows", "reset", "dead", "remap", "icmp", "gap max", "gap med",
           "fw RST", "fw ICMP", "leak", "commit ms", "VIP up", "ARP moved", "commit/gate done")
    for r in results:
        if "error" in r:
            rows.append((r["design"], str(r["rep"]), "ERROR: " + r["error"][:80]) + ("",) * 14)
            continue
        def d(host, key, r=r):
            return r["counters_after"][host].get(key, 0) - r["counters_before"][host].get(key, 0)
        ht = r["hook_times"]
        commit = ht.get("commit", {})
        opened = ht.get("gate-open", {}).get("done") or commit.get("done")
        for i, (kind, k) in enumerate(r["flows"].items()):
            first = i == 0
            rows.append((
                r["design"] if first else "", str(r["rep"]) if first else "", kind, str(k["flows"]),
                str(k["reset"]), str(k["dead"]), str(k["remap"]), str(k["icmp_errors"]),
                "%.2f" % k["gap_max_s"] if k["gap_max_s"] is not None else "-",
                "%.2f" % k["gap_median_s"] if k["gap_median_s"] is not None else "-",
                str(d("fw2", "bench-rst-out")) if first else "",
                str(d("fw2", "bench-icmp-unreach-out")) if first else "",
                str(d("client", "bench-leak")) if first else "",
                str(commit.get("ms", "-")) if first else "",
                fmt(r.get("vip_up_s")) if first else "",
                fmt(max_or_none(r.get("client_arp_s"), r.get("server_arp_s"))) if first else "",
                fmt(opened) if first else ""))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(hdr, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def summary(results):
    """One line per (extra, failover, UDP timeout, design): sums over the runs."""
    groups = {}
    for r in results:
        if "flows" not in r:
            continue
        key = (r["extra"], r["failover"], r.get("udp_stream_timeout", 10), r["design"])
        groups.setdefault(key, []).append(r)
    hdr = ("extra", "failover", "udp-t", "design", "runs", "TCP reset", "UDP broken", "ICMP", "RST rx",
           "TCP gap med", "TCP gap max", "UDP gap med", "commit ms", "exposed s")
    rows = []
    for (extra, failover, udpt, design), rs in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], kv[0][2], DESIGN_ORDER.index(kv[0][3]) if kv[0][3] in DESIGN_ORDER else 99)):
        tcp = [r["flows"][k] for r in rs for k in ("dnat-tcp", "snat-tcp")]
        udp = [r["flows"]["snat-udp"] for r in rs]

        def d(r, host, key):
            return r["counters_after"][host].get(key, 0) - r["counters_before"][host].get(key, 0)
        rst = sum(d(r, h, "bench-rst-in") for r in rs for h in ("client", "server"))
        icmp = sum(k["icmp_errors"] for k in udp)
        tgap = [k["gap_median_s"] for k in tcp if k["gap_median_s"] is not None]
        tmax = [k["gap_max_s"] for k in tcp if k["gap_max_s"] is not None]
        ugap = [k["gap_median_s"] for k in udp if k["gap_median_s"] is not None]
        commits = [r["hook_times"].get("commit", {}).get("ms") for r in rs]
        exposed = []
        for r in rs:
            ht = r["hook_times"]
            done = ht.get("gate-open", ht.get("commit", {})).get("done")
            moved = max_or_none(r.get("client_arp_s"), r.get("server_arp_s"))
            if done is not None and moved is not None:
                exposed.append(max(0.0, done - moved))
        rows.append((str(extra), failover, str(udpt), design, str(len(rs)),
                     "%d/%d" % (sum(k["reset"] + k["dead"] for k in tcp), sum(k["flows"] for k in tcp)),
                     "%d/%d" % (sum(k["reset"] + k["dead"] for k in udp), sum(k["flows"] for k in udp)),
                     str(icmp), str(rst),
                     fmt(statistics.median(tgap)) if tgap else "-", fmt(max(tmax)) if tmax else "-",
                     fmt(statistics.median(ugap)) if ugap else "-",
                     "%d" % statistics.mean(c for c in commits if c is not None) if any(commits) else "-",
                     fmt(statistics.mean(exposed)) if exposed else "-"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)] if rows else []
    lines = ["  ".join(h.ljust(w) for h, w in zip(hdr, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


DESIGN_ORDER = ["baseline", "loose0", "gate", "ctgate", "inject"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "agent":
        agent(json.loads(argv[1]))
        return 0
    if argv and argv[0] == "fill":
        p = argparse.ArgumentParser(prog="takeover_race.py fill")
        p.add_argument("count", type=int)
        p.add_argument("--rate", type=float, default=0.0)
        p.add_argument("--batch", type=int, default=256)
        a = p.parse_args(argv[1:])
        print(json.dumps(fill(a.count, a.batch, a.rate)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--designs", default="baseline,loose0,gate,ctgate,inject")
    p.add_argument("--extra", type=int, default=100000, help="extra entries in the table")
    p.add_argument("--flows", type=int, default=20, help="flows per kind (dnat-tcp, snat-tcp, snat-udp)")
    p.add_argument("--failover", choices=("stop", "linkdown"), default="stop")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--pre", type=float, default=13.0, help="s of traffic before the failover")
    p.add_argument("--post", type=float, default=14.0, help="s of traffic after the failover")
    p.add_argument("--advert-int", type=int, default=1)
    p.add_argument("--udp-stream-timeout", type=int, default=10)
    p.add_argument("--fill-rate", type=float, default=25000.0, help="entries/s (0: unlimited)")
    p.add_argument("--sync-timeout", type=float, default=45.0)
    p.add_argument("--hash-limit", type=int, default=0,
                   help="conntrackd HashLimit (0: as rendered, 131072; raise it for --extra > 120000)")
    p.add_argument("--fill-rates", action="store_true", help="only compare ways to fill the table")
    p.add_argument("--summary", action="store_true", help="only print the tables of the results file")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--append", action="store_true", help="add to the results file's trials")
    args = p.parse_args(argv)
    if args.pre + args.post > 60:
        p.error("pre + post must be <= 60 s (bounded runs)")
    if os.geteuid() != 0:
        p.error("needs root (namespaces)")
    sys.path.insert(0, str(REPO))
    out_path = Path(args.out)
    doc = {}
    if out_path.exists():
        try:
            doc = json.loads(out_path.read_text())
        except ValueError:
            doc = {}
    if args.summary:
        print(table(doc.get("trials", [])))
        print()
        print(summary(doc.get("trials", [])))
        return 0
    if args.fill_rates:
        doc["fill_rates"] = fill_rates(args)
        print(json.dumps(doc["fill_rates"], indent=1))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(doc, indent=1) + "\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="hafw-bench-") as tmp:
        log("rendering the formula for %s" % ", ".join(NODES.values()))
        files = render_formula(tmp)
    results = doc.get("trials", []) if args.append else []
    for rep in range(1, args.repeat + 1):
        for design in args.designs.split(","):
            log("trial %s #%d (extra=%d, flows=%d/kind, failover=%s)"
                % (design, rep, args.extra, args.flows, args.failover))
            try:
                r = trial(files, design, args, rep)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - record and go on with the next design
                r = {"design": design, "rep": rep, "error": "%s: %s" % (type(e).__name__, e)}
                log("  FAILED: %s" % r["error"])
            results.append(r)
            if "flows" in r:
                log("  " + json.dumps(r["flows"]))
    doc["trials"] = results
    doc["generated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=1) + "\n")
    print(table(results))
    print()
    print(summary(results))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # teardown on SIGTERM too
    sys.exit(main())
