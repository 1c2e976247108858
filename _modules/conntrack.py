"""
The kernel's connection-tracking table, seen and trimmed through Salt.

Reads go over ctnetlink with ``_utils/hafw_ctnetlink.py`` (a small reader
chosen by measurement: ``bench/conntrack_table.py``); filters the kernel can
apply (family, exact original-direction address, protocol, ports, mark,
source or destination NAT) are sent with the dump request, the others
(networks, TCP state, zone) are applied while the dump streams, so that a
million entries are never held in memory at once. Every function works in
the minion's network namespace.

:depends: Linux with the ``nf_conntrack`` module; root (CAP_NET_ADMIN)

CLI Example:

.. code-block:: bash

    salt '*fw*' conntrack.count
    salt '*fw*' conntrack.summary top=5
    salt 'fw-cent7i' conntrack.list proto=tcp dport=25 limit=20
"""

import ipaddress
import logging
import os
import socket
import subprocess
import time

from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    import hafw_ctd_stats
    import hafw_ctnetlink
    import hafw_peer
    import hafw_role
    import hafw_syncdiff

    HAS_READER = True
except ImportError:  # _utils not synced yet
    HAS_READER = False

log = logging.getLogger(__name__)
__virtualname__ = "conntrack"
__func_alias__ = {"list_": "list"}

PROC = "/proc/sys/net/netfilter"
STAT = "/proc/net/stat/nf_conntrack"
PROTO_NUMBERS = {name: num for num, name in (hafw_ctnetlink.PROTOCOLS.items() if HAS_READER else ())}


def __virtual__():
    if not HAS_READER:
        return (False, "conntrack: _utils/hafw_ctnetlink.py is not available; run saltutil.sync_all")
    if not os.path.exists(os.path.join(PROC, "nf_conntrack_count")):
        return (False, f"conntrack: {PROC}/nf_conntrack_count is missing: the nf_conntrack module is not loaded")
    return __virtualname__


def _read_int(name):
    with open(os.path.join(PROC, name)) as fh:
        return int(fh.read())


def _kernel_error(exc, what):
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (1, 13):
        return CommandExecutionError(f"cannot {what}: {exc.strerror or exc} (needs root or CAP_NET_ADMIN)")
    return CommandExecutionError(f"cannot {what}: {exc}")


# ---------------------------------------------------------------------------
# filters
# ---------------------------------------------------------------------------
def _network(name, value):
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError as exc:
        raise SaltInvocationError(f"{name}: {value!r} is not an address or a network ({exc})") from None


def _port(name, value):
    if value is None:
        return None
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if not 0 <= port <= 65535:
        raise SaltInvocationError(f"{name}: {value!r} is not a port number (0-65535)")
    return port


