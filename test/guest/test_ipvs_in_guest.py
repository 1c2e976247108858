"""
The ipvs execution module against a real kernel's IPVS. Runs inside the qemu
guest (this machine's kernel has no IPVS): test/functional/test_ipvs_guest.py
boots it and runs this file there; it is never collected on the host.

A load-balancer pair in four network namespaces (``hf<hex>-ipvs``): the
master LB (VIP 10.77.1.60 and 2001:db8:1::60, LVS NAT, master sync daemon on
its sync link), the backup LB2 (the same services, backup sync daemon), a
client namespace and a real-server namespace (one echo server, several
addresses). The client opens connections of each kind a failover treats
differently: ones that talked (synced to the backup), idle ones (2 packets:
below sync_threshold, never synced), a handshake left in SYN_RECV (its real
server does not exist), a closed one (TIME_WAIT), a persistent one (a
template), an IPv6 one and a UDP one.

The module's functions run through a real Salt loader (the repository's
_modules and _utils, pillar.example as the pillar, lb-cent7g and lb-cent7h
its nodes). They run in this process, moved into the namespace with
setns(2): importing Salt costs ~20 s under the guest's emulation, so one
process instead of one per call. publish.publish is a stand-in module that
runs the peer's function in the peer's namespace, through the peer's own
loader. Results are compared with ipvsadm's own listings of the same
tables, and copied to $HAFW_GUEST_OUT/ipvs for the docs.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PREFIX = f"hf{secrets.token_hex(2)}-"
LB, LB2, CL, RS = (PREFIX + s for s in ("ipvs", "ipvs2", "cl", "rs"))
NODES = {"lb-cent7g": LB, "lb-cent7h": LB2}  # pillar.example's lb-pair
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)

RULES = """\
-A -t 10.77.1.60:25 -s lc
-a -t 10.77.1.60:25 -r 10.77.2.61:25 -m -w 1
-a -t 10.77.1.60:25 -r 10.77.2.62:25 -m -w 0
-A -t 10.77.1.60:26 -s rr
-a -t 10.77.1.60:26 -r 10.77.2.63:26 -m -w 1
-A -t 10.77.1.60:80 -s rr -p 300
-a -t 10.77.1.60:80 -r 10.77.2.61:80 -m -w 2
-A -u 10.77.1.60:53 -s wlc
-a -u 10.77.1.60:53 -r 10.77.2.61:53 -i -w 1
-A -t [2001:db8:1::60]:443 -s wlc
-a -t [2001:db8:1::60]:443 -r [2001:db8:2::61]:443 -m -w 1
-A -f 5 -s rr -p 600 -M 255.255.255.0
-a -f 5 -r 10.77.2.62:0 -g -w 3
"""
LINKS = {
    None: [f"netns add {ns}" for ns in (LB, LB2, CL, RS)] + [
        f"link add c0 netns {LB} type veth peer name c1 netns {CL}",
        f"link add r0 netns {LB} type veth peer name r1 netns {RS}",
        f"link add s0 netns {LB} type veth peer name s1 netns {LB2}"],
    LB: ["addr add 10.77.1.1/24 dev c0", "addr add 10.77.1.60/24 dev c0", "addr add 2001:db8:1::1/64 dev c0 nodad",
         "addr add 2001:db8:1::60/64 dev c0 nodad", "addr add 10.77.2.1/24 dev r0",
         "addr add 2001:db8:2::1/64 dev r0 nodad", "addr add 10.77.3.1/24 dev s0"],
    LB2: ["addr add 10.77.3.2/24 dev s1"],
    CL: ["addr add 10.77.1.10/24 dev c1", "addr add 2001:db8:1::10/64 dev c1 nodad"],
    RS: ["addr add 10.77.2.61/24 dev r1", "addr add 10.77.2.62/24 dev r1", "addr add 2001:db8:2::61/64 dev r1 nodad"],
}
UP = {LB: ["c0", "r0", "s0"], LB2: ["s1"], CL: ["c1"], RS: ["r1"]}
ROUTES = {CL: ["10.77.1.1", "2001:db8:1::1"], RS: ["10.77.2.1", "2001:db8:2::1"]}

SERVER = """
import socket, threading
def echo(c):
    with c:
        while (data := c.recv(4096)):
            c.sendall(data)
