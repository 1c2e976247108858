"""
IPVS, the kernel's layer-4 load balancer, seen through Salt: the virtual
services and their real servers, the connection table, the connection-sync
daemons, and whether a failover of a load-balancer pair would lose
connections.

The connection table is read from ``/proc/net/ip_vs_conn`` (what
``ipvsadm -Lnc`` reads and reformats, without the extra process), streamed
line by line; services, their counters and the sync daemons come from
``ipvsadm`` (netlink), the sync settings from ``/proc/sys/net/ipv4/vs``.
IPVS state belongs to a network namespace: every function answers for the
minion's own. Nothing here changes IPVS: keepalived owns it.

:depends: ``ipvsadm``; a kernel with IPVS (``modprobe ip_vs``); root

CLI Example:

.. code-block:: bash

    salt 'lb-*' ipvs.summary
    salt 'lb-cent7g' ipvs.connections vip=192.168.1.60 state=ESTABLISHED limit=20
    salt 'lb-cent7h' ipvs.sync_health
"""

import collections
import ipaddress
import logging
import os
import re
import socket
import time

import salt.utils.path
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    import hafw_peer
    import hafw_syncdiff

    HAS_SYNCDIFF = True
except ImportError:  # _utils not synced yet
    HAS_SYNCDIFF = False

log = logging.getLogger(__name__)
__virtualname__ = "ipvs"

PROC_SERVICES = "/proc/net/ip_vs"
PROC_CONNECTIONS = "/proc/net/ip_vs_conn"
SYSCTL_DIR = "/proc/sys/net/ipv4/vs"
NO_IPVS = "the kernel has no IPVS: modprobe ip_vs"

# what the kernel prints in the State column (ip_vs_proto_{tcp,udp,sctp}.c); a
# persistence template shows NONE, or ASSURED on kernels that mark it so
TCP_STATES = ("NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT", "CLOSE", "CLOSE_WAIT",
              "LAST_ACK", "LISTEN", "SYNACK")
SCTP_STATES = ("INIT1", "INIT", "COOKIE_SENT", "COOKIE_REPLIED", "COOKIE_WAIT", "COOKIE_ECHOED", "SHUTDOWN_SENT",
               "SHUTDOWN_RECEIVED", "SHUTDOWN_ACK_SENT", "REJECTED", "CLOSED")
STATES = frozenset(TCP_STATES + SCTP_STATES + ("UDP", "ASSURED"))
PROTOCOLS = ("TCP", "UDP", "SCTP", "IP")  # IP: the template of a firewall-mark service
# TCP states that are no connection any more: a failover that loses them loses nothing
GONE = frozenset(("TIME_WAIT", "CLOSE", "NONE"))
# the sysctls that decide what reaches the backup, and what a new master does with it
SYNC_SYSCTLS = ("sync_version", "sync_threshold", "sync_refresh_period", "sync_retries", "sync_qlen_max",
                "sync_sock_size", "sync_ports", "sync_persist_mode", "backup_only", "conntrack",
                "expire_nodest_conn", "expire_quiescent_template")
STAT_FIELDS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
RATE_FIELDS = ("cps", "inpps", "outpps", "inbps", "outbps")


def __virtual__():
    if not salt.utils.path.which("ipvsadm"):
        return (False, "ipvs: the ipvsadm binary is not installed (package ipvsadm)")
    return __virtualname__


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
def _require_ipvs():
    if not os.path.exists(PROC_SERVICES):
        raise CommandExecutionError(NO_IPVS)


def _ipvsadm(*args):
    """ipvsadm ARGS: its stdout, or an error that says why not."""
    _require_ipvs()
    binary = salt.utils.path.which("ipvsadm") or "ipvsadm"
    res = __salt__["cmd.run_all"]([binary, *args], python_shell=False, ignore_retcode=True)
    if res["retcode"] != 0:
        text = ((res.get("stderr") or "") + (res.get("stdout") or "")).strip()
        raise CommandExecutionError(f"ipvsadm {' '.join(args)} failed: "
                                    + (text.splitlines()[-1] if text else f"exit status {res['retcode']}"))
    return res.get("stdout") or ""