def _filters(proto=None, src=None, dst=None, sport=None, dport=None, state=None, mark=None,
             zone=None, nat=None, family=None):
    """Validate the filter arguments; split them into the kernel's part and a Python predicate."""
    kernel, checks = {}, []
    if family not in (None, "ipv4", "ipv6", 4, 6):
        raise SaltInvocationError(f"family: {family!r} must be ipv4 or ipv6")
    fam = {"ipv4": socket.AF_INET, 4: socket.AF_INET, "ipv6": socket.AF_INET6, 6: socket.AF_INET6}.get(family)
    nets = {}
    for name, value in (("src", src), ("dst", dst)):
        if value is None:
            continue
        net = _network(name, value)
        net_fam = socket.AF_INET6 if net.version == 6 else socket.AF_INET
        if fam not in (None, net_fam):
            raise SaltInvocationError(f"{name}: {value} is not of family {family}")
        fam = net_fam
        if net.num_addresses == 1:
            kernel[name] = str(net.network_address)
        else:
            nets[name] = net
    if proto is not None:
        num = PROTO_NUMBERS.get(str(proto).lower())
        if num is None:
            if not str(proto).isdigit() or not 0 <= int(proto) <= 255:
                raise SaltInvocationError(f"proto: {proto!r} is not one of {', '.join(sorted(PROTO_NUMBERS))} "
                                          "or a protocol number")
            num = int(proto)
        kernel["proto"] = num
    for name, value in (("sport", sport), ("dport", dport)):
        port = _port(name, value)
        if port is not None:
            if kernel.get("proto") not in (6, 17, 132, 33, 136):
                raise SaltInvocationError(f"{name} needs proto tcp, udp, sctp, dccp or udplite")
            kernel[name] = port
    if state is not None:
        state = str(state).upper()
        if state not in hafw_ctnetlink.TCP_STATES:
            raise SaltInvocationError(f"state: {state!r} is not a TCP state ({', '.join(hafw_ctnetlink.TCP_STATES)})")
        if kernel.setdefault("proto", 6) != 6:
            raise SaltInvocationError("state is a TCP state: it needs proto tcp")
        checks.append(lambda e: e.get("tcp_state") == state)
    if mark is not None:
        try:
            kernel["mark"] = int(str(mark), 0)
        except ValueError:
            raise SaltInvocationError(f"mark: {mark!r} is not a number") from None
    if zone is not None:
        try:
            zone = int(zone)
        except (TypeError, ValueError):
            raise SaltInvocationError(f"zone: {zone!r} is not a number") from None
        checks.append(lambda e: e.get("zone", 0) == zone)
    if nat not in (None, "snat", "dnat", "any"):
        raise SaltInvocationError(f"nat: {nat!r} must be snat, dnat or any")
    if nat in ("snat", "dnat"):
        bit = hafw_ctnetlink.IPS_SRC_NAT if nat == "snat" else hafw_ctnetlink.IPS_DST_NAT
        kernel.update(status=bit, status_mask=bit)
    elif nat == "any":
        both = hafw_ctnetlink.IPS_SRC_NAT | hafw_ctnetlink.IPS_DST_NAT
        checks.append(lambda e: e.get("status", 0) & both)
    for name, net in nets.items():
        checks.append(lambda e, n=net, k=name: k in e["orig"] and ipaddress.ip_address(e["orig"][k]) in n)
    if fam is None:
        # the kernel filters a tuple only within one family: without an
        # address or family to name it, protocol and ports are checked here
        for key in ("proto", "sport", "dport"):
            if key in kernel:
                value = kernel.pop(key)
                checks.append(lambda e, k=key, v=value: e["orig"].get(k) == v)
    return fam or socket.AF_UNSPEC, kernel, checks


def _matching(family, kernel, checks):
    try:
        for entry in hafw_ctnetlink.dump(family, **kernel):
            if all(check(entry) for check in checks):
                yield entry
    except OSError as exc:
        raise _kernel_error(exc, "read the conntrack table") from exc


def _printable(entry):
    out = dict(entry)
    out["proto"] = hafw_ctnetlink.PROTOCOLS.get(entry["orig"].get("proto"), entry["orig"].get("proto"))
    status = entry.get("status", 0)
    out["flags"] = [name for bit, name in ((hafw_ctnetlink.IPS_ASSURED, "ASSURED"),
                                           (hafw_ctnetlink.IPS_SEEN_REPLY, "SEEN_REPLY"),
                                           (hafw_ctnetlink.IPS_SRC_NAT, "SNAT"),
                                           (hafw_ctnetlink.IPS_DST_NAT, "DNAT")) if status & bit]
    return out


# ---------------------------------------------------------------------------
# functions
# ---------------------------------------------------------------------------
def count():
    """
    The number of entries in the table, from the kernel's own counter (no
    dump: constant time at any table size).

    CLI Example:

    .. code-block:: bash

        salt '*fw*' conntrack.count
    """
    try:
        return _read_int("nf_conntrack_count")
    except OSError as exc:
        raise _kernel_error(exc, "read nf_conntrack_count") from exc


