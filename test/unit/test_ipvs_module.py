"""Unit tests of _modules/ipvs.py with loader mocks (configure_loader_modules).

The kernel's files and ipvsadm's output are fixtures: the texts below were
printed by Debian's kernel 6.1 and ipvsadm 1.31 for the load-balancer pair of
test/guest/test_ipvs_in_guest.py (lb-cent7g the master, lb-cent7h the
backup), each table read once through /proc and once through ipvsadm. That
test runs the same functions against the live tables, in the qemu guest.
"""

import importlib.util
import pathlib
import re
from unittest.mock import patch

import pytest
import salt.utils.args
from salt.exceptions import CommandExecutionError, SaltInvocationError

REPO = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("ipvs", REPO / "_modules" / "ipvs.py")
ipvs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ipvs)

HEADER = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
V6 = ("TCP 2001:0db8:0001:0000:0000:0000:0000:0010 C964 2001:0db8:0001:0000:0000:0000:0000:0060 01BB "
      "2001:0db8:0002:0000:0000:0000:0000:0061 01BB ESTABLISHED     {}\n")
# /proc/net/ip_vs_conn of the master, then ipvsadm -Lnc of the same table a second later
MASTER_CONN = HEADER + """\
TCP 0A4D010A DB1E 0A4D013C 0019 0A4D023D 0019 ESTABLISHED     893
TCP 0A4D010A 806E 0A4D013C 0050 0A4D023D 0050 ESTABLISHED     893
TCP 0A4D010A 0000 0A4D013C 0050 0A4D023D 0050 ASSURED         293
UDP 0A4D010A 86D8 0A4D013C 0035 0A4D023D 0035 UDP             293
TCP 0A4D010A DB14 0A4D013C 0019 0A4D023D 0019 TIME_WAIT       113
TCP 0A4D010A DB26 0A4D013C 0019 0A4D023D 0019 ESTABLISHED     893
TCP 0A4D010A DB3A 0A4D013C 0019 0A4D023D 0019 ESTABLISHED     893
""" + V6.format(893) + """\
TCP 0A4D010A DB38 0A4D013C 0019 0A4D023D 0019 ESTABLISHED     893
TCP 0A4D010A DB2A 0A4D013C 0019 0A4D023D 0019 ESTABLISHED     893
TCP 0A4D010A DB1A 0A4D013C 0019 0A4D023D 0019 ESTABLISHED     893
TCP 0A4D010A D61E 0A4D013C 001A 0A4D023F 001A SYN_RECV         56
"""
MASTER_LNC = """\
IPVS connection entries
pro expire state       source             virtual            destination
TCP 14:52  ESTABLISHED 10.77.1.10:56094   10.77.1.60:25      10.77.2.61:25
TCP 14:52  ESTABLISHED 10.77.1.10:32878   10.77.1.60:80      10.77.2.61:80
TCP 04:52  ASSURED     10.77.1.10:0       10.77.1.60:80      10.77.2.61:80
UDP 04:52  UDP         10.77.1.10:34520   10.77.1.60:53      10.77.2.61:53
TCP 01:52  TIME_WAIT   10.77.1.10:56084   10.77.1.60:25      10.77.2.61:25
TCP 14:52  ESTABLISHED 10.77.1.10:56102   10.77.1.60:25      10.77.2.61:25
TCP 14:52  ESTABLISHED 10.77.1.10:56122   10.77.1.60:25      10.77.2.61:25
TCP 14:52  ESTABLISHED [2001:db8:1::10]:51556 [2001:db8:1::60]:443 [2001:db8:2::61]:443
TCP 14:52  ESTABLISHED 10.77.1.10:56120   10.77.1.60:25      10.77.2.61:25
TCP 14:52  ESTABLISHED 10.77.1.10:56106   10.77.1.60:25      10.77.2.61:25
TCP 14:52  ESTABLISHED 10.77.1.10:56090   10.77.1.60:25      10.77.2.61:25
TCP 00:55  SYN_RECV    10.77.1.10:54814   10.77.1.60:26      10.77.2.63:26
"""
# the backup's table: what the master's sync daemon sent (not the idle connections 56120 and 56122,
# below sync_threshold, nor the SYN_RECV handshake)
BACKUP_CONN = HEADER + """\
TCP 0A4D010A DB2A 0A4D013C 0019 0A4D023D 0019 ESTABLISHED     894
TCP 0A4D010A DB1A 0A4D013C 0019 0A4D023D 0019 ESTABLISHED     894
""" + V6.format(894) + """\
TCP 0A4D010A DB26 0A4D013C 0019 0A4D023D 0019 ESTABLISHED     894
TCP 0A4D010A DB14 0A4D013C 0019 0A4D023D 0019 TIME_WAIT       114
TCP 0A4D010A 0000 0A4D013C 0050 0A4D023D 0050 ASSURED         294
TCP 0A4D010A 806E 0A4D013C 0050 0A4D023D 0050 ESTABLISHED     894
TCP 0A4D010A DB1E 0A4D013C 0019 0A4D023D 0019 ESTABLISHED     894
"""
LN = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.77.1.60:25 lc
  -> 10.77.2.61:25                Masq    1      6          1
  -> 10.77.2.62:25                Masq    0      0          0