def _hex_address(text):
    """An address as /proc/net/ip_vs_conn prints it: 8 hex digits (IPv4) or the long IPv6 form."""
    if ":" in text:
        return ipaddress.IPv6Address(text).compressed
    return socket.inet_ntoa(bytes.fromhex(text))


def _endpoint(address, port):
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _conn_rows():
    """(proto, caddr, cport, vaddr, vport, daddr, dport, state, expires, rest) per line, streamed."""
    _require_ipvs()
    try:
        with open(PROC_CONNECTIONS) as fh:
            next(fh, None)  # the header
            for line in fh:
                f = line.split()
                if len(f) >= 9:
                    yield f
    except OSError as exc:
        raise CommandExecutionError(f"cannot read {PROC_CONNECTIONS}: {exc.strerror or exc}") from exc


def _entry(f):
    cport = int(f[2], 16)
    out = {"proto": f[0], "client": _hex_address(f[1]), "cport": cport,
           "vip": _hex_address(f[3]), "vport": int(f[4], 16),
           "dest": _hex_address(f[5]), "dport": int(f[6], 16),
           "state": f[7], "expires": int(f[8]), "template": cport == 0}
    if len(f) > 9:  # a persistence engine (sip): its name and data
        out["pe"] = f[9]
        out["pe_data"] = " ".join(f[10:])
    return out


def _key(e):
    """A connection's identity on both nodes: protocol, client, virtual service and real server."""
    return (f"{e['proto']} {_endpoint(e['client'], e['cport'])} {_endpoint(e['vip'], e['vport'])} "
            f"{_endpoint(e['dest'], e['dport'])}")


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------
def _net_arg(name, value):
    if value is None:
        return None
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise SaltInvocationError(f"{name}: {value!r} is not an address or a network") from None


def _int_arg(name, value, low, high, what):
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = low - 1
    if isinstance(value, bool) or not low <= number <= high:
        raise SaltInvocationError(f"{name}: {value!r} is not {what}")
    return number


def _float_arg(name, value, low, high):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = low - 1
    if not low <= number <= high:
        raise SaltInvocationError(f"{name}: {value!r} must be a number of seconds, {low:g}-{high:g}")
    return number


def _conn_filter(proto, vip, vport, client, state):
    checks = []
    if proto is not None:
        proto = str(proto).upper()
        if proto not in PROTOCOLS:
            raise SaltInvocationError(f"proto: {proto.lower()!r} is not one of tcp, udp, sctp, ip")
        checks.append(lambda e: e["proto"] == proto)
    for name, value, field in (("vip", vip, "vip"), ("client", client, "client")):
        net = _net_arg(name, value)
        if net is not None:
            checks.append(lambda e, n=net, k=field: ipaddress.ip_address(e[k]) in n)
    port = _int_arg("vport", vport, 0, 65535, "a port number (0-65535)")
    if port is not None:
        checks.append(lambda e: e["vport"] == port)
    if state is not None:
        state = str(state).upper()
        if state not in STATES:
            raise SaltInvocationError(f"state: {state!r} is not an IPVS connection state "
                                      f"({', '.join(sorted(STATES))})")
        checks.append(lambda e: e["state"] == state)
    return checks


# ---------------------------------------------------------------------------
# the connection table
# ---------------------------------------------------------------------------
def connections(proto=None, vip=None, vport=None, client=None, state=None, limit=None):
    """
    The IPVS connection table, filtered; at most ``limit`` entries (``None``
    or ``0``: all of them; mind the size of the answer on a busy balancer).

    proto
        ``tcp``, ``udp``, ``sctp`` (``ip``: the templates of firewall-mark
        services)
    vip, vport
        the virtual service's address (or a network) and port
    client
        the client's address, or a network such as ``192.168.0.0/24``
    state
        ``ESTABLISHED``, ``SYN_RECV``, ``FIN_WAIT``, ``TIME_WAIT``, ``NONE``
        (persistence templates), ``UDP``, ...

    Each entry: ``proto``, ``client`` and ``cport``, ``vip`` and ``vport``,
    ``dest`` and ``dport`` (the real server), ``state``, ``expires``
    (seconds until the entry times out) and ``template`` (a persistence
    template: client port 0, no connection of its own).

    CLI Example:

    .. code-block:: bash

        salt 'lb-cent7g' ipvs.connections vip=192.168.1.60 vport=25 state=ESTABLISHED limit=10
        salt 'lb-cent7g' ipvs.connections client=192.168.0.0/24
    """
    checks = _conn_filter(proto, vip, vport, client, state)
    limit = _int_arg("limit", limit, 0, 2**63, "a number of entries (0: all)")
    out = []
    for row in _conn_rows():
        e = _entry(row)
        if all(check(e) for check in checks):
            out.append(e)
            if limit and len(out) >= limit:
                break
    return out