def stats():
    """
    The table's size and the kernel's per-CPU counters: ``count``, ``max``
    (nf_conntrack_max), ``buckets``, ``cpus`` (one dict of counters per CPU
    as ``/proc/net/stat/nf_conntrack`` shows them: found, invalid,
    insert_failed, drop, early_drop, ...) and ``total`` (their sums).

    CLI Example:

    .. code-block:: bash

        salt '*fw*' conntrack.stats
    """
    try:
        out = {"count": _read_int("nf_conntrack_count"), "max": _read_int("nf_conntrack_max"),
               "buckets": _read_int("nf_conntrack_buckets")}
        with open(STAT) as fh:
            header, *rows = fh.read().split("\n")
    except OSError as exc:
        raise _kernel_error(exc, "read the conntrack statistics") from exc
    names = header.split()
    cpus = [dict(zip(names, (int(v, 16) for v in row.split()), strict=False)) for row in rows if row.strip()]
    # "entries" is the global count repeated on every row: not a per-CPU counter
    for cpu in cpus:
        cpu.pop("entries", None)
    out["cpus"] = cpus
    out["total"] = {k: sum(c.get(k, 0) for c in cpus) for k in names if k != "entries"}
    return out


def list_(proto=None, src=None, dst=None, sport=None, dport=None, state=None, mark=None, zone=None,
          nat=None, family=None, limit=100):
    """
    Entries of the table, filtered, at most ``limit`` of them (``limit=0``:
    all; mind the size of the answer).

    proto
        ``tcp``, ``udp``, ``icmp``, ``sctp``, ... or a protocol number
    src, dst
        original-direction source or destination: an address (filtered by
        the kernel) or a network such as ``192.168.1.0/24``
    sport, dport
        original-direction ports (need ``proto``)
    state
        TCP state (``ESTABLISHED``, ``TIME_WAIT``, ...)
    mark, zone
        conntrack mark and zone
    nat
        ``snat``, ``dnat`` or ``any``: NATed entries only
    family
        ``ipv4`` or ``ipv6``

    Each entry: ``orig`` and ``reply`` tuples (src, dst, proto, ports or
    ICMP type/code/id), ``proto``, ``tcp_state``, ``timeout``, ``mark``,
    ``zone``, ``status`` and its ``flags`` (ASSURED, SEEN_REPLY, SNAT, DNAT).

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7i' conntrack.list proto=tcp dport=25 state=ESTABLISHED limit=10
        salt 'fw-cent7i' conntrack.list src=192.168.1.0/24 nat=snat
    """
    try:
        limit = int(limit)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"limit: {limit!r} is not a number") from None
    family, kernel, checks = _filters(proto, src, dst, sport, dport, state, mark, zone, nat, family)
    out = []
    for entry in _matching(family, kernel, checks):
        out.append(_printable(entry))
        if limit and len(out) >= limit:
            break
    return out


def summary(top=10, proto=None, src=None, dst=None, sport=None, dport=None, mark=None, nat=None, family=None):
    """
    What a million entries look like, without shipping a million entries:
    ``entries``, ``by_protocol``, ``tcp_states``, ``snat``, ``dnat``,
    ``assured``, and the ``top`` original-direction sources and
    destinations. One streaming pass; the filters are the kernel's (exact
    addresses, protocol, ports, mark, ``nat`` snat or dnat; a protocol
    without an address counts IPv4 unless ``family=ipv6``).

    CLI Example:

    .. code-block:: bash

        salt '*fw*' conntrack.summary
        salt 'fw-cent7i' conntrack.summary top=3 proto=udp
    """
    if family is None and proto is not None and src is None and dst is None:
        family = "ipv4"  # the kernel filters a protocol within one family
    family, kernel, checks = _filters(proto, src, dst, sport, dport, None, mark, None, nat, family)
    if checks:
        raise SaltInvocationError("summary filters by what the kernel can match: give src/dst as single "
                                  "addresses, and nat as snat or dnat")
    try:
        return hafw_ctnetlink.summary(family, top=int(top), **kernel)
    except OSError as exc:
        raise _kernel_error(exc, "read the conntrack table") from exc


