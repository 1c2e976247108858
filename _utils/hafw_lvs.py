"""
Load-balancer part of the hafw model: keepalived's LVS settings (virtual
server groups, virtual servers, real servers and their health checks, the
IPVS connection-sync daemon), validated against the cluster's interfaces and
VIPs.
"""

import re

LB_ALGOS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh")
LB_KINDS = ("NAT", "DR", "TUN")
PROTOCOLS = ("TCP", "UDP", "SCTP")
CHECKS = {
    "SMTP_CHECK": {"connect_timeout", "retry", "delay_before_retry", "helo_name", "connect_port"},
    "TCP_CHECK": {"connect_timeout", "retry", "delay_before_retry", "connect_port"},
    "HTTP_GET": {"connect_timeout", "retry", "delay_before_retry", "connect_port", "url"},
}
VS_KEYS = {"group", "address", "port", "protocol", "lb_algo", "lb_kind", "delay_loop",
           "persistence_timeout", "real_servers", "options"}
RS_KEYS = {"address", "port", "weight", "inhibit_on_failure", "check", "options"}
LVS_KEYS = {"sync_daemon", "virtual_server_groups", "virtual_servers"}
SYNC_KEYS = {"interface", "instance", "id", "refresh_period", "resync_hold"}
# Semantic defaults of the sync daemon (docs/pillar.md). refresh_period: the
# kernel re-sends every active connection to the backup about this often
# (seconds), so that a restarted load balancer has the whole table again
# after it; 0 keeps the kernel's packet-count rule (the seed's behaviour).
SYNC_DEFAULTS = {"refresh_period": 10}
REFRESH_PERIOD_MAX = 120
# the master's sync thread sends a partly filled message after at most 2 s
# (IPVS_SYNC_FLUSH_TIME): the hold waits for that on top of the period
SYNC_FLUSH_S = 2


def check(chk, path, raw, node_ifaces, vrrp):
    """Validate ``lvs:``; return the normalised settings."""
    lvs = chk.mapping(path, raw, LVS_KEYS, ("virtual_servers",))
    vips = {v.ip: i["name"] for i in (vrrp["instances"] if vrrp else []) for v in i["vips"]}
    nets = {a.network for ifs in node_ifaces.values() for al in ifs.values() for a in al}
    out = {"sync_daemon": None, "groups": {}, "virtual_servers": []}

    for gname, members in chk.mapping([*path, "virtual_server_groups"], lvs.get("virtual_server_groups")).items():
        gpath = [*path, "virtual_server_groups", gname]
        chk.name(gpath, gname, "virtual server group name")
        parsed = []
        for i, member in enumerate(chk.sequence(gpath, members)):
            addr, port = _endpoint(chk, [*gpath, i], member)
            if addr is not None and addr not in vips:
                chk.fail([*gpath, i], f"{addr} is not a VIP of any VRRP instance of this cluster")
            if addr is not None and port is not None:
                parsed.append({"address": str(addr), "port": port})
        out["groups"][gname] = parsed

    for i, vs in enumerate(chk.sequence([*path, "virtual_servers"], lvs.get("virtual_servers"))):
        vpath = [*path, "virtual_servers", i]
        out["virtual_servers"].append(_virtual_server(chk, vpath, vs, out["groups"], vips, nets))

    if lvs.get("sync_daemon") is not None:
        out["sync_daemon"] = _sync_daemon(chk, [*path, "sync_daemon"], lvs["sync_daemon"], node_ifaces, vrrp)
    return out