TCP  10.77.1.60:26 rr
  -> 10.77.2.63:26                Masq    1      1          0
TCP  10.77.1.60:80 rr persistent 300
  -> 10.77.2.61:80                Masq    2      1          0
UDP  10.77.1.60:53 wlc
  -> 10.77.2.61:53                Tunnel  1      0          1
TCP  [2001:db8:1::60]:443 wlc
  -> [2001:db8:2::61]:443         Masq    1      1          0
FWM  5 rr persistent 600 mask 255.255.255.0
  -> 10.77.2.62:0                 Route   3      0          0
"""
STATS = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.77.1.60:25                       7       26       18     1468     1052
  -> 10.77.2.61:25                       7       26       18     1468     1052
  -> 10.77.2.62:25                       0        0        0        0        0
TCP  10.77.1.60:26                       1        3        3      180      264
  -> 10.77.2.63:26                       1        3        3      180      264
TCP  10.77.1.60:80                       1        4        3      228      176
  -> 10.77.2.61:80                       1        4        3      228      176
UDP  10.77.1.60:53                       1        1        2       29       86
  -> 10.77.2.61:53                       1        1        2       29       86
TCP  [2001:db8:1::60]:443                1        4        3      308      236
  -> [2001:db8:2::61]:443                1        4        3      308      236
FWM  5                                   0        0        0        0        0
  -> 10.77.2.62:0                        0        0        0        0        0
"""
RATE = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS
  -> RemoteAddress:Port
TCP  10.77.1.60:25                       0        0        0       12        8
  -> 10.77.2.61:25                       0        0        0       12        8
  -> 10.77.2.62:25                       0        0        0        0        0
TCP  10.77.1.60:26                       0        0        0        2        3
  -> 10.77.2.63:26                       0        0        0        2        3
TCP  10.77.1.60:80                       0        0        0        2        2
  -> 10.77.2.61:80                       0        0        0        2        2
UDP  10.77.1.60:53                       0        0        0        0        1
  -> 10.77.2.61:53                       0        0        0        0        1
TCP  [2001:db8:1::60]:443                0        0        0        3        2
  -> [2001:db8:2::61]:443                0        0        0        3        2
FWM  5                                   0        0        0        0        0
  -> 10.77.2.62:0                        0        0        0        0        0