def delete(proto=None, src=None, dst=None, sport=None, dport=None, state=None, mark=None, zone=None,
           nat=None, family=None, all=False):  # pylint: disable=redefined-builtin
    """
    Delete the entries that match the filters (those of ``conntrack.list``).
    At least one filter is required, or ``all=True`` (then see ``flush``).
    Returns ``{"deleted": N, "gone": M}`` (M: entries that ended on their own
    while the deletion ran).

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7i' conntrack.delete src=192.168.1.60 proto=tcp dport=25
    """
    given = [proto, src, dst, sport, dport, state, mark, zone, nat, family]
    if all is not True and given.count(None) == len(given):
        raise SaltInvocationError("delete needs a filter (proto, src, dst, sport, dport, state, mark, zone, "
                                  "nat or family), or all=True to delete every entry")
    family, kernel, checks = _filters(proto, src, dst, sport, dport, state, mark, zone, nat, family)
    try:
        deleted, gone = hafw_ctnetlink.delete(_matching(family, kernel, checks))
    except OSError as exc:
        raise _kernel_error(exc, "delete conntrack entries") from exc
    return {"deleted": deleted, "gone": gone}


def flush(all=False, family=None):  # pylint: disable=redefined-builtin
    """
    Empty the table (every entry, or those of one family). Refused without
    ``all=True``: on a firewall pair this drops every forwarded connection's
    state, and NATed connections die.

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7m' conntrack.flush all=True
    """
    if all is not True:
        raise SaltInvocationError("flush empties the whole table: pass all=True to confirm")
    fam, _kernel, _checks = _filters(family=family)
    before = count()
    try:
        hafw_ctnetlink.flush(fam)
    except OSError as exc:
        raise _kernel_error(exc, "flush the conntrack table") from exc
    return {"flushed": before, "left": count()}


# ---------------------------------------------------------------------------
# conntrackd: the replication daemon, through its UNIX socket (conntrackd -C CONF ...)
# ---------------------------------------------------------------------------
CONNTRACKD = "/usr/sbin/conntrackd"
CONNTRACKD_CONFIG = "/etc/conntrackd/conntrackd.conf"
HOOK_LOG = "/var/log/hafw-conntrackd.log"
HOOK_STATE = "/run/conntrackd/hafw-role"


def _ctd_paths(config):
    """conntrackd binary and config: argument, else the minion's ``conntrack.*`` options, else Debian's."""
    binary = __opts__.get("conntrack.conntrackd_bin", CONNTRACKD)
    config = config or __opts__.get("conntrack.conntrackd_config", CONNTRACKD_CONFIG)
    return binary, config


def _ctd(config, *args, what):
    """Run conntrackd -C config ARGS; its stdout, or a CommandExecutionError that says why not."""
    binary, config = _ctd_paths(config)
    if not os.path.exists(binary):
        raise CommandExecutionError(f"cannot {what}: {binary} is not installed")
    try:
        with open(config) as fh:
            conf = hafw_ctd_stats.read_config(fh.read())
    except OSError as exc:
        raise CommandExecutionError(f"cannot {what}: cannot read {config}: {exc.strerror}") from exc
    res = __salt__["cmd.run_all"]([binary, "-C", config, *args], python_shell=False, ignore_retcode=True)
    if res["retcode"] != 0:
        text = (res.get("stderr") or "") + (res.get("stdout") or "")
        sock = conf.get("socket")
        if "can't connect" in text:
            if sock and not os.path.exists(sock):
                why = f"conntrackd is not running (its socket {sock} does not exist)"
            elif sock and not os.access(sock, os.W_OK):
                why = f"permission denied on conntrackd's socket {sock} (run as root)"
            else:
                why = f"conntrackd does not answer on {sock or 'its socket'}"
        else:
            why = text.strip().splitlines()[-1] if text.strip() else f"exit status {res['retcode']}"
        raise CommandExecutionError(f"cannot {what}: {why}")
    return res.get("stdout") or "", conf