def _sync_daemon(chk, spath, raw, node_ifaces, vrrp):
    """Validate ``lvs:sync_daemon:``; return it with the formula's defaults."""
    sd = chk.mapping(spath, raw, SYNC_KEYS, ("interface", "instance"))
    ifname = sd.get("interface")
    if ifname is not None and chk.ifname([*spath, "interface"], ifname) is not None:
        for node, ifs in node_ifaces.items():
            if ifname not in ifs:
                chk.fail([*spath, "interface"], f"{node} has no interface {ifname}")
    names = [inst["name"] for inst in (vrrp["instances"] if vrrp else [])]
    if sd.get("instance") is not None and sd["instance"] not in names:
        chk.fail([*spath, "instance"], "{!r} is not a VRRP instance of this cluster ({})".format(
            sd["instance"], ", ".join(names) or "none"))
    if "id" in sd:
        chk.integer([*spath, "id"], sd["id"], 0, 255)
    period = chk.integer([*spath, "refresh_period"], sd.get("refresh_period", SYNC_DEFAULTS["refresh_period"]),
                         0, REFRESH_PERIOD_MAX)
    # The hold's default follows preempt: a node that preempts would take the role back with the
    # table it has; under nopreempt (the seed) a restarted node never takes it from a live master,
    # and once the master is dead waiting adds nothing (no master is left to send it connections)
    # but an outage: the time-based sync alone completes its table (test_lb_pair R11).
    hold = sd.get("resync_hold", bool(period) and bool(vrrp and vrrp.get("preempt", True)))
    if chk.boolean([*spath, "resync_hold"], hold) and period == 0:
        chk.fail([*spath, "resync_hold"], "needs refresh_period above 0: with the kernel's packet-count rule "
                 "(refresh_period 0) a connection is sent again only after up to 50 more packets, so no wait "
                 "makes a restarted load balancer's table complete")
    return {"interface": ifname, "instance": sd.get("instance"), "id": sd.get("id"),
            "refresh_period": period or 0, "resync_hold": hold is True and bool(period)}


def _endpoint(chk, path, member):
    """``"192.168.1.60:25"`` or ``{address: ..., port: ...}`` -> (IPv4Address, port)."""
    if isinstance(member, dict):
        chk.mapping(path, member, {"address", "port"}, ("address", "port"))
        addr, port = member.get("address"), member.get("port")
    else:
        m = re.match(r"^([0-9.]+)[: ](\d+)$", str(member))
        if not m:
            chk.fail(path, f"{member!r} must be 'address:port' or a mapping with address and port")
            return None, None
        addr, port = m.group(1), int(m.group(2))
    addr = chk.address([*path, "address"], addr)
    lo_hi = chk.port([*path, "port"], port)
    return addr, (lo_hi[0] if lo_hi else None)


def _virtual_server(chk, path, vs, groups, vips, nets):
    vs = chk.mapping(path, vs, VS_KEYS, ("real_servers",))
    out = {"group": vs.get("group"), "address": None, "port": None}
    if ("group" in vs) == ("address" in vs):
        chk.fail(path, "give either group or address+port")
    elif "group" in vs and vs["group"] not in groups:
        chk.fail([*path, "group"], "{!r} is not a virtual_server_group ({})".format(
            vs["group"], ", ".join(groups) or "none defined"))
    elif "address" in vs:
        addr, port = _endpoint(chk, path, {"address": vs.get("address"), "port": vs.get("port")})
        if addr is not None and addr not in vips:
            chk.fail([*path, "address"], f"{addr} is not a VIP of any VRRP instance of this cluster")
        out.update(address=str(addr) if addr else None, port=port)
    out["protocol"] = chk.choice([*path, "protocol"], vs.get("protocol", "TCP"), PROTOCOLS, "protocol")
    out["lb_algo"] = chk.choice([*path, "lb_algo"], vs.get("lb_algo", "wlc"), LB_ALGOS, "lb_algo")
    out["lb_kind"] = chk.choice([*path, "lb_kind"], vs.get("lb_kind", "NAT"), LB_KINDS, "lb_kind")
    out["delay_loop"] = chk.integer([*path, "delay_loop"], vs.get("delay_loop", 10), 1, 3600)
    if "persistence_timeout" in vs:
        chk.integer([*path, "persistence_timeout"], vs["persistence_timeout"], 1, 2**31 - 1)
    out["persistence_timeout"] = vs.get("persistence_timeout")
    out["options"] = chk.mapping([*path, "options"], vs.get("options"))
    reals = []
    for i, rs in enumerate(chk.sequence([*path, "real_servers"], vs.get("real_servers"))):
        rpath = [*path, "real_servers", i]
        rs = chk.mapping(rpath, rs, RS_KEYS, ("address", "port"))
        addr, port = _endpoint(chk, rpath, {"address": rs.get("address"), "port": rs.get("port")})
        if addr is not None and out["lb_kind"] == "NAT":
            home = [n for n in nets if addr in n]
            if not home:
                chk.fail([*rpath, "address"], f"{addr} is outside the load balancers' networks ("
                         + ", ".join(sorted(map(str, nets))) + "): LVS NAT needs real servers on a directly "
                         "connected back network")
            elif not any(v in n for v in vips for n in home):
                chk.fail([*rpath, "address"], f"no VIP on {home[0]} to be {addr}'s gateway: LVS NAT "
                         "replies must come back through the active load balancer")
        weight = chk.integer([*rpath, "weight"], rs.get("weight", 1), 0, 65535)
        inhibit = rs.get("inhibit_on_failure", False)
        chk.boolean([*rpath, "inhibit_on_failure"], inhibit)
        reals.append({"address": str(addr) if addr else None, "port": port, "weight": weight,
                      "inhibit_on_failure": inhibit, "check": _check(chk, [*rpath, "check"], rs.get("check")),
                      "options": chk.mapping([*rpath, "options"], rs.get("options"))})
    if not reals:
        chk.fail([*path, "real_servers"], "lists no real server")
    out["real_servers"] = reals
    return out