def serve(port):
    s = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=64)
    while True:
        threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
for port in (25, 80, 443):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
print("listening", flush=True)
import sys; sys.stdin.read()
"""
CLIENT = """
import json, socket, sys, time
def talk(host, port):
    s = socket.create_connection((host, port), timeout=20)
    s.sendall(b"EHLO guest\\r\\n")
    s.recv(100)
    return s
def port(s):
    return s.getsockname()[1]
out, keep = {}, []
s = talk("10.77.1.60", 25); out["closed"] = [port(s)]; s.close()
keep += [talk("10.77.1.60", 25) for _ in range(4)]; out["talk"] = [port(s) for s in keep]
idle = [socket.create_connection(("10.77.1.60", 25), timeout=20) for _ in range(2)]; out["idle"] = list(map(port, idle))
keep.append(talk("10.77.1.60", 80)); out["persistent"] = [port(keep[-1])]
keep.append(talk("2001:db8:1::60", 443)); out["ipv6"] = [port(keep[-1])]
syn = socket.socket(); syn.setblocking(False); syn.connect_ex(("10.77.1.60", 26)); out["syn"] = [port(syn)]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.sendto(b"q", ("10.77.1.60", 53)); out["udp"] = [port(udp)]
time.sleep(0.5)  # the closed connection's last ACK
print(json.dumps(out), flush=True)
sys.stdin.read()
"""
# the stand-in for Salt's publish module: the test's function answers for the peer
FAKE_PUBLISH = '''
"""publish.publish for the guest test: runs fun on tgt through the test (no master here)."""
def publish(tgt, fun, arg=None, timeout=5, **kwargs):
    return __opts__["hafw_test_publish"](tgt, fun, arg or [], timeout)
'''


@contextlib.contextmanager
def netns(name):
    """Move this thread into network namespace name, and back (setns(2), as ip netns exec does)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        yield
    finally:
        if libc.setns(own, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back into the test's namespace")
        os.close(own)
        os.close(target)


def sh(ns, *argv, stdin=None, check=True):
    with netns(ns) if ns else contextlib.nullcontext():
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    if check and proc.returncode:
        raise AssertionError(f"{ns}: {' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def write_sysctl(ns, path, value):
    with netns(ns), open(path, "w") as fh:
        fh.write(value)


def lnc_rows(ns):
    """ipvsadm -Lnc of a namespace: {(proto, state, source, virtual, destination): expire seconds}."""
    rows = {}
    for line in sh(ns, "ipvsadm", "-L", "-n", "-c").splitlines()[2:]:
        proto, expire, state, src, virt, dest = line.split()
        minutes, seconds = expire.split(":")
        rows[(proto, state, src, virt, dest)] = int(minutes) * 60 + int(seconds)
    return rows


def endpoint(address, port):
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def live_keys(rows):
    """The sync_health keys of live TCP connections, from ipvsadm -Lnc rows."""
    return {f"{p} {s} {v} {d}" for (p, state, s, v, d) in rows
            if p == "TCP" and not s.endswith(":0") and state not in ("TIME_WAIT", "CLOSE", "NONE")}


# ---------------------------------------------------------------------------
# the pair, its traffic, the loaders
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, IPVS)")
    if subprocess.run(["modprobe", "-a", "ip_vs", "ip_vs_lc", "ip_vs_rr", "ip_vs_wlc", "veth"],
                      capture_output=True).returncode:
        pytest.skip("the kernel has no IPVS (run in the guest: test/functional/test_ipvs_guest.py)")
    procs = []
    try:
        sh(None, "ip", "-batch", "-", stdin="\n".join(LINKS[None]) + "\n")
        for ns in (LB, LB2, CL, RS):
            lines = ["link set lo up", *LINKS[ns], *(f"link set {i} up" for i in UP[ns])]
            lines += [f"route add {'::/0' if ':' in gw else 'default'} via {gw}" for gw in ROUTES.get(ns, ())]
            sh(ns, "ip", "-batch", "-", stdin="\n".join(lines) + "\n")
        write_sysctl(LB, "/proc/sys/net/ipv4/ip_forward", "1")
        write_sysctl(LB, "/proc/sys/net/ipv6/conf/all/forwarding", "1")
        for ns in (LB, LB2):  # keepalived puts the same services on both nodes
            sh(ns, "ipvsadm", "-R", stdin=RULES)
        sh(LB, "ipvsadm", "--start-daemon", "master", "--mcast-interface", "s0", "--syncid", "7")
        sh(LB2, "ipvsadm", "--start-daemon", "backup", "--mcast-interface", "s1", "--syncid", "7")
        server = subprocess.Popen(["ip", "netns", "exec", RS, sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        procs.append(server)
        assert server.stdout.readline().strip() == "listening"
        client = subprocess.Popen(["ip", "netns", "exec", CL, sys.executable, "-c", CLIENT], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        procs.append(client)
        ports = json.loads(client.stdout.readline())
        # the master sends what it has to send within about two seconds (IPVS's sync flush)
        want = 4 + 1 + 1  # the talking, the persistent and the IPv6 connection
        deadline = time.monotonic() + 30
        while len(live_keys(lnc_rows(LB2))) < want and time.monotonic() < deadline:
            time.sleep(0.5)
        yield ports
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for ns, state in ((LB, "master"), (LB2, "backup")):
            if os.path.exists(f"/run/netns/{ns}"):
                sh(ns, "ipvsadm", "--stop-daemon", state, check=False)
                sh(ns, "ipvsadm", "-C", check=False)
        for ns in (LB, LB2, CL, RS):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


@pytest.fixture(scope="module")
def salt_on(pair, tmp_path_factory):
    """{minion id: call(fun, **kwargs)}: the module through a real loader, in the node's namespace."""
    import salt.config
    import salt.loader
    import salt.utils.args

    root = tmp_path_factory.mktemp("salt")
    (root / "fakes").mkdir()
    (root / "fakes" / "publish.py").write_text(FAKE_PUBLISH)
    pillar = yaml.safe_load((REPO / "pillar.example").read_text())
    loaders = {}

    def publish(tgt, fun, arg, timeout):
        if tgt not in loaders:
            return {}
        args, kwargs = salt.utils.args.parse_input(arg, condition=False)
        with netns(NODES[tgt]):
            try:
                return {tgt: loaders[tgt][fun](*args, **kwargs)}
            except Exception as exc:  # what a minion answers for a failed function
                return {tgt: f"ERROR: {exc}"}

    for minion_id in NODES:
        opts = salt.config.minion_config(None)
        opts.update({
            "id": minion_id, "file_client": "local", "root_dir": str(root), "cachedir": str(root / minion_id),
            "extension_modules": str(root / minion_id / "extmods"),
            "module_dirs": [str(root / "fakes"), str(REPO / "_modules")], "utils_dirs": [str(REPO / "_utils")],
            "grains": {"kernel": "Linux", "os": "Debian", "os_family": "Debian", "id": minion_id},
            "pillar": pillar, "hafw_test_publish": publish,
        })
        # a loaded_base_name per minion: two loaders of one process must not share module objects
        base = "hafw_guest_" + minion_id.replace("-", "_")
        loaders[minion_id] = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts, loaded_base_name=base),
                                                     loaded_base_name=base)

    def caller(minion_id):
        def call(fun, **kwargs):
            with netns(NODES[minion_id]):
                return loaders[minion_id][fun](**kwargs)
        return call

    return {minion_id: caller(minion_id) for minion_id in NODES}


@pytest.fixture(scope="module")
def captured():
    """Real outputs for docs/ipvs-module.md and the unit tests' fixtures ($HAFW_GUEST_OUT/ipvs)."""
    data = {}
    yield data
    out = os.environ.get("HAFW_GUEST_OUT")
    if out:
        Path(out, "ipvs").mkdir(exist_ok=True)
        for name, value in data.items():
            text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True) + "\n"
            Path(out, "ipvs", name).write_text(text)


# ---------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------
def test_connections_match_ipvsadm_Lnc(pair, salt_on, captured):
    for minion_id, ns in NODES.items():
        raw = sh(ns, "cat", "/proc/net/ip_vs_conn")
        entries = salt_on[minion_id]("ipvs.connections")
        rows = lnc_rows(ns)
        mine = {(e["proto"], e["state"], endpoint(e["client"], e["cport"]), endpoint(e["vip"], e["vport"]),
                 endpoint(e["dest"], e["dport"])): e["expires"] for e in entries}
        assert set(mine) == set(rows), (minion_id, raw)
        for key, expires in mine.items():  # the two reads are a moment apart: timers run down
            assert 0 <= expires - rows[key] <= 5, (key, expires, rows[key])
        captured[f"{minion_id}.ip_vs_conn"] = raw
        captured[f"{minion_id}.Lnc"] = sh(ns, "ipvsadm", "-L", "-n", "-c")
        captured[f"{minion_id}.connections.json"] = entries
    ports = pair
    master = salt_on["lb-cent7g"]("ipvs.connections")
    by_port = {e["cport"]: e for e in master}
    for kind in ("talk", "idle", "persistent", "ipv6"):
        assert all(by_port[p]["state"] == "ESTABLISHED" for p in ports[kind]), kind
    assert by_port[ports["syn"][0]]["state"] == "SYN_RECV" and by_port[ports["syn"][0]]["dest"] == "10.77.2.63"
    assert by_port[ports["closed"][0]]["state"] == "TIME_WAIT"
    assert by_port[ports["udp"][0]]["proto"] == "UDP" and by_port[ports["udp"][0]]["state"] == "UDP"
    assert by_port[ports["ipv6"][0]]["client"] == "2001:db8:1::10" and by_port[ports["ipv6"][0]]["vport"] == 443
    (template,) = [e for e in master if e["template"]]
    assert (template["vport"], template["dest"], template["cport"]) == (80, "10.77.2.61", 0)


def test_connection_filters(pair, salt_on):
    call = salt_on["lb-cent7g"]
    assert [e["cport"] for e in call("ipvs.connections", state="syn_recv")] == pair["syn"]
    assert {e["cport"] for e in call("ipvs.connections", vport=80)} == {0, *pair["persistent"]}
    assert [e["cport"] for e in call("ipvs.connections", proto="udp")] == pair["udp"]
    assert [e["cport"] for e in call("ipvs.connections", vip="2001:db8:1::/64")] == pair["ipv6"]
    assert len(call("ipvs.connections", client="10.77.1.0/24", vport=25, state="ESTABLISHED")) == 6
    assert len(call("ipvs.connections", limit=3)) == 3
    assert call("ipvs.connections", client="192.0.2.1") == []


def test_count(pair, salt_on, captured):
    c = salt_on["lb-cent7g"]("ipvs.count")
    captured["lb-cent7g.count.json"] = c
    assert c["total"] == len(lnc_rows(LB)) == c["connections"] + c["templates"]
    assert c["templates"] == 1
    assert c["by_state"]["TCP ESTABLISHED"] == 8 and c["by_state"]["TCP SYN_RECV"] == 1
    assert c["by_state"]["TCP TIME_WAIT"] == 1 and c["by_protocol"]["UDP"] == 1


def test_services_match_ipvsadm_Ln(pair, salt_on, captured):
    text = sh(LB, "ipvsadm", "-L", "-n")
    found = salt_on["lb-cent7g"]("ipvs.services")
    captured.update({"lb-cent7g.Ln": text, "lb-cent7g.services.json": found,
                     "lb-cent7g.stats": sh(LB, "ipvsadm", "-L", "-n", "--stats", "--exact"),
                     "lb-cent7g.rate": sh(LB, "ipvsadm", "-L", "-n", "--rate", "--exact"),
                     "lb-cent7g.ip_vs": sh(LB, "cat", "/proc/net/ip_vs")})
    # ipvsadm's own lines, word by word, against the module's services
    want = []
    for line in text.splitlines()[3:]:
        words = line.split()
        if words[0] == "->":
            want[-1][1].append(tuple(words[1:]))
        else:
            want.append((" ".join(words[:3]), []))
    got = []
    for svc in found:
        head = f"{svc['name']} {svc['scheduler']}"
        got.append((head, [(rs["name"], rs["forward"], str(rs["weight"]), str(rs["active"]), str(rs["inactive"]))
                           for rs in svc["real_servers"]]))
    assert got == want
    by_name = {s["name"]: s for s in found}
    smtp = by_name["TCP 10.77.1.60:25"]
    assert (smtp["scheduler"], smtp["healthy_real_servers"], smtp["available"]) == ("lc", 1, True)
    inhibited = [rs for rs in smtp["real_servers"] if rs["inhibited"]]
    assert [(rs["address"], rs["healthy"]) for rs in inhibited] == [("10.77.2.62", False)]
    good = next(rs for rs in smtp["real_servers"] if rs["healthy"])
    assert good["active"] == 6 and good["stats"]["conns"] >= 7 and smtp["stats"]["inpkts"] >= 20
    assert set(good["rates"]) == {"cps", "inpps", "outpps", "inbps", "outbps"}
    assert by_name["TCP 10.77.1.60:80"]["persistent"] == 300
    fwm = by_name["FWM 5"]
    assert (fwm["fwmark"], fwm["persistent"], fwm["netmask"]) == (5, 600, "255.255.255.0")
    assert fwm["real_servers"][0]["forward"] == "Route"
    assert by_name["UDP 10.77.1.60:53"]["real_servers"][0]["forward"] == "Tunnel"
    assert by_name["TCP [2001:db8:1::60]:443"]["vip"] == "2001:db8:1::60"


def test_sync_status(pair, salt_on, captured):
    for minion_id, ns, state, ifname in (("lb-cent7g", LB, "master", "s0"), ("lb-cent7h", LB2, "backup", "s1")):
        status = salt_on[minion_id]("ipvs.sync_status")
        captured[f"{minion_id}.daemon"] = sh(ns, "ipvsadm", "-L", "--daemon")
        captured[f"{minion_id}.sync_status.json"] = status
        assert status["running"] and status["role"] == state
        (daemon,) = status["daemons"]
        assert (daemon["state"], daemon["mcast_interface"], daemon["syncid"]) == (state, ifname, 7)
        assert re.search(rf"^{state} sync daemon \(mcast={ifname}, syncid=7", captured[f"{minion_id}.daemon"])
        sysctls = status["sysctls"]
        assert (sysctls["sync_version"], sysctls["sync_threshold"], sysctls["sync_period"]) == (1, 3, 50)
        assert {"sync_refresh_period", "sync_retries", "conntrack"} <= set(sysctls)


def test_summary(pair, salt_on, captured):
    s = salt_on["lb-cent7g"]("ipvs.summary")
    captured["lb-cent7g.summary.json"] = s
    assert s["services"]["TCP 10.77.1.60:25"]["healthy"] == "1/2"
    assert s["services"]["TCP 10.77.1.60:25"]["active"] == 6
    assert s["sync"]["role"] == "master" and s["connections"]["templates"] == 1
    assert any("10.77.2.62:25 is inhibited" in p for p in s["problems"])


def test_sync_health_counts_what_the_backup_lacks(pair, salt_on, captured):
    expected = live_keys(lnc_rows(LB)) - live_keys(lnc_rows(LB2))
    missing_ports = {int(k.split()[1].rsplit(":", 1)[1]) for k in expected}
    assert missing_ports == set(pair["idle"]) | set(pair["syn"])  # below sync_threshold, and a handshake
    for asked in ("lb-cent7g", "lb-cent7h"):  # from the master, and from the backup
        h = salt_on[asked]("ipvs.sync_health", settle=0.5)
        captured[f"{asked}.sync_health.json"] = h
        assert (h["master"], h["backup"]) == ("lb-cent7g", "lb-cent7h"), h
        assert not h["healthy"] and h["would_lose"] == 3 and set(h["sample"]) == expected, h
        assert h["by_state"] == {"ESTABLISHED": 2, "SYN_RECV": 1}
        assert h["total"] == 9 and h["backup_total"] == 6 and h["stale"] == 0
        assert h["verdict"].startswith("a failover now would lose 3 of the 9 live TCP connections of lb-cent7g")


def test_sync_health_without_a_master(pair, salt_on):
    from salt.exceptions import CommandExecutionError

    sh(LB, "ipvsadm", "--stop-daemon", "master")
    try:
        with pytest.raises(CommandExecutionError, match="cannot tell the master"):
            salt_on["lb-cent7h"]("ipvs.sync_health")
    finally:
        sh(LB, "ipvsadm", "--start-daemon", "master", "--mcast-interface", "s0", "--syncid", "7")