def sync_status(config=None):
    """
    The replication at a glance: ``running``, ``mode`` (ftfw, alarm,
    notrack), ``inject`` (DisableExternalCache), the ``internal`` and
    ``external`` cache sizes (external is None in inject mode),
    ``traffic`` on the sync link, ``errors`` (malformed or lost messages,
    send/receive errors, netlink overruns), the ``resend_queue``,
    ``uptime_min`` and the transition hook's ``last_commit`` (when, exit
    status, duration). When conntrackd is not running: ``running: False``
    and the reason.

    CLI Example:

    .. code-block:: bash

        salt '*fw*' conntrack.sync_status
    """
    try:
        cache_text, conf = _ctd(config, "-s", "cache", what="read conntrackd's caches")
    except CommandExecutionError as exc:
        return {"running": False, "reason": str(exc).split(": ", 1)[-1]}
    cache = hafw_ctd_stats.caches(cache_text)
    net = hafw_ctd_stats.network(_ctd(config, "-s", "network", what="read conntrackd's network stats")[0])
    rt = hafw_ctd_stats.runtime(_ctd(config, "-s", "runtime", what="read conntrackd's runtime stats")[0])
    qs = hafw_ctd_stats.queues(_ctd(config, "-s", "queue", what="read conntrackd's queues")[0])
    try:
        with open(__opts__.get("conntrack.hook_log", HOOK_LOG)) as fh:
            last_commit = hafw_ctd_stats.last_step(fh.read(), "primary", "commit")
    except OSError:
        last_commit = None
    tr = net["traffic"]
    return {
        "running": True, "mode": conf["mode"], "inject": conf["inject"],
        "internal": cache.get("internal", {}).get("active"),
        "external": None if conf["inject"] else cache.get("external", {}).get("active"),
        "traffic": tr,
        "errors": {"malformed": net["recv"].get("malformed_messages", 0),
                   "lost": net["recv"].get("packets_lost", 0),
                   "send": tr.get("errors_sent", 0), "recv": tr.get("errors_recv", 0),
                   "netlink_overrun": rt["netlink"].get("netlink_overrun", 0)},
        "resend_queue": qs.get("rsqueue", {}),
        "uptime_min": rt["uptime_min"],
        "last_commit": last_commit,
    }


def caches(dump=False, limit=100, config=None):
    """
    conntrackd's internal cache (this node's connections) and external
    cache (the peer's), summarised: active objects and the create, update
    and delete counters. ``dump=True`` adds up to ``limit`` entries of
    each, as conntrackd prints them.

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7j' conntrack.caches
        salt 'fw-cent7j' conntrack.caches dump=True limit=10
    """
    text, conf = _ctd(config, "-s", "cache", what="read conntrackd's caches")
    out = hafw_ctd_stats.caches(text)
    if dump:
        for name, flag in (("internal", "-i"), ("external", "-e")):
            if name not in out:
                continue
            lines = _ctd(config, flag, what=f"dump conntrackd's {name} cache")[0].splitlines()
            out[name]["entries"] = [line for line in lines if line.strip()][: int(limit) or None]
    return out


def _action(flag, doing, config):
    _ctd(config, flag, what=doing)
    return {"result": True, "done": doing}


def commit(config=None):
    """
    Write the external cache (the peer's connections) into the kernel
    table, as a new primary does; returns once conntrackd has finished.

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7j' conntrack.commit
    """
    return _action("-c", "commit the external cache into the kernel table", config)


def flush_caches(config=None):
    """
    Empty conntrackd's internal and external caches (not the kernel table).

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7j' conntrack.flush_caches
    """
    return _action("-f", "flush conntrackd's caches", config)


def resync(config=None):
    """
    Rebuild the internal cache from the kernel table (and send it to the
    peer), as a new primary does after its commit.

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7i' conntrack.resync
    """
    return _action("-R", "resync the internal cache with the kernel table", config)


def request_resync(config=None):
    """
    Ask the peer for its whole state (it answers with a dump of its
    table), as a backup does.

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7j' conntrack.request_resync
    """
    return _action("-n", "ask the peer for a full resync", config)


def bulk_send(config=None):
    """
    Send the whole internal cache to the peer.

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7i' conntrack.bulk_send
    """
    return _action("-B", "send a bulk update to the peer", config)


def shorten_timers(config=None):
    """
    Schedule the purge of this node's kernel entries after conntrackd's
    PurgeTimeout (what an old primary does when it becomes backup; not in
    inject mode, where the kernel table is the replica).

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7i' conntrack.shorten_timers
    """
    return _action("-t", "schedule the purge of the kernel entries (PurgeTimeout)", config)