"""
MASTER_DAEMON = "master sync daemon (mcast=s0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
BACKUP_DAEMON = "backup sync daemon (mcast=s1, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
SYSCTLS = {"sync_version": "1", "sync_threshold": "3\t50", "sync_refresh_period": "0", "sync_retries": "0",
           "sync_qlen_max": "23247", "sync_sock_size": "0", "sync_ports": "1", "sync_persist_mode": "0",
           "backup_only": "0", "conntrack": "0", "expire_nodest_conn": "0", "expire_quiescent_template": "0",
           "am_droprate": "10"}
IDLE = {"TCP 10.77.1.10:56120 10.77.1.60:25 10.77.2.61:25", "TCP 10.77.1.10:56122 10.77.1.60:25 10.77.2.61:25"}
HANDSHAKE = "TCP 10.77.1.10:54814 10.77.1.60:26 10.77.2.63:26"


class Node:
    """One load balancer's kernel (its /proc files) and what its ipvsadm prints."""

    def __init__(self, root, conn, daemon, ln=LN, stats=STATS, rate=RATE):
        self.root = root
        self.root.mkdir(parents=True)
        (root / "ip_vs").write_text(ln)  # only its presence matters: the kernel has IPVS
        (root / "ip_vs_conn").write_text(conn)
        (root / "vs").mkdir()
        for name, value in SYSCTLS.items():
            (root / "vs" / name).write_text(value + "\n")
        self.outputs = {("-L", "-n"): ln, ("-L", "-n", "--stats", "--exact"): stats,
                        ("-L", "-n", "--rate", "--exact"): rate, ("-L", "--daemon"): daemon}
        self.calls = []

    def run_all(self, argv, python_shell=True, ignore_retcode=False):
        assert python_shell is False and isinstance(argv, list)
        self.calls.append(tuple(argv[1:]))
        return {"retcode": 0, "stdout": self.outputs[tuple(argv[1:])], "stderr": ""}

    def enter(self):
        """Make the module read this node's kernel and run its ipvsadm."""
        ipvs.PROC_SERVICES = str(self.root / "ip_vs")
        ipvs.PROC_CONNECTIONS = str(self.root / "ip_vs_conn")
        ipvs.SYSCTL_DIR = str(self.root / "vs")
        ipvs.__salt__["cmd.run_all"] = self.run_all


@pytest.fixture
def configure_loader_modules():
    return {ipvs: {"__salt__": {}, "__opts__": {"id": "lb-cent7g"}}}


@pytest.fixture(autouse=True)
def _restore_paths():
    saved = (ipvs.PROC_SERVICES, ipvs.PROC_CONNECTIONS, ipvs.SYSCTL_DIR)
    yield
    ipvs.PROC_SERVICES, ipvs.PROC_CONNECTIONS, ipvs.SYSCTL_DIR = saved


@pytest.fixture
def master(tmp_path):
    node = Node(tmp_path / "master", MASTER_CONN, MASTER_DAEMON)
    node.enter()
    return node


# a row of ipvsadm -Lnc: protocol, expire mm:ss, state, source, virtual, destination
LNC_ROW = re.compile(r"^(\w+) (\d+):(\d+) +(\S+) +(\S+) +(\S+) +(\S+)$")


def ep(address, port):
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# -- the connection table ---------------------------------------------------------
def test_connections_match_ipvsadm_Lnc_on_the_same_table(master):
    entries = ipvs.connections()
    mine = {(e["proto"], e["state"], ep(e["client"], e["cport"]), ep(e["vip"], e["vport"]), ep(e["dest"], e["dport"])):
            e["expires"] for e in entries}
    rows = [m for m in map(LNC_ROW.match, MASTER_LNC.splitlines()) if m]
    want = {m.group(1, 4, 5, 6, 7): int(m[2]) * 60 + int(m[3]) for m in rows}
    assert set(mine) == set(want) and len(entries) == len(want) == 12
    assert all(0 <= mine[k] - want[k] <= 1 for k in want)  # -Lnc was read a second later