def _check(chk, path, raw):
    if raw is None:
        return None
    raw = chk.mapping(path, raw)
    kind = chk.choice([*path, "type"], raw.get("type"), tuple(CHECKS), "health check type")
    if kind is None:
        return None
    params = {}
    for key, value in raw.items():
        if key == "type":
            continue
        if key not in CHECKS[kind]:
            chk.fail([*path, key], "unknown {} option (allowed: {})".format(kind, ", ".join(sorted(CHECKS[kind]))))
        elif key in ("connect_timeout", "retry", "delay_before_retry"):
            chk.integer([*path, key], value, 0, 3600)
        elif key == "connect_port":
            chk.port([*path, key], value)
        params[key] = value
    return {"type": kind, "params": params}


def derive(lvs, vrrp):
    """Node view: identical on every node of the pair.

    ``ipvs_hold`` (or None): what keepalived's hold check needs, the hold in
    seconds and the VIPs whose presence says this node is already master.
    """
    sd = lvs["sync_daemon"]
    hold = None
    if sd and sd["resync_hold"]:
        hold = {"hold_s": sd["refresh_period"] + SYNC_FLUSH_S,
                "vips": [str(v.ip) for i in (vrrp["instances"] if vrrp else []) for v in i["vips"]]}
    return {"sync_daemon": sd, "groups": lvs["groups"],
            "virtual_servers": lvs["virtual_servers"], "ipvs_hold": hold}


def sysctls(lvs):
    """The IPVS sync sysctls (they exist once ip_vs is loaded; per network namespace).

    With ``sync_refresh_period`` P > 0 the kernel re-sends a connection
    whose state did not change once its timer has moved by
    min(P, max(half its timeout, 10 s)) since its last sync; the packet-count rule
    (``sync_threshold`` T and period N: sync when packets % N == T) still
    applies on top, so "0 1" lets every packet pass it. Together: each
    active connection reaches the backup again about every P seconds.
    """
    sd = lvs["sync_daemon"]
    if not sd or not sd["refresh_period"]:
        return {}
    return {"net.ipv4.vs.sync_threshold": "0 1", "net.ipv4.vs.sync_refresh_period": sd["refresh_period"]}


def kernel_modules(lvs):
    """ip_vs and one scheduler module per algorithm in use."""
    algos = sorted({vs["lb_algo"] for vs in lvs["virtual_servers"] if vs["lb_algo"]})
    return ["ip_vs"] + [f"ip_vs_{a}" for a in algos]