# ---------------------------------------------------------------------------
# the node's VRRP role, and whether conntrackd agrees with it
# ---------------------------------------------------------------------------
def _gate_closed(ctd):
    """True/False: the hook's jump into the takeover gate is in place; None: no gate."""
    chain = ctd.get("gate_chain")
    if not chain:
        return None
    if ctd.get("gate_backend") == "nftables":
        res = __salt__["cmd.run_all"](["nft", "list", "chain", *ctd["gate_table"].split(), "gate_hook"],
                                      python_shell=False, ignore_retcode=True)
        return res["retcode"] == 0 and f"jump {chain}" in res["stdout"]
    res = __salt__["cmd.run_all"](["iptables", "-w", "5", "-t", ctd.get("gate_table", "mangle"), "-C",
                                   "PREROUTING", "-j", chain], python_shell=False, ignore_retcode=True)
    return res["retcode"] == 0


def _instances(node):
    """Per VRRP instance of the node: its VIPs and which of them it holds (one `ip addr`)."""
    vrrp = node.get("vrrp")
    if not vrrp:
        raise CommandExecutionError(f"{node.get('id')} is in no VRRP pair: it has no role")
    res = __salt__["cmd.run_all"](["ip", "-o", "addr", "show"], python_shell=False)
    if res["retcode"] != 0:
        raise CommandExecutionError(f"cannot list the addresses: {res.get('stderr')}")
    return hafw_role.instance_roles(vrrp["instances"], hafw_role.parse_ip_addr(res["stdout"])), vrrp


def vips():
    """
    The VIPs this node holds, per VRRP instance, and the roles they imply:
    the cheap part of ``role`` (one ``ip addr``, no daemon asked), for
    callers that poll, such as the keepalived beacon's fallback.

    CLI Example:

    .. code-block:: bash

        salt '*fw*' conntrack.vips
    """
    instances, vrrp = _instances(__salt__["hafw.node"]())
    roles = {i["role"] for i in instances.values()}
    group = roles.pop() if len(roles) == 1 else "SPLIT"
    return {"group": group, "sync_group": vrrp.get("sync_group"), "instances": instances}


def role(config=None):
    """
    This node's VRRP role and whether the connection-tracking side matches
    it: per instance the VIPs it holds (``MASTER``: all, ``BACKUP``: none,
    ``PARTIAL``), the sync group's role (``SPLIT`` when the instances
    disagree), the transition hook's last transition, the takeover gate,
    conntrackd and keepalived running, ``consistent``, and each problem in
    words.

    CLI Example:

    .. code-block:: bash

        salt '*fw*' conntrack.role
    """
    node = __salt__["hafw.node"]()
    instances, vrrp = _instances(node)
    ctd = node.get("conntrackd")
    hook_role = None
    try:
        with open(__opts__.get("conntrack.hook_state_file", HOOK_STATE)) as fh:
            hook_role = (fh.read().split() or [None])[0]
    except OSError:
        pass
    keepalived = __salt__["cmd.run_all"](["pidof", "keepalived"], python_shell=False, ignore_retcode=True)
    out = hafw_role.judge(instances, hook_role, _gate_closed(ctd) if ctd else None,
                          bool(ctd) and sync_status(config)["running"], keepalived["retcode"] == 0, sync=bool(ctd))
    out["instances"] = instances
    out["sync_group"] = vrrp.get("sync_group")
    return out


# ---------------------------------------------------------------------------
# sync health: the master's table against the backup's replica
# ---------------------------------------------------------------------------
SIDES = ("table", "internal", "replica")


def _read_ctd_config(config):
    _binary, path = _ctd_paths(config)
    try:
        with open(path) as fh:
            return fh.read()
    except OSError as exc:
        raise CommandExecutionError(f"cannot read {path}: {exc.strerror}") from exc


def _table_keys(text):
    """Keys of the kernel entries conntrackd replicates (its Filter From Userspace/Kernelspace)."""
    try:
        yield from hafw_syncdiff.table_keys(text, hafw_ctnetlink.dump(raw=True))
    except OSError as exc:
        raise _kernel_error(exc, "dump the conntrack table") from exc