def test_entries_of_each_kind(master):
    by_port = {(e["proto"], e["cport"]): e for e in ipvs.connections()}
    assert by_port[("TCP", 56094)] == {"proto": "TCP", "client": "10.77.1.10", "cport": 56094, "vip": "10.77.1.60",
                                       "vport": 25, "dest": "10.77.2.61", "dport": 25, "state": "ESTABLISHED",
                                       "expires": 893, "template": False}
    v6 = by_port[("TCP", 51556)]
    assert (v6["client"], v6["vip"], v6["vport"], v6["dest"]) == ("2001:db8:1::10", "2001:db8:1::60", 443,
                                                                   "2001:db8:2::61")
    template = by_port[("TCP", 0)]
    assert template["template"] and template["state"] == "ASSURED" and template["vport"] == 80
    assert by_port[("UDP", 34520)]["state"] == "UDP"
    assert by_port[("TCP", 54814)]["state"] == "SYN_RECV" and by_port[("TCP", 54814)]["expires"] == 56


def test_a_persistence_engine_is_reported(tmp_path):
    Node(tmp_path / "n", HEADER + "UDP 0A000001 13C4 0A00003C 13C4 0A000002 13C4 UDP             179 sip abc@host\n",
         MASTER_DAEMON).enter()
    (e,) = ipvs.connections()
    assert (e["pe"], e["pe_data"], e["vport"]) == ("sip", "abc@host", 5060)


@pytest.mark.parametrize("filters,ports", [
    ({"state": "syn_recv"}, [54814]),
    ({"proto": "udp"}, [34520]),
    ({"vport": 80}, [32878, 0]),
    ({"vport": "80", "state": "ESTABLISHED"}, [32878]),
    ({"vip": "2001:db8:1::/64"}, [51556]),
    ({"vip": "10.77.1.60", "vport": 25, "state": "ESTABLISHED"}, [56094, 56102, 56122, 56120, 56106, 56090]),
    ({"client": "10.77.1.0/24", "state": "TIME_WAIT"}, [56084]),
    ({"client": "192.0.2.1"}, []),
    ({"limit": 2}, [56094, 32878]),
])
def test_connection_filters(master, filters, ports):
    assert [e["cport"] for e in ipvs.connections(**filters)] == ports


def test_count(master):
    assert ipvs.count() == {"total": 12, "connections": 11, "templates": 1, "by_protocol": {"TCP": 10, "UDP": 1},
                            "by_state": {"TCP ESTABLISHED": 8, "TCP SYN_RECV": 1, "TCP TIME_WAIT": 1, "UDP UDP": 1}}


# -- services -----------------------------------------------------------------------
def test_services(master):
    found = ipvs.services()
    assert [s["name"] for s in found] == ["TCP 10.77.1.60:25", "TCP 10.77.1.60:26", "TCP 10.77.1.60:80",
                                          "UDP 10.77.1.60:53", "TCP [2001:db8:1::60]:443", "FWM 5"]
    smtp = found[0]
    assert {k: smtp[k] for k in ("proto", "vip", "vport", "fwmark", "scheduler", "persistent", "flags")} == {
        "proto": "TCP", "vip": "10.77.1.60", "vport": 25, "fwmark": None, "scheduler": "lc", "persistent": None,
        "flags": []}
    assert (smtp["healthy_real_servers"], smtp["available"]) == (1, True)
    good, inhibited = smtp["real_servers"]
    assert good == {"name": "10.77.2.61:25", "address": "10.77.2.61", "port": 25, "forward": "Masq", "weight": 1,
                    "active": 6, "inactive": 1, "inhibited": False, "healthy": True,
                    "stats": {"conns": 7, "inpkts": 26, "outpkts": 18, "inbytes": 1468, "outbytes": 1052},
                    "rates": {"cps": 0, "inpps": 0, "outpps": 0, "inbps": 12, "outbps": 8}}
    assert (inhibited["weight"], inhibited["inhibited"], inhibited["healthy"]) == (0, True, False)
    assert smtp["stats"]["conns"] == 7 and smtp["rates"]["inbps"] == 12
    assert found[2]["persistent"] == 300
    assert found[3]["real_servers"][0]["forward"] == "Tunnel" and found[3]["stats"]["outbytes"] == 86
    v6 = found[4]
    assert (v6["vip"], v6["vport"], v6["real_servers"][0]["address"], v6["stats"]["inbytes"]) == (
        "2001:db8:1::60", 443, "2001:db8:2::61", 308)
    fwm = found[5]
    assert (fwm["fwmark"], fwm["proto"], fwm["persistent"], fwm["netmask"]) == (5, None, 600, "255.255.255.0")
    assert fwm["real_servers"][0]["forward"] == "Route" and fwm["real_servers"][0]["port"] == 0