def count():
    """
    How many entries the table holds (one streaming pass, nothing kept):
    ``total`` (every line, as ``ipvsadm -Lnc | wc -l`` would count),
    ``connections`` and ``templates`` (persistence templates), and the
    connections ``by_protocol`` and ``by_state`` (``TCP ESTABLISHED``,
    ``UDP UDP``, ...).

    CLI Example:

    .. code-block:: bash

        salt 'lb-*' ipvs.count
    """
    total = templates = 0
    by_proto, by_state = collections.Counter(), collections.Counter()
    for f in _conn_rows():
        total += 1
        if f[2] == "0000":
            templates += 1
            continue
        by_proto[f[0]] += 1
        by_state[f"{f[0]} {f[7]}"] += 1
    return {"total": total, "connections": total - templates, "templates": templates,
            "by_protocol": dict(by_proto), "by_state": dict(sorted(by_state.items()))}


# ---------------------------------------------------------------------------
# virtual services
# ---------------------------------------------------------------------------
_SERVICE = re.compile(r"^(TCP|UDP|SCTP)\s+(\S+)\s+(\S+)(.*)$|^FWM\s+(\d+)\s+(\S+)(.*)$")
_REAL = re.compile(r"^\s+->\s+(\S+)\s+(\S+)\s+(-?\d+)\s+(\d+)\s+(\d+)\s*$")
_NUMBERS = re.compile(r"^(\s+->\s+)?(TCP|UDP|SCTP|FWM)?\s*(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


def _split_endpoint(text):
    """'10.0.0.1:25' or '[2001:db8::1]:443' -> (address, port)."""
    address, _, port = text.rpartition(":")
    return address.strip("[]"), int(port)


def _service_flags(words):
    """The tail of a service line: persistent N, mask M, pe NAME, and flags (ops, sh-fallback, ...)."""
    out = {"persistent": None, "netmask": None, "pe": None, "flags": []}
    words = list(words)
    while words:
        word = words.pop(0)
        if word in ("persistent", "mask", "pe") and words:
            value = words.pop(0)
            key = {"persistent": "persistent", "mask": "netmask", "pe": "pe"}[word]
            out[key] = int(value) if word == "persistent" else value
        else:
            out["flags"].append(word)
    return out


def _parse_services(text):
    """``ipvsadm -Ln`` -> a list of services, each with its real servers."""
    services = []
    for line in text.splitlines():
        m = _SERVICE.match(line)
        if m:
            if m.group(1):
                address, port = _split_endpoint(m.group(2))
                svc = {"name": f"{m.group(1)} {m.group(2)}", "proto": m.group(1), "vip": address, "vport": port,
                       "fwmark": None, "scheduler": m.group(3), **_service_flags(m.group(4).split())}
            else:
                svc = {"name": f"FWM {m.group(5)}", "proto": None, "vip": None, "vport": None,
                       "fwmark": int(m.group(5)), "scheduler": m.group(6), **_service_flags(m.group(7).split())}
            svc["real_servers"] = []
            services.append(svc)
            continue
        m = _REAL.match(line)
        if m and services:
            address, port = _split_endpoint(m.group(1))
            weight = int(m.group(3))
            services[-1]["real_servers"].append({
                "name": m.group(1), "address": address, "port": port, "forward": m.group(2), "weight": weight,
                "active": int(m.group(4)), "inactive": int(m.group(5)),
                # keepalived's inhibit_on_failure sets a failed real server's weight to 0
                "inhibited": weight == 0, "healthy": weight > 0})
    return services


def _parse_numbers(text, fields):
    """``ipvsadm -Ln --stats|--rate --exact`` -> {service name: (numbers, {real server name: numbers})}."""
    out, current = {}, None
    for line in text.splitlines():
        m = _NUMBERS.match(line)
        if not m:
            continue
        numbers = dict(zip(fields, map(int, m.group(4, 5, 6, 7, 8)), strict=True))
        if m.group(1):
            if current is not None:
                current[1][m.group(3)] = numbers
        elif m.group(2):
            current = out[f"{m.group(2)} {m.group(3)}"] = (numbers, {})
    return out


def services(stats=True):
    """
    The virtual services and their real servers, as ``ipvsadm -Ln`` lists
    them. Per service: ``name`` (``TCP 192.168.1.60:25``, ``FWM 5``),
    ``proto``, ``vip``, ``vport`` or ``fwmark``, ``scheduler``,
    ``persistent`` (seconds, or None), ``netmask``, ``pe``, ``flags``
    (``ops``, scheduler flags), its ``real_servers``, how many of them are
    healthy (``healthy_real_servers``) and whether the service is
    ``available`` (one healthy real server at least). Per real server: ``address``, ``port``, ``forward``
    (``Masq``, ``Route``, ``Tunnel``, ``Local``), ``weight``, ``active`` and
    ``inactive`` connections, ``inhibited`` and ``healthy``: a weight of 0
    is what keepalived's ``inhibit_on_failure`` sets when a health check
    fails (or an operator drained the server), and such a server gets no
    new connection.

    With ``stats`` (default), service and real server get ``stats``
    (``conns``, ``inpkts``, ``outpkts``, ``inbytes``, ``outbytes`` since the
    service was created) and ``rates`` (per second: ``cps``, ``inpps``,
    ``outpps``, ``inbps``, ``outbps``): two more ``ipvsadm`` runs.

    CLI Example:

    .. code-block:: bash

        salt 'lb-*' ipvs.services
        salt 'lb-cent7g' ipvs.services stats=False
    """
    found = _parse_services(_ipvsadm("-L", "-n"))
    extra = {}
    if stats:
        extra = {"stats": _parse_numbers(_ipvsadm("-L", "-n", "--stats", "--exact"), STAT_FIELDS),
                 "rates": _parse_numbers(_ipvsadm("-L", "-n", "--rate", "--exact"), RATE_FIELDS)}
    for svc in found:
        for kind, table in extra.items():
            own, reals = table.get(svc["name"], (None, {}))
            svc[kind] = own
            for rs in svc["real_servers"]:
                rs[kind] = reals.get(rs["name"])
        svc["healthy_real_servers"] = sum(1 for rs in svc["real_servers"] if rs["healthy"])
        svc["available"] = svc["healthy_real_servers"] > 0
    return found


# ---------------------------------------------------------------------------
# the sync daemons
# ---------------------------------------------------------------------------
_DAEMON = re.compile(r"^(master|backup) sync daemon \((.*)\)\s*$")


def _parse_daemons(text):
    """``ipvsadm -L --daemon`` -> [{"state": master|backup, "mcast_interface", "syncid", ...}]."""
    out = []
    for line in text.splitlines():
        m = _DAEMON.match(line.strip())
        if not m:
            continue
        daemon = {"state": m.group(1)}
        for item in m.group(2).split(","):
            name, _, value = item.strip().partition("=")
            name = {"mcast": "mcast_interface"}.get(name, name)
            daemon[name] = int(value) if value.isdigit() else value
        out.append(daemon)
    return out


def _role(daemons):
    states = {d["state"] for d in daemons}
    return "both" if len(states) > 1 else states.pop() if states else None


def _sysctls():
    out = {}
    for name in SYNC_SYSCTLS:
        try:
            with open(os.path.join(SYSCTL_DIR, name)) as fh:
                values = [int(v) for v in fh.read().split()]
        except (OSError, ValueError):
            continue  # an older kernel without it
        if name == "sync_threshold" and len(values) == 2:
            # one file, two numbers: sync after THRESHOLD packets, then every PERIOD packets
            out["sync_threshold"], out["sync_period"] = values
        elif values:
            out[name] = values[0] if len(values) == 1 else values
    return out


def sync_status():
    """
    The connection-sync daemons of this node (``ipvsadm -L --daemon``):
    ``daemons`` (each: ``state`` master or backup, ``mcast_interface``,
    ``syncid``, and on newer kernels ``maxlen``, ``group``, ``port``,
    ``ttl``), this node's ``role`` in the sync (``master``, ``backup``,
    ``both``, or None when no daemon runs), and the sysctls of
    ``/proc/sys/net/ipv4/vs`` that decide what the backup receives:
    ``sync_version``, ``sync_threshold`` and ``sync_period`` (a connection
    is sent after THRESHOLD incoming packets, then every PERIOD),
    ``sync_refresh_period``, ``sync_retries``, ``sync_qlen_max``,
    ``sync_sock_size``, ``sync_ports``, ``sync_persist_mode``,
    ``backup_only``, ``conntrack``, ``expire_nodest_conn``,
    ``expire_quiescent_template`` (those the kernel has).

    CLI Example:

    .. code-block:: bash

        salt 'lb-*' ipvs.sync_status
    """
    daemons = _parse_daemons(_ipvsadm("-L", "--daemon"))
    return {"running": bool(daemons), "role": _role(daemons), "daemons": daemons, "sysctls": _sysctls()}


def summary():
    """
    What an operator asks first: per service its scheduler, persistence,
    connections and real servers (``address:port``: weight, active and
    inactive connections, healthy), the table's ``count``, the sync
    daemons' role and settings, and each ``problem`` in words (an
    inhibited real server, a service with no healthy real server, no sync
    daemon, both daemons at once). Per-service counters are left out: see
    ``ipvs.services``.

    CLI Example:

    .. code-block:: bash

        salt 'lb-*' ipvs.summary
    """
    found = services(stats=False)
    sync = sync_status()
    problems = []
    table = {}
    for svc in found:
        reals = {}
        for rs in svc["real_servers"]:
            reals[rs["name"]] = {"forward": rs["forward"], "weight": rs["weight"], "active": rs["active"],
                                 "inactive": rs["inactive"], "healthy": rs["healthy"]}
            if rs["inhibited"]:
                problems.append(f"{svc['name']}: real server {rs['name']} is inhibited (weight 0: its health "
                                "check fails, or it was drained); it gets no new connection")
        if not svc["available"]:
            problems.append(f"{svc['name']}: no healthy real server: new connections to it fail")
        table[svc["name"]] = {"scheduler": svc["scheduler"], "persistent": svc["persistent"],
                              "active": sum(r["active"] for r in svc["real_servers"]),
                              "inactive": sum(r["inactive"] for r in svc["real_servers"]),
                              "healthy": f"{svc['healthy_real_servers']}/{len(svc['real_servers'])}",
                              "real_servers": reals}
    if sync["role"] is None:
        problems.append("no IPVS sync daemon runs: a failover to the peer loses every connection")
    elif sync["role"] == "both":
        problems.append("both a master and a backup sync daemon run: which node serves cannot be told "
                        "from the sync state")
    return {"services": table, "connections": count(), "sync": sync, "problems": problems}


# ---------------------------------------------------------------------------
# sync health: this node's connections against the peer's
# ---------------------------------------------------------------------------
def _live_tcp():
    """{key: state} of the TCP connections that a failover could break (templates and closed ones left out)."""
    for f in _conn_rows():
        if f[0] == "TCP" and f[2] != "0000" and f[7] not in GONE:
            e = _entry(f)
            yield _key(e), e["state"]


def _buckets_arg(buckets):
    return _int_arg("buckets", buckets, 1, 1 << 16, "a number of buckets, 1-65536")


def _need_syncdiff():
    if not HAS_SYNCDIFF:
        raise CommandExecutionError("ipvs: _utils/hafw_syncdiff.py is not available; run saltutil.sync_all")


def sync_digest(buckets=1024):
    """
    A compact digest of this node's live TCP connections (every state but
    TIME_WAIT, CLOSE and templates), keyed by protocol, client, virtual
    service and real server: per bucket the number of connections and the
    XOR of their hashes (``_utils/hafw_syncdiff.py``), with this node's
    sync ``role``. What ``ipvs.sync_health`` asks the peer for.

    CLI Example:

    .. code-block:: bash

        salt 'lb-cent7h' ipvs.sync_digest buckets=256
    """
    _need_syncdiff()
    n = _buckets_arg(buckets)
    role = _role(_parse_daemons(_ipvsadm("-L", "--daemon")))
    digest = hafw_syncdiff.Digest(n)
    for k, _state in _live_tcp():
        digest.add(k)
    return {**digest.as_data(), "role": role, "id": __opts__.get("id")}


def _indexes_arg(indexes, n):
    given = indexes
    if isinstance(indexes, str):
        indexes = indexes.replace(",", " ").split()
    elif isinstance(indexes, int):
        indexes = [indexes]
    try:
        wanted = {int(i) for i in indexes or ()}
    except (TypeError, ValueError):
        wanted = {-1}
    if not wanted or not all(0 <= i < n for i in wanted):
        raise SaltInvocationError(f"indexes: {given!r} must be bucket numbers 0-{n - 1}")
    return wanted


def sync_keys(indexes=None, buckets=1024, limit=100000):
    """
    The live TCP connections (key and state) whose hash falls into bucket
    ``indexes`` of a ``buckets``-bucket digest: the second step of
    ``ipvs.sync_health``, for the buckets whose digests differ. At most
    ``limit`` keys (``truncated`` says so).

    CLI Example:

    .. code-block:: bash

        salt 'lb-cent7h' ipvs.sync_keys indexes=3,17 buckets=1024
    """
    _need_syncdiff()
    n = _buckets_arg(buckets)
    wanted = _indexes_arg(indexes, n)
    limit = _int_arg("limit", limit, 1, 2**63, "a number of keys, 1 or more")
    keys, truncated = {}, False
    for k, state in _live_tcp():
        if hafw_syncdiff.bucket_of(k, n) in wanted:
            if len(keys) >= limit:
                truncated = True
                break
            keys[k] = state
    return {"keys": keys, "truncated": truncated}


def _publish(peer, fun, kwargs, timeout):
    return hafw_peer.call(__salt__["publish.publish"], __opts__.get("id"), peer, fun, kwargs, timeout)


def _node_keys(node, indexes, me, peer, buckets, timeout):
    """({key: state}, truncated) of a node's live TCP connections in bucket indexes: here, or asked of the peer."""
    if not indexes:
        return {}, False
    if node == me:
        got = sync_keys(sorted(indexes), buckets)
    else:
        got = _publish(peer, "ipvs.sync_keys", {"indexes": ",".join(map(str, sorted(indexes))), "buckets": buckets},
                       timeout)
    return got.get("keys", {}), bool(got.get("truncated"))


def sync_health(peer=None, settle=1.0, timeout=60, sample=10, buckets=1024):
    """
    Would a failover of the load-balancer pair right now lose connections,
    and how many? IPVS's sync daemon sends the master's connections to the
    backup's table; this compares the two tables, from either node. The
    master is the node that runs the master sync daemon (keepalived starts
    it on the VRRP master of ``lvs_sync_daemon``'s instance), the peer is
    this node's cluster peer (``hafw.peers``) unless named, reached through
    the salt-master's peer publishing (``publish.publish``).

    Compared: live TCP connections (every state but TIME_WAIT and CLOSE;
    no persistence templates), keyed by protocol, client address:port,
    virtual address:port and real server. Bucketed digests of both tables
    are compared first; only the keys of differing buckets are fetched, and
    fetched again after ``settle`` seconds: a connection counts as missing
    only when the backup lacks it both times (the master sends a
    connection after ``sync_threshold`` incoming packets, so a brand-new
    one is on its way).

    Returns ``would_lose`` (master connections missing from the backup),
    ``by_state`` (their states on the master: an ESTABLISHED connection
    that has not seen ``sync_threshold`` packets yet, a SYN_RECV handshake,
    ...), ``total`` (the master's live TCP connections), ``backup_total``,
    ``stale`` (backup entries the master no longer has: harmless, they
    expire), a ``sample`` of the missing keys, ``master`` and ``backup``,
    ``healthy``, a ``verdict`` in words and the ``seconds`` taken.

    CLI Example:

    .. code-block:: bash

        salt 'lb-cent7g' ipvs.sync_health
        salt 'lb-cent7h' ipvs.sync_health settle=2 sample=20
    """
    _need_syncdiff()
    started = time.monotonic()
    settle = _float_arg("settle", settle, 0, 600)
    timeout = _int_arg("timeout", timeout, 1, 3600, "a number of seconds, 1-3600")
    sample = _int_arg("sample", sample, 0, 100000, "a number of keys to show")
    n = _buckets_arg(buckets)
    if not peer:
        peers = __salt__["hafw.peers"]()
        if len(peers) != 1:
            raise SaltInvocationError(f"peer: this node has peers {peers}; name the one to compare with")
        peer = peers[0]
    me = __opts__.get("id")
    if peer == me:
        raise SaltInvocationError(f"peer: {peer} is this node; name its peer")
    mine = sync_digest(n)
    theirs = _publish(peer, "ipvs.sync_digest", {"buckets": n}, timeout)
    roles = {me: mine["role"], peer: theirs.get("role")}
    masters = [node for node, role in roles.items() if role == "master"]
    if len(masters) != 1 or "both" in roles.values():
        raise CommandExecutionError(
            f"cannot tell the master: sync daemons {me}: {roles[me]}, {peer}: {roles[peer]} (ipvsadm -L --daemon); "
            "exactly one node must run a master sync daemon")
    master = masters[0]
    backup = peer if master == me else me
    digests = {me: mine, peer: theirs}

    def both_sides(indexes):
        """({key: state} on the master, the same on the backup, truncated) for some buckets."""
        (on_master, cut1), (on_backup, cut2) = (_node_keys(node, indexes, me, peer, n, timeout)
                                                for node in (master, backup))
        return on_master, on_backup, cut1 or cut2

    differ = hafw_syncdiff.differing_buckets(digests[master], digests[backup])
    on_master, on_backup, truncated = both_sides(differ)
    missing = set(on_master) - set(on_backup)
    stale = set(on_backup) - set(on_master)
    if (missing or stale) and settle:
        time.sleep(settle)
        on_master2, on_backup2, cut = both_sides({hafw_syncdiff.bucket_of(k, n) for k in missing | stale})
        missing &= set(on_master2) - set(on_backup2)
        stale &= set(on_backup2) - set(on_master2)
        on_master.update(on_master2)
        truncated = truncated or cut
    by_state = collections.Counter(on_master[k] for k in missing)
    total = digests[master]["total"]
    if missing:
        verdict = (f"a failover now would lose {len(missing)} of the {total} live TCP connections of {master}: "
                   f"{backup}'s table lacks them (" + ", ".join(f"{c} {s}" for s, c in sorted(by_state.items())) + ")")
    else:
        verdict = f"{backup}'s table holds every live TCP connection of {master}: a failover now loses none"
    if roles[backup] != "backup":
        verdict += f"; {backup} runs no backup sync daemon: nothing new reaches its table"
    if truncated:
        verdict += "; a key list was cut at 100000 keys: the count is not exact"
    return {
        "healthy": not missing, "would_lose": len(missing), "by_state": dict(by_state), "total": total,
        "backup_total": digests[backup]["total"], "stale": len(stale), "master": master, "backup": backup,
        "roles": roles, "differing_buckets": len(differ), "buckets": n, "truncated": truncated,
        "sample": sorted(missing)[:sample], "verdict": verdict, "seconds": round(time.monotonic() - started, 3),
    }