def _cache_keys(config, flag, what):
    """Keys of a conntrackd cache dump (-i internal, -e external), streamed: a million lines are never held."""
    _ctd(config, "-s", "cache", what=what)  # a clear error when conntrackd does not answer
    binary, path = _ctd_paths(config)
    # Popen, not cmd.run_all: the dump is read line by line instead of as one string
    with subprocess.Popen([binary, "-C", path, flag], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True) as proc:
        for line in proc.stdout:
            parsed = hafw_syncdiff.parse_cache_line(line)
            if parsed:
                yield parsed[0]
    if proc.returncode:
        raise CommandExecutionError(f"cannot {what}: {binary} {flag} exited with {proc.returncode}")


def _side_keys(side, config):
    if side not in SIDES:
        raise SaltInvocationError(f"side: {side!r} must be one of {', '.join(SIDES)}")
    text = _read_ctd_config(config)
    if side == "table":
        return _table_keys(text)
    if side == "internal":
        return _cache_keys(config, "-i", "dump conntrackd's internal cache")
    if hafw_ctd_stats.read_config(text)["inject"]:
        # DisableExternalCache: the peer's states are injected into the kernel table
        return _table_keys(text)
    return _cache_keys(config, "-e", "dump conntrackd's external cache")


def _buckets_arg(buckets):
    try:
        n = int(buckets)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= 1 << 16:
        raise SaltInvocationError(f"buckets: {buckets!r} must be a number of buckets, 1-65536")
    return n


def sync_digest(side="table", buckets=4096, config=None):
    """
    A compact digest of one side of the replication, for comparison with
    the peer's: per bucket the number of entries and the XOR of their
    hashes (original-direction tuple). ``side``: ``table`` (the kernel
    entries conntrackd replicates, after its filter), ``internal``
    (conntrackd's internal cache), ``replica`` (what this node would
    commit or already has: the external cache, or the kernel table in
    inject mode).

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7i' conntrack.sync_digest
        salt 'fw-cent7j' conntrack.sync_digest side=replica buckets=1024
    """
    n = _buckets_arg(buckets)
    digest = hafw_syncdiff.Digest(n)
    started = time.monotonic()
    for k in _side_keys(side, config):
        digest.add(k)
    out = digest.as_data()
    out.update({"side": side, "id": __opts__.get("id"), "taken": time.time(),
                "seconds": round(time.monotonic() - started, 3)})
    return out


def sync_keys(side="table", indexes=None, buckets=4096,
              limit=100000, config=None):
    """
    The keys (``PROTO SRC DST SPORT DPORT``, or ICMP id and type.code) of
    one side whose hash falls into the bucket ``indexes`` of a digest with
    ``buckets`` buckets: the second step of a comparison, for the buckets
    that differ. At most ``limit`` keys (``truncated`` says so).

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7j' conntrack.sync_keys side=replica indexes='[3, 17]'
    """
    n = _buckets_arg(buckets)
    if isinstance(indexes, str):
        indexes = [i for i in indexes.replace(",", " ").split() if i]
    elif isinstance(indexes, int):
        indexes = [indexes]
    try:
        wanted = {int(i) for i in indexes or ()}
    except (TypeError, ValueError):
        raise SaltInvocationError(f"indexes: {indexes!r} must be a list of bucket numbers") from None
    if not wanted or not all(0 <= i < n for i in wanted):
        raise SaltInvocationError(f"indexes: {indexes!r} must be bucket numbers 0-{n - 1}")
    keys, truncated = [], False
    for k in _side_keys(side, config):
        if hafw_syncdiff.bucket_of(k, n) in wanted:
            if len(keys) >= int(limit):
                truncated = True
                break
            keys.append(k)
    return {"side": side, "keys": keys, "truncated": truncated}


def _peer_call(peer, fun, kwargs, timeout):
    return hafw_peer.call(__salt__["publish.publish"], __opts__.get("id"), peer, fun, kwargs, timeout)


def _my_side(config):
    """(this node's side, the peer's side, group role): the master's table against the backup's replica."""
    group = role(config)["group"]
    if group == "MASTER":
        return "table", "replica", group
    if group == "BACKUP":
        return "replica", "table", group
    raise CommandExecutionError(f"this node's VRRP role is {group}: neither master nor backup, nothing to compare")