def test_services_without_stats_run_ipvsadm_once(master):
    found = ipvs.services(stats=False)
    assert master.calls == [("-L", "-n")] and "stats" not in found[0]


def test_trailing_blanks_and_flags_as_ipvsadm_prints_them(tmp_path):
    # ipvsadm pads the real server lines with blanks; a SIP service shows its persistence engine
    ln = LN.replace("Masq    1      6          1\n", "Masq    1      6          1         \n") + (
        "UDP  10.77.1.60:5060 rr persistent 360 pe sip ops\n"
        "  -> 10.77.2.61:5060               Masq    0      0          0         \n"
        "TCP  10.77.1.60:443 sh sh-fallback,sh-port\n")
    Node(tmp_path / "n", MASTER_CONN, MASTER_DAEMON, ln=ln).enter()
    found = {s["name"]: s for s in ipvs.services(stats=False)}
    assert found["TCP 10.77.1.60:25"]["real_servers"][0]["active"] == 6
    sip = found["UDP 10.77.1.60:5060"]
    assert (sip["persistent"], sip["pe"], sip["flags"], sip["available"]) == (360, "sip", ["ops"], False)
    assert found["TCP 10.77.1.60:443"]["flags"] == ["sh-fallback,sh-port"]
    assert found["TCP 10.77.1.60:443"]["real_servers"] == [] and not found["TCP 10.77.1.60:443"]["available"]


# -- sync daemons, summary --------------------------------------------------------
def test_sync_status(master):
    status = ipvs.sync_status()
    assert status["running"] and status["role"] == "master"
    assert status["daemons"] == [{"state": "master", "mcast_interface": "s0", "syncid": 7, "maxlen": 1472,
                                  "group": "224.0.0.81", "port": 8848, "ttl": 1}]
    sysctls = status["sysctls"]
    assert (sysctls["sync_threshold"], sysctls["sync_period"], sysctls["sync_version"]) == (3, 50, 1)
    assert "am_droprate" not in sysctls and set(sysctls) == set(ipvs.SYNC_SYSCTLS) | {"sync_period"}


@pytest.mark.parametrize("text,role", [
    ("", None),
    (BACKUP_DAEMON, "backup"),
    (MASTER_DAEMON + BACKUP_DAEMON, "both"),
    ("master sync daemon (mcast=eth1, syncid=0)\n", "master"),  # older kernels print less
])
def test_sync_roles(master, text, role):
    master.outputs[("-L", "--daemon")] = text
    status = ipvs.sync_status()
    assert status["role"] == role and status["running"] == bool(text)


def test_a_kernel_without_a_sysctl_is_fine(master):
    (master.root / "vs" / "sync_retries").unlink()
    assert "sync_retries" not in ipvs.sync_status()["sysctls"]


def test_summary(master):
    s = ipvs.summary()
    assert s["services"]["TCP 10.77.1.60:25"] == {
        "scheduler": "lc", "persistent": None, "active": 6, "inactive": 1, "healthy": "1/2",
        "real_servers": {"10.77.2.61:25": {"forward": "Masq", "weight": 1, "active": 6, "inactive": 1,
                                           "healthy": True},
                         "10.77.2.62:25": {"forward": "Masq", "weight": 0, "active": 0, "inactive": 0,
                                           "healthy": False}}}
    assert s["connections"]["total"] == 12 and s["sync"]["role"] == "master"
    assert s["problems"] == ["TCP 10.77.1.60:25: real server 10.77.2.62:25 is inhibited (weight 0: its health check "
                             "fails, or it was drained); it gets no new connection"]
    assert ("-L", "-n", "--stats", "--exact") not in master.calls