def sync_health(peer=None, buckets=4096, settle=1.0,
                max_keys=50000, timeout=60, sample=10, config=None):
    """
    Would a failover right now lose connections, and how many? Compares
    the master's kernel table (the entries conntrackd replicates) with the
    backup's replica (its external cache, or its kernel table in inject
    mode), whichever of the two this node is; the peer is reached through
    the salt-master's peer publishing (``publish.publish``).

    Bucketed digests of both sides are compared first; for the buckets that
    differ, the keys are fetched from both sides, and fetched again after
    ``settle`` seconds: an entry counts as missing only if it is missing
    both times (an entry created a moment ago is still on its way to the
    peer). When more than ``max_keys`` keys would have to be fetched, the
    shortfall is extrapolated from a part of the differing buckets
    (``exact: False``).

    Returns ``would_lose`` (entries of the master missing from the
    backup's replica), ``stale`` (replica entries the master no longer
    has: harmless, they expire), the sizes of both sides, a ``sample`` of
    the missing keys, ``verdict`` in words, and the time taken.

    CLI Example:

    .. code-block:: bash

        salt '*fw*' conntrack.sync_health
        salt 'fw-cent7j' conntrack.sync_health settle=2 sample=20
    """
    n = _buckets_arg(buckets)
    started = time.monotonic()
    peers = __salt__["hafw.peers"]()
    peer = peer or (peers[0] if len(peers) == 1 else None)
    if not peer:
        raise SaltInvocationError(f"peer: this node has peers {peers}; name the one to compare with")
    mine_side, peer_side, group = _my_side(config)
    peer_digest = _peer_call(peer, "conntrack.sync_digest", {"side": peer_side, "buckets": n}, timeout)
    local_digest = sync_digest(mine_side, n, config)
    digests = {mine_side: local_digest, peer_side: peer_digest}
    differ = hafw_syncdiff.differing_buckets(digests["table"], digests["replica"])
    table_total, replica_total = digests["table"]["total"], digests["replica"]["total"]
    exact = True
    chosen = differ
    fetch = (hafw_syncdiff.bucket_counts(digests["table"], differ)
             + hafw_syncdiff.bucket_counts(digests["replica"], differ))
    if fetch > int(max_keys):
        exact = False
        chosen = differ[: max(1, len(differ) * int(max_keys) // fetch)]

    def keys_of(side):
        args = {"side": side, "indexes": ",".join(map(str, chosen)), "buckets": n, "limit": int(max_keys) + 1}
        if side == mine_side:
            return set(sync_keys(side, chosen, n, int(max_keys) + 1, config)["keys"])
        return set(_peer_call(peer, "conntrack.sync_keys", args, timeout)["keys"])

    missing = stale = set()
    if chosen:
        table1, replica1 = keys_of("table"), keys_of("replica")
        missing, stale = table1 - replica1, replica1 - table1
        if missing or stale:
            time.sleep(float(settle))
            table2, replica2 = keys_of("table"), keys_of("replica")
            missing &= table2 - replica2
            stale &= replica2 - table2
    scale = len(differ) / len(chosen) if chosen else 1
    would_lose = round(len(missing) * scale)
    master, backup = (__opts__.get("id"), peer) if mine_side == "table" else (peer, __opts__.get("id"))
    if would_lose:
        verdict = (f"a failover now would lose {'about ' if not exact else ''}{would_lose} of the {table_total} "
                   f"replicated connections of {master}: {backup}'s replica lacks them")
    else:
        verdict = f"{backup}'s replica holds every connection {master} replicates: a failover now loses none"
    return {
        "healthy": not would_lose, "would_lose": would_lose, "stale": round(len(stale) * scale), "exact": exact,
        "master": master, "backup": backup, "role": group,
        "table": table_total, "replica": replica_total,
        "differing_buckets": len(differ), "buckets": n,
        "sample": sorted(missing)[: int(sample)],
        "verdict": verdict, "seconds": round(time.monotonic() - started, 3),
    }