def test_summary_problems(master):
    master.outputs[("-L", "-n")] = LN.replace("Masq    1      6          1", "Masq    0      6          1")
    master.outputs[("-L", "--daemon")] = ""
    problems = ipvs.summary()["problems"]
    assert "TCP 10.77.1.60:25: no healthy real server: new connections to it fail" in problems
    assert problems[-1] == "no IPVS sync daemon runs: a failover to the peer loses every connection"


# -- errors -------------------------------------------------------------------------
def test_no_ipvsadm_no_module():
    with patch.object(ipvs.salt.utils.path, "which", lambda name: None):
        assert ipvs.__virtual__() == (False, "ipvs: the ipvsadm binary is not installed (package ipvsadm)")
    with patch.object(ipvs.salt.utils.path, "which", lambda name: "/usr/sbin/ipvsadm"):
        assert ipvs.__virtual__() == "ipvs"


@pytest.mark.parametrize("fun", ["connections", "count", "services", "sync_status", "summary", "sync_digest"])
def test_a_kernel_without_ipvs_is_named(master, fun):
    (master.root / "ip_vs").unlink()
    with pytest.raises(CommandExecutionError, match=r"^the kernel has no IPVS: modprobe ip_vs$"):
        getattr(ipvs, fun)()
    assert master.calls == []


def test_ipvsadm_errors_say_why(master):
    ipvs.__salt__["cmd.run_all"] = lambda argv, **kw: {
        "retcode": 2, "stdout": "", "stderr": "Can't initialize ipvs: Permission denied (you must be root)\n"}
    with pytest.raises(CommandExecutionError, match=r"ipvsadm -L -n failed: Can't initialize ipvs: Permission denied"):
        ipvs.services()


@pytest.mark.parametrize("fun,kwargs,message", [
    ("connections", {"proto": "icmp"}, "proto: 'icmp' is not one of tcp, udp, sctp, ip"),
    ("connections", {"vip": "10.77.1.300"}, "vip: '10.77.1.300' is not an address or a network"),
    ("connections", {"client": "somewhere"}, "client: 'somewhere' is not an address or a network"),
    ("connections", {"vport": 70000}, "vport: 70000 is not a port number"),
    ("connections", {"vport": "smtp"}, "vport: 'smtp' is not a port number"),
    ("connections", {"state": "OPEN"}, "state: 'OPEN' is not an IPVS connection state"),
    ("connections", {"limit": "many"}, "limit: 'many' is not a number of entries"),
    ("connections", {"limit": -1}, "limit: -1 is not a number of entries"),
    ("sync_health", {"settle": "soon"}, "settle: 'soon' must be a number of seconds"),
    ("sync_health", {"timeout": 0}, "timeout: 0 is not a number of seconds"),
    ("sync_health", {"sample": -1}, "sample: -1 is not a number of keys"),
    ("sync_health", {"buckets": 0}, "buckets: 0 is not a number of buckets"),
    ("sync_health", {"peer": "lb-cent7g"}, "peer: lb-cent7g is this node"),
    ("sync_keys", {"indexes": "a,b"}, "indexes: 'a,b' must be bucket numbers 0-1023"),
    ("sync_keys", {"indexes": [5000]}, r"indexes: \[5000\] must be bucket numbers 0-1023"),
    ("sync_keys", {"indexes": 3, "limit": 0}, "limit: 0 is not a number of keys"),
])
def test_bad_arguments_name_the_argument(master, fun, kwargs, message):
    with pytest.raises(SaltInvocationError, match=f"^{message}"):
        getattr(ipvs, fun)(**kwargs)


# -- sync_health, the peer mocked -----------------------------------------------------
class Pair:
    """This node and its peer; publish.publish runs the peer's function on the peer's kernel."""

    def __init__(self, tmp_path, mine, theirs, my_id="lb-cent7g", peer_id="lb-cent7h"):
        self.nodes = {my_id: Node(tmp_path / my_id, *mine), peer_id: Node(tmp_path / peer_id, *theirs)}
        self.me, self.peer = my_id, peer_id
        self.published = []
        self.nodes[my_id].enter()
        ipvs.__opts__["id"] = my_id
        ipvs.__salt__.update({"publish.publish": self.publish, "hafw.peers": lambda: [peer_id]})

    def publish(self, tgt, fun, arg, timeout):
        self.published.append(fun)
        args, kwargs = salt.utils.args.parse_input(arg, condition=False)  # as the peer's minion reads them
        self.nodes[tgt].enter()
        ipvs.__opts__["id"] = tgt
        try:
            return {tgt: getattr(ipvs, fun.split(".")[1])(*args, **kwargs)}
        finally:
            self.nodes[self.me].enter()
            ipvs.__opts__["id"] = self.me


@pytest.fixture(autouse=True)
def _no_sleep():
    with patch.object(ipvs.time, "sleep", lambda s: None):
        yield


def test_from_the_master_the_backup_lacks_what_was_never_sent(tmp_path):
    pair = Pair(tmp_path, (MASTER_CONN, MASTER_DAEMON), (BACKUP_CONN, BACKUP_DAEMON))
    h = ipvs.sync_health(sample=5)
    assert (h["master"], h["backup"], h["roles"]) == ("lb-cent7g", "lb-cent7h",
                                                      {"lb-cent7g": "master", "lb-cent7h": "backup"})
    assert not h["healthy"] and h["would_lose"] == 3 and set(h["sample"]) == IDLE | {HANDSHAKE}
    assert h["by_state"] == {"ESTABLISHED": 2, "SYN_RECV": 1}
    assert (h["total"], h["backup_total"], h["stale"], h["truncated"]) == (9, 6, 0, False)
    assert h["verdict"] == ("a failover now would lose 3 of the 9 live TCP connections of lb-cent7g: lb-cent7h's "
                            "table lacks them (2 ESTABLISHED, 1 SYN_RECV)")
    # the digest, the keys of the differing buckets, and the same again after settle
    assert pair.published == ["ipvs.sync_digest", "ipvs.sync_keys", "ipvs.sync_keys"]


def test_from_the_backup_the_answer_is_the_same(tmp_path):
    Pair(tmp_path, (BACKUP_CONN, BACKUP_DAEMON), (MASTER_CONN, MASTER_DAEMON), my_id="lb-cent7h",
         peer_id="lb-cent7g")
    h = ipvs.sync_health()
    assert (h["master"], h["backup"], h["would_lose"], h["total"]) == ("lb-cent7g", "lb-cent7h", 3, 9)
    assert set(h["sample"]) == IDLE | {HANDSHAKE}


def test_a_complete_backup_loses_nothing_and_only_digests_cross(tmp_path):
    pair = Pair(tmp_path, (MASTER_CONN, MASTER_DAEMON), (MASTER_CONN, BACKUP_DAEMON))
    h = ipvs.sync_health()
    assert h["healthy"] and h["would_lose"] == 0 and h["differing_buckets"] == 0
    assert h["verdict"] == ("lb-cent7h's table holds every live TCP connection of lb-cent7g: a failover now "
                            "loses none")
    assert pair.published == ["ipvs.sync_digest"]


def test_a_connection_that_arrives_while_settling_is_not_missing(tmp_path):
    pair = Pair(tmp_path, (MASTER_CONN, MASTER_DAEMON), (BACKUP_CONN, BACKUP_DAEMON))
    backup = pair.nodes["lb-cent7h"].root / "ip_vs_conn"

    def sync_arrives(seconds):  # the master's next sync message, with one of the idle connections
        backup.write_text(BACKUP_CONN + "TCP 0A4D010A DB38 0A4D013C 0019 0A4D023D 0019 ESTABLISHED     899\n")

    with patch.object(ipvs.time, "sleep", sync_arrives):
        h = ipvs.sync_health(settle=2)
    assert h["would_lose"] == 2 and "TCP 10.77.1.10:56120 10.77.1.60:25 10.77.2.61:25" not in h["sample"]


def test_stale_backup_entries_are_counted_apart(tmp_path):
    extra = "TCP 0A4D010B 1000 0A4D013C 0019 0A4D023D 0019 ESTABLISHED     100\n"
    Pair(tmp_path, (MASTER_CONN, MASTER_DAEMON), (MASTER_CONN + extra, BACKUP_DAEMON))
    h = ipvs.sync_health()
    assert (h["would_lose"], h["stale"], h["healthy"]) == (0, 1, True)


def test_a_backup_without_its_daemon_is_named(tmp_path):
    Pair(tmp_path, (MASTER_CONN, MASTER_DAEMON), (BACKUP_CONN, ""))
    h = ipvs.sync_health()
    assert h["verdict"].endswith("; lb-cent7h runs no backup sync daemon: nothing new reaches its table")


@pytest.mark.parametrize("mine,theirs,roles", [
    ("", BACKUP_DAEMON, "lb-cent7g: None, lb-cent7h: backup"),
    (MASTER_DAEMON, MASTER_DAEMON, "lb-cent7g: master, lb-cent7h: master"),
    (MASTER_DAEMON + BACKUP_DAEMON, BACKUP_DAEMON, "lb-cent7g: both, lb-cent7h: backup"),
])
def test_no_single_master_is_refused(tmp_path, mine, theirs, roles):
    Pair(tmp_path, (MASTER_CONN, mine), (BACKUP_CONN, theirs))
    with pytest.raises(CommandExecutionError, match=f"cannot tell the master: sync daemons {roles}"):
        ipvs.sync_health()


def test_no_answer_from_the_peer_says_why(tmp_path):
    Pair(tmp_path, (MASTER_CONN, MASTER_DAEMON), (BACKUP_CONN, BACKUP_DAEMON))
    ipvs.__salt__["publish.publish"] = lambda *a, **k: {}
    with pytest.raises(CommandExecutionError, match="no answer from lb-cent7h to ipvs.sync_digest within 1s: .* "
                                                    "does not allow lb-cent7g to publish ipvs.sync_digest"):
        ipvs.sync_health(timeout=1)


def test_an_error_on_the_peer_is_passed_on(tmp_path):
    Pair(tmp_path, (MASTER_CONN, MASTER_DAEMON), (BACKUP_CONN, BACKUP_DAEMON))
    ipvs.__salt__["publish.publish"] = lambda tgt, *a, **k: {tgt: "'ipvs.sync_digest' is not available."}
    with pytest.raises(CommandExecutionError, match="lb-cent7h answered ipvs.sync_digest with an error: "
                                                    "'ipvs.sync_digest' is not available."):
        ipvs.sync_health()


def test_a_node_with_two_peers_must_name_one(tmp_path):
    Pair(tmp_path, (MASTER_CONN, MASTER_DAEMON), (BACKUP_CONN, BACKUP_DAEMON))
    ipvs.__salt__["hafw.peers"] = lambda: ["lb-a", "lb-b"]
    with pytest.raises(SaltInvocationError, match=r"^peer: this node has peers \['lb-a', 'lb-b'\]"):
        ipvs.sync_health()


def test_sync_keys_returns_the_states_of_its_buckets(master):
    digest = ipvs.sync_digest(buckets=4)
    assert digest["total"] == 9 and digest["role"] == "master" and digest["id"] == "lb-cent7g"
    every = ipvs.sync_keys(indexes="0,1,2,3", buckets=4)
    assert len(every["keys"]) == 9 and every["keys"][HANDSHAKE] == "SYN_RECV" and not every["truncated"]
    cut = ipvs.sync_keys(indexes=[0, 1, 2, 3], buckets=4, limit=2)
    assert len(cut["keys"]) == 2 and cut["truncated"]
