"""
The hafw cluster model: one pillar describes every cluster; each node's
settings are derived from it.

``validate(pillar)`` checks the whole ``hafw`` pillar and raises
:class:`hafw_check.ModelError` naming every bad key; ``node(pillar, id)``
validates, then returns the derived settings of one minion: its conntrackd
own/peer addresses and ignore list, its keepalived priorities and states,
the peer-only accept rules, and so on. Templates only print what this
returns; they make no decisions of their own.

Platform facts (paths, packages, service names) are not here: they live in
each state tree's ``parameters/``. This module has no Salt imports.
"""

import copy

import hafw_lvs
import hafw_netfilter
from hafw_check import Checker

ROLES = ("firewall", "loadbalancer")
VRRP_STATES = ("MASTER", "BACKUP")
CONNTRACKD_MODES = ("ftfw", "alarm", "notrack")
CONNTRACKD_TRANSPORTS = ("udp", "multicast", "tcp")
CONNTRACKD_PROTOCOLS = ("TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "DCCP", "UDPLITE", "GRE")

# Semantic defaults of the model. docs/pillar.md explains each one.
VRRP_DEFAULTS = {
    "version": 3,
    "advert_int": 1,
    "priority": 100,
    "priority_step": 10,
    "preempt": True,
    "preempt_delay": 0,
    "unicast": False,
    "garp_master_delay": 1,
    "sync_group": None,
    "notify_hook": None,  # None: on when the cluster runs conntrackd
    "track_interfaces": [],  # extra links whose loss makes the node give up
    "track_scripts": {},
    "global_defs": {},
}
CONNTRACKD_DEFAULTS = {
    "enabled": True,
    "interface": None,
    "mode": "ftfw",
    "transport": "udp",
    "port": 3780,
    "multicast_group": "225.0.0.50",
    "checksum": True,
    "snd_socket_buffer": 1249280,
    "rcv_socket_buffer": 1249280,
    "nice": -20,
    "hash_size": 32768,
    "hash_limit": None,  # None: 2 x nf_conntrack_max
    "netlink_buffer_size": 2097152,
    "netlink_buffer_size_max_growth": 8388608,
    "protocols": ["TCP", "UDP", "ICMP"],
    "ignore_addresses": [],
    "ignore_vips": True,
    "disable_external_cache": False,
    # a (re)started node asks its peer for the whole external cache at once;
    # None: on for ftfw and notrack (alarm mode has no such option)
    "startup_resync": None,
    "syslog": True,
    "options": {},
}
KERNEL_DEFAULTS = {"nf_conntrack_max": 65536, "sysctl": {}, "modules": []}


def _merge(base, over):
    """Deep-merge ``over`` onto a copy of ``base`` (dicts merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _clusters(chk, pillar):
    root = chk.mapping(["hafw"], pillar, allowed={"clusters", "lookup"})
    clusters = chk.mapping(["hafw", "clusters"], root.get("clusters"))
    if not clusters:
        chk.fail(["hafw", "clusters"], "no cluster is defined")
    return clusters


# ---------------------------------------------------------------------------
# nodes and interfaces
# ---------------------------------------------------------------------------
NODE_KEYS = {"interfaces", "priority", "state", "override"}
CLUSTER_KEYS = {
    "role", "nodes", "vrrp", "conntrackd", "firewall", "routes", "kernel", "lvs", "selinux",
}


def _interfaces(chk, path, raw):
    """``{ifname: cidr | [cidr, ...]}`` -> ``{ifname: [IPv4Interface, ...]}``."""
    out = {}
    for ifname, addrs in chk.mapping(path, raw).items():
        if chk.ifname([*path, ifname], ifname) is None:
            continue
        if isinstance(addrs, str):
            addrs = [addrs]
        parsed = []
        for i, cidr in enumerate(chk.sequence([*path, ifname], addrs)):
            iface = chk.interface_address([*path, ifname, i] if len(addrs) > 1 else [*path, ifname], cidr)
            if iface is not None:
                parsed.append(iface)
        # a declared interface stays known even when its address is bad, so it
        # is reported once (bad CIDR), not also as missing
        out[ifname] = parsed
        if not addrs:
            chk.fail([*path, ifname], "has no address")
    return out


def _primary(ifaces, ifname):
    return ifaces[ifname][0] if ifaces.get(ifname) else None


# ---------------------------------------------------------------------------
# VRRP
# ---------------------------------------------------------------------------
INSTANCE_KEYS = {"interface", "virtual_router_id", "vips", "track_interfaces", "options"}


def _vrrp(chk, path, raw, nodes, node_ifaces):
    """Validate the cluster's VRRP block; return the normalised cluster view."""
    vrrp = _merge(VRRP_DEFAULTS, chk.mapping(path, raw, allowed=set(VRRP_DEFAULTS) | {"instances"}))
    version = chk.choice([*path, "version"], vrrp["version"], (2, 3), "VRRP version")
    adv = chk.number([*path, "advert_int"], vrrp["advert_int"], 0.01, 255)
    if version == 2 and adv is not None and adv != int(adv):
        chk.fail([*path, "advert_int"], f"{adv}: VRRP version 2 only allows whole seconds; set version: 3")
    chk.integer([*path, "priority"], vrrp["priority"], 1, 254)
    chk.integer([*path, "priority_step"], vrrp["priority_step"], 0, 253)
    chk.boolean([*path, "preempt"], vrrp["preempt"])
    chk.integer([*path, "preempt_delay"], vrrp["preempt_delay"], 0, 1000)
    chk.boolean([*path, "unicast"], vrrp["unicast"])
    chk.integer([*path, "garp_master_delay"], vrrp["garp_master_delay"], 0, 255)
    if vrrp["sync_group"] is not None:
        chk.name([*path, "sync_group"], vrrp["sync_group"], "sync group name")
    chk.mapping([*path, "global_defs"], vrrp["global_defs"])
    for sname, script in chk.mapping([*path, "track_scripts"], vrrp["track_scripts"]).items():
        spath = [*path, "track_scripts", sname]
        chk.name(spath, sname, "track script name")
        script = chk.mapping(spath, script, {"script", "interval", "weight", "fall", "rise", "timeout"}, ("script",))
        if "weight" in script:
            chk.integer([*spath, "weight"], script["weight"], -253, 253)

    instances = chk.mapping([*path, "instances"], vrrp.get("instances"))
    if not instances:
        chk.fail([*path, "instances"], "a pair needs at least one VRRP instance")
    seen_vrid, seen_vip, norm = {}, {}, []
    for iname, inst in instances.items():
        ipath = [*path, "instances", iname]
        chk.name(ipath, iname, "VRRP instance name")
        inst = chk.mapping(ipath, inst, INSTANCE_KEYS, ("interface", "virtual_router_id", "vips"))
        ifname = inst.get("interface")
        vrid = chk.integer([*ipath, "virtual_router_id"], inst.get("virtual_router_id"), 1, 255)
        if ifname is not None and chk.ifname([*ipath, "interface"], ifname) is not None:
            for node in nodes:
                if ifname not in node_ifaces.get(node, {}):
                    chk.fail(["hafw", "clusters", path[2], "nodes", node, "interfaces", ifname],
                             f"is missing: VRRP instance {iname} runs on {ifname}")
        if vrid is not None and ifname is not None:
            if (ifname, vrid) in seen_vrid:
                chk.fail([*ipath, "virtual_router_id"],
                         f"{vrid} is already used on {ifname} by instance {seen_vrid[(ifname, vrid)]}")
            seen_vrid[(ifname, vrid)] = iname
        vips = []
        for n, vip in enumerate(chk.sequence([*ipath, "vips"], inst.get("vips"))):
            vpath = [*ipath, "vips", n]
            if isinstance(vip, str) and "/" not in vip:
                vip = f"{vip}/32"
            iface = chk.interface_address(vpath, vip) if vip and not str(vip).endswith("/32") else None
            if iface is None and isinstance(vip, str) and vip.endswith("/32"):
                chk.fail(vpath, f"{vip!r}: give the VIP with its subnet's prefix, like 192.168.0.40/24")
            if iface is None:
                continue
            if str(iface.ip) in seen_vip:
                chk.fail(vpath, f"{iface.ip} is already a VIP of instance {seen_vip[str(iface.ip)]}")
            seen_vip[str(iface.ip)] = iname
            for node in nodes:
                local = node_ifaces.get(node, {}).get(ifname, [])
                if local and not any(iface.ip in a.network for a in local):
                    chk.fail(vpath, f"{iface} is outside every subnet of {node}'s {ifname} "
                             "({})".format(", ".join(str(a.network) for a in local)))
                if any(iface.ip == a.ip for a in local):
                    chk.fail(vpath, f"{iface.ip} is {node}'s own address on {ifname}, not a free VIP")
            vips.append(iface)
        if not vips and inst.get("vips") is not None:
            chk.fail([*ipath, "vips"], "needs at least one virtual IP")
        chk.mapping([*ipath, "options"], inst.get("options"))
        norm.append({"name": iname, "interface": ifname, "virtual_router_id": vrid,
                     "vips": vips, "track_interfaces": inst.get("track_interfaces"),
                     "options": inst.get("options") or {}})
    if len(norm) > 1 and not vrrp["sync_group"]:
        vrrp["sync_group"] = "VG_" + path[2].upper().replace("-", "_")
    if len(norm) < 2:
        vrrp["sync_group"] = None  # keepalived refuses a sync group of one instance
    if vrrp["sync_group"]:
        for sname, script in vrrp["track_scripts"].items():
            if isinstance(script, dict) and script.get("weight"):
                # keepalived: "ignoring tracked script with weights due to SYNC group"
                chk.fail([*path, "track_scripts", sname, "weight"], "a weight is ignored by keepalived in a "
                         "sync group (a failing script must fault the whole group): remove it")
    vrrp["instances"] = norm
    return vrrp


def _derive_vrrp(vrrp, nodes, index, node_cfg, chk, npath):
    """Per-node keepalived VRRP settings: state, priority, unicast peers."""
    me = nodes[index]
    priority = node_cfg.get("priority", vrrp["priority"] - index * vrrp["priority_step"])
    if chk.integer([*npath, "priority"], priority, 1, 254) is None:
        chk.fail([*npath, "priority"], f"derived priority {priority} is outside 1-254; "
                 "lower vrrp:priority_step or set the node's priority")
    default_state = "MASTER" if (vrrp["preempt"] and index == 0) else "BACKUP"
    state = node_cfg.get("state", default_state)
    state = chk.choice([*npath, "state"], state, VRRP_STATES, "VRRP state")
    if state == "MASTER" and not vrrp["preempt"]:
        chk.fail([*npath, "state"], "MASTER with preempt: false; keepalived's nopreempt needs state BACKUP")
    return {"state": state, "priority": priority, "me": me}


# ---------------------------------------------------------------------------
# conntrackd
# ---------------------------------------------------------------------------
def _conntrackd(chk, path, raw, kernel, vrrp_ifaces, node_ifaces, nodes):
    ctd = _merge(CONNTRACKD_DEFAULTS, chk.mapping(path, raw, allowed=set(CONNTRACKD_DEFAULTS)))
    if chk.boolean([*path, "enabled"], ctd["enabled"]) is False:
        return None
    ctd["mode"] = chk.choice([*path, "mode"], ctd["mode"], CONNTRACKD_MODES, "conntrackd sync mode")
    ctd["transport"] = chk.choice([*path, "transport"], ctd["transport"], CONNTRACKD_TRANSPORTS, "transport")
    if ctd["mode"] == "notrack" and ctd["transport"] == "multicast":
        pass  # valid: NOTRACK over multicast is the upstream example
    ifname = ctd["interface"]
    if ifname is None:
        chk.fail([*path, "interface"], "is required: the dedicated sync link")
    elif chk.ifname([*path, "interface"], ifname) is not None:
        if all(c in "0123456789abcdefABCDEF" for c in ifname):
            # conntrackd's config parser reads such a word as a number
            chk.fail([*path, "interface"], f"{ifname!r}: conntrackd cannot parse an interface name made of "
                     "hex digits only; rename the link")
        if ifname in vrrp_ifaces:
            chk.fail([*path, "interface"], f"{ifname} also carries VRRP; the sync link must be dedicated")
        for node in nodes:
            if ifname not in node_ifaces.get(node, {}):
                chk.fail(["hafw", "clusters", path[2], "nodes", node, "interfaces", ifname],
                         f"is missing: conntrackd syncs over {ifname}")
    chk.port([*path, "port"], ctd["port"])
    if ctd["transport"] == "multicast":
        grp = chk.address([*path, "multicast_group"], ctd["multicast_group"])
        if grp is not None and not grp.is_multicast:
            chk.fail([*path, "multicast_group"], f"{grp} is not a multicast address")
    elif ctd["transport"] in ("udp", "tcp") and len(nodes) != 2:
        chk.fail([*path, "transport"], f"{ctd['transport']} sync is point-to-point: the cluster must have "
                 f"exactly two nodes (it has {len(nodes)}); use multicast for more")
    chk.boolean([*path, "checksum"], ctd["checksum"])
    for key in ("snd_socket_buffer", "rcv_socket_buffer", "netlink_buffer_size",
                "netlink_buffer_size_max_growth", "hash_size"):
        chk.integer([*path, key], ctd[key], 1024, 2**31 - 1)
    chk.integer([*path, "nice"], ctd["nice"], -20, 19)
    if isinstance(ctd["hash_size"], int) and ctd["hash_size"] <= 8192:
        # measured with conntrackd 1.4.7: with HashSize <= 8192 a flush (-f)
        # after a commit is ignored ("commit still in progress") for good
        chk.fail([*path, "hash_size"], f"{ctd['hash_size']} is too small: conntrackd ignores cache flushes "
                 "with HashSize 8192 or less; use at least 16384")
    ctmax = kernel["nf_conntrack_max"]
    if ctd["hash_limit"] is None:
        ctd["hash_limit"] = 2 * ctmax if isinstance(ctmax, int) else None
    elif chk.integer([*path, "hash_limit"], ctd["hash_limit"], 1, 2**31 - 1) is not None:
        if isinstance(ctmax, int) and ctd["hash_limit"] < 2 * ctmax:
            chk.fail([*path, "hash_limit"], f"{ctd['hash_limit']} is less than 2 x kernel:nf_conntrack_max "
                     f"({2 * ctmax}); conntrackd would drop entries the kernel keeps")
    nb, nbmax = ctd["netlink_buffer_size"], ctd["netlink_buffer_size_max_growth"]
    if isinstance(nb, int) and isinstance(nbmax, int) and nbmax < nb:
        chk.fail([*path, "netlink_buffer_size_max_growth"], f"{nbmax} is smaller than netlink_buffer_size {nb}")
    protos = chk.sequence([*path, "protocols"], ctd["protocols"])
    ctd["protocols"] = [chk.choice([*path, "protocols", i], p, CONNTRACKD_PROTOCOLS, "protocol")
                        for i, p in enumerate(protos)]
    if not protos:
        chk.fail([*path, "protocols"], "lists no protocol: nothing would be synced")
    for i, addr in enumerate(chk.sequence([*path, "ignore_addresses"], ctd["ignore_addresses"])):
        chk.address([*path, "ignore_addresses", i], addr)
    chk.boolean([*path, "ignore_vips"], ctd["ignore_vips"])
    chk.boolean([*path, "disable_external_cache"], ctd["disable_external_cache"])
    if ctd["disable_external_cache"] and ctd["mode"] == "alarm":
        chk.fail([*path, "disable_external_cache"], "is not available in mode alarm (conntrackd refuses it)")
    if ctd["startup_resync"] is None:
        ctd["startup_resync"] = ctd["mode"] != "alarm"
    elif chk.boolean([*path, "startup_resync"], ctd["startup_resync"]) and ctd["mode"] == "alarm":
        chk.fail([*path, "startup_resync"], "is not available in mode alarm")
    if not isinstance(ctd["syslog"], bool) and ctd["syslog"] not in (
            "daemon", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"):
        chk.fail([*path, "syslog"], f"{ctd['syslog']!r} must be true, false or a syslog facility (daemon, local0-7)")
    opts = chk.mapping([*path, "options"], ctd["options"], allowed={"sync", "general", "mode"})
    for section, lines in opts.items():
        chk.mapping([*path, "options", section], lines)
    return ctd


def _derive_conntrackd(ctd, ifaces, peer_ifaces, vips):
    own = _primary(ifaces, ctd["interface"])
    peer = _primary(peer_ifaces, ctd["interface"]) if peer_ifaces else None
    ignore = ["127.0.0.1"]
    for addrs in ifaces.values():
        ignore += [str(a.ip) for a in addrs]
    if ctd["ignore_vips"]:
        ignore += [str(v.ip) for v in vips]
    ignore += [str(a) for a in ctd["ignore_addresses"]]
    out = {k: v for k, v in ctd.items() if k not in ("ignore_addresses", "ignore_vips", "enabled")}
    out.update(own_address=str(own.ip), peer_address=str(peer.ip) if peer else None,
               ignore=list(dict.fromkeys(ignore)))
    return out


# ---------------------------------------------------------------------------
# kernel, routes
# ---------------------------------------------------------------------------
def _kernel(chk, path, raw):
    kernel = _merge(KERNEL_DEFAULTS, chk.mapping(path, raw, allowed=set(KERNEL_DEFAULTS)))
    chk.integer([*path, "nf_conntrack_max"], kernel["nf_conntrack_max"], 1024, 2**31 - 1)
    for key, value in chk.mapping([*path, "sysctl"], kernel["sysctl"]).items():
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            chk.fail([*path, "sysctl", key], f"must be a number or a string, got {value!r}")
    for i, mod in enumerate(chk.sequence([*path, "modules"], kernel["modules"])):
        chk.name([*path, "modules", i], mod, "kernel module name")
    return kernel


def _routes(chk, path, raw, ifaces_by_node):
    out = []
    for i, route in enumerate(chk.sequence(path, raw)):
        rpath = [*path, i]
        route = chk.mapping(rpath, route, {"to", "via"}, ("to", "via"))
        if "to" not in route or "via" not in route:
            continue
        to = "0.0.0.0/0" if route["to"] == "default" else route["to"]
        net = chk.network([*rpath, "to"], to)
        via = chk.address([*rpath, "via"], route["via"])
        if via is not None:
            off = [node for node, ifaces in ifaces_by_node.items()
                   if not any(via in a.network for addrs in ifaces.values() for a in addrs)]
            if off:
                chk.fail([*rpath, "via"], "gateway {} is in no subnet of {}".format(via, ", ".join(off)))
        if net is not None and via is not None:
            out.append({"to": "default" if route["to"] == "default" else str(net), "via": str(via)})
    return out


# ---------------------------------------------------------------------------
# the whole model
# ---------------------------------------------------------------------------
def _cluster(chk, cname, raw):
    """Validate one cluster; return its normalised view (or None if unusable)."""
    path = ["hafw", "clusters", cname]
    chk.name(path, cname, "cluster name")
    raw = chk.mapping(path, raw, CLUSTER_KEYS, ("role", "nodes"))
    role = chk.choice([*path, "role"], raw.get("role"), ROLES, "role") if "role" in raw else None
    nodes_raw = chk.mapping([*path, "nodes"], raw.get("nodes"))
    if "nodes" in raw and not nodes_raw:
        chk.fail([*path, "nodes"], "lists no node")
    nodes, node_ifaces, node_cfg = [], {}, {}
    for node, cfg in nodes_raw.items():
        npath = [*path, "nodes", node]
        chk.name(npath, node, "minion id")
        cfg = chk.mapping(npath, cfg, NODE_KEYS, ("interfaces",))
        node_ifaces[node] = _interfaces(chk, [*npath, "interfaces"], cfg.get("interfaces"))
        chk.mapping([*npath, "override"], cfg.get("override"), allowed=CLUSTER_KEYS - {"role", "nodes"})
        nodes.append(node)
        node_cfg[node] = cfg
    _check_subnets(chk, path, node_ifaces)

    pair = "vrrp" in raw
    if pair and len(nodes) < 2:
        chk.fail([*path, "nodes"], f"a cluster with vrrp is a pair: it needs at least two nodes, it has {len(nodes)}")
    if not pair and len(nodes) > 1:
        chk.fail([*path, "vrrp"],
                 f"is required: the cluster has {len(nodes)} nodes and nothing moves a VIP between them")
    kernel = _kernel(chk, [*path, "kernel"], raw.get("kernel"))
    vrrp = _vrrp(chk, [*path, "vrrp"], raw["vrrp"], nodes, node_ifaces) if pair else None
    vrrp_ifaces = {i["interface"] for i in vrrp["instances"]} if vrrp else set()
    ctd = None
    if pair and role == "firewall":
        ctd = _conntrackd(chk, [*path, "conntrackd"], raw.get("conntrackd"), kernel, vrrp_ifaces, node_ifaces, nodes)
    elif "conntrackd" in raw:
        chk.fail([*path, "conntrackd"], "only a firewall pair (role firewall with vrrp) runs conntrackd")
    routes = _routes(chk, [*path, "routes"], raw.get("routes"), node_ifaces)
    vips = [v for i in (vrrp["instances"] if vrrp else []) for v in i["vips"]]
    fw = hafw_netfilter.check(chk, [*path, "firewall"], raw.get("firewall"), node_ifaces, vips, routes)
    if role == "loadbalancer":
        lvs = hafw_lvs.check(chk, [*path, "lvs"], raw.get("lvs"), node_ifaces, vrrp)
    else:
        lvs = None
        if "lvs" in raw:
            chk.fail([*path, "lvs"], "only a loadbalancer cluster has lvs settings")
    selinux = chk.mapping([*path, "selinux"], raw.get("selinux"), {"booleans", "module"})
    return {"name": cname, "role": role, "nodes": nodes, "node_ifaces": node_ifaces,
            "node_cfg": node_cfg, "vrrp": vrrp, "conntrackd": ctd, "kernel": kernel,
            "routes": routes, "firewall": fw, "lvs": lvs, "selinux": selinux, "raw": raw}


def _check_subnets(chk, path, node_ifaces):
    """Nodes of a cluster share each subnet and never an address."""
    owners = {}
    by_if = {}
    for node, ifaces in node_ifaces.items():
        for ifname, addrs in ifaces.items():
            for a in addrs:
                if a.ip in owners:
                    chk.fail([*path, "nodes", node, "interfaces", ifname], f"{a.ip} is also {owners[a.ip]}'s address")
                owners[a.ip] = f"{node}"
            by_if.setdefault(ifname, {})[node] = {a.network for a in addrs}
    for ifname, nets in by_if.items():
        first_node, first = next(iter(nets.items()))
        for node, mine in nets.items():
            if not (mine & first):
                chk.fail([*path, "nodes", node, "interfaces", ifname],
                         "is in {} but {}'s {} is in {}: a cluster's nodes share each link".format(
                             ", ".join(map(str, mine)), first_node, ifname, ", ".join(map(str, first))))


def _index(pillar):
    """Validate every cluster; return ({cluster: view}, {minion: cluster})."""
    chk = Checker()
    clusters = {}
    for cname, raw in _clusters(chk, pillar).items():
        clusters[cname] = _cluster(chk, cname, raw)
    owner = {}
    for cname, view in clusters.items():
        for node in view["nodes"]:
            if node in owner:
                chk.fail(["hafw", "clusters", cname, "nodes", node], f"is already a node of cluster {owner[node]}")
            owner[node] = cname
    _check_vrids_across(chk, clusters)
    chk.raise_if_any()  # derivation below relies on a structurally valid model
    # per-node derivations can still find problems (overrides, priorities)
    for view in clusters.values():
        for node in view["nodes"]:
            _derive(chk, view, node)
    chk.raise_if_any()
    return clusters, owner


def _check_vrids_across(chk, clusters):
    """Two clusters on one subnet must not share a VRID (their adverts would collide)."""
    seen = {}
    for cname, view in clusters.items():
        if not view["vrrp"]:
            continue
        for inst in view["vrrp"]["instances"]:
            first = view["nodes"][0]
            for a in view["node_ifaces"].get(first, {}).get(inst["interface"], []):
                key = (a.network, inst["virtual_router_id"])
                if key in seen and seen[key][0] != cname:
                    chk.fail(["hafw", "clusters", cname, "vrrp", "instances", inst["name"], "virtual_router_id"],
                             f"{inst['virtual_router_id']} is already used on {a.network} by cluster "
                             f"{seen[key][0]} (instance {seen[key][1]})")
                seen[key] = (cname, inst["name"])


def validate(pillar):
    """Check the whole ``hafw`` pillar; raise ModelError listing every problem."""
    _index(pillar)
    return True


def node(pillar, minion_id):
    """Validate everything, then return the derived settings of ``minion_id``.

    A minion that belongs to no cluster gets ``{"id": ..., "cluster": None,
    "components": []}``: the formula then manages nothing on it.
    """
    clusters, owner = _index(pillar)
    if minion_id not in owner:
        return {"id": minion_id, "cluster": None, "role": None, "components": []}
    chk = Checker()
    out = _derive(chk, clusters[owner[minion_id]], minion_id)
    chk.raise_if_any()
    return out


def _derive(chk, view, me):
    """Derive one node's settings from its cluster view (plus its overrides)."""
    index = view["nodes"].index(me)
    npath = ["hafw", "clusters", view["name"], "nodes", me]
    cfg = view["node_cfg"][me]
    if cfg.get("override"):
        # Re-validate the cluster with this node's overrides merged in, so an
        # override is held to the same rules as the cluster itself.
        merged = _merge(view["raw"], cfg["override"])
        merged["nodes"] = {n: {k: v for k, v in c.items() if k != "override"} for n, c in view["node_cfg"].items()}
        sub = Checker()
        view = _cluster(sub, view["name"], merged)
        for key, msg in sub.problems:
            chk.fail([*npath, "override"], f"{key}: {msg}")
        if sub.problems:
            return None
    ifaces = view["node_ifaces"].get(me, {})
    peers = [n for n in view["nodes"] if n != me]
    vrrp = view["vrrp"]
    out = {
        "id": me, "cluster": view["name"], "role": view["role"], "index": index,
        "pair": vrrp is not None, "peers": peers,
        "interfaces": {k: [str(a) for a in v] for k, v in ifaces.items()},
        "routes": view["routes"],
        "kernel": {"sysctl": _sysctls(view), "modules": _modules(view),
                   "nf_conntrack_max": view["kernel"]["nf_conntrack_max"]},
    }
    vips = []
    if vrrp:
        per_node = _derive_vrrp(vrrp, view["nodes"], index, cfg, chk, npath)
        vips = [v for i in vrrp["instances"] for v in i["vips"]]
        out["vrrp"] = _keepalived_view(vrrp, view, me, per_node)
    ctd = view["conntrackd"]
    if ctd:
        peer_ifaces = view["node_ifaces"].get(peers[0], {}) if len(peers) == 1 else None
        out["conntrackd"] = _derive_conntrackd(ctd, ifaces, peer_ifaces, vips)
        if out.get("vrrp") and vrrp["notify_hook"] is not False:
            out["vrrp"]["notify_hook"] = True
    if view["lvs"]:
        out["lvs"] = hafw_lvs.derive(view["lvs"], vrrp)
    out["firewall"] = None
    if view["firewall"]:
        out["firewall"] = hafw_netfilter.derive(view["firewall"], view, me, out.get("conntrackd"))
    out["selinux"] = {
        "module": bool(ctd),
        "booleans": _merge({"domain_kernel_load_modules": True} if view["lvs"] else {},
                           view["selinux"].get("booleans")),
    }
    # In apply order: the SELinux module must be in place before keepalived
    # can run the hook; the ruleset before the daemons that need its openings.
    out["components"] = [c for c, on in (
        ("kernel", True), ("selinux", bool(ctd) or bool(view["lvs"])),
        ("iptables", out["firewall"] is not None), ("conntrackd", bool(ctd)),
        ("keepalived", vrrp is not None),
    ) if on]
    return out


def _sysctls(view):
    sysctl = {"net.ipv4.ip_forward": 1}
    if view["role"] == "firewall":
        sysctl["net.netfilter.nf_conntrack_max"] = view["kernel"]["nf_conntrack_max"]
    sysctl.update(view["kernel"]["sysctl"])
    return sysctl


def _modules(view):
    mods = list(view["kernel"]["modules"])
    if view["lvs"]:
        mods += [m for m in hafw_lvs.kernel_modules(view["lvs"]) if m not in mods]
    return mods


def _keepalived_view(vrrp, view, me, per_node):
    """Everything keepalived.conf needs for this node, in template order."""
    ifaces = view["node_ifaces"][me]
    instances = []
    for inst in vrrp["instances"]:
        own = _primary(ifaces, inst["interface"])
        peers = [str(_primary(view["node_ifaces"][n], inst["interface"]).ip) for n in view["nodes"] if n != me]
        track = inst["track_interfaces"]
        if track is None:
            track = vrrp["track_interfaces"]
        instances.append({
            "name": inst["name"], "interface": inst["interface"], "state": per_node["state"],
            "virtual_router_id": inst["virtual_router_id"], "priority": per_node["priority"],
            "advert_int": vrrp["advert_int"], "version": vrrp["version"], "preempt": vrrp["preempt"],
            "preempt_delay": vrrp["preempt_delay"], "garp_master_delay": vrrp["garp_master_delay"],
            "unicast_src_ip": str(own.ip) if vrrp["unicast"] else None,
            "unicast_peers": peers if vrrp["unicast"] else [],
            "vips": [{"address": str(v.ip), "prefixlen": v.network.prefixlen,
                      "brd": str(v.network.broadcast_address), "dev": inst["interface"]}
                     for v in inst["vips"]],
            "track_interfaces": list(track or []),
            "track_scripts": sorted(vrrp["track_scripts"]),
            "options": inst["options"],
        })
    return {
        "sync_group": vrrp["sync_group"], "instances": instances,
        "track_scripts": vrrp["track_scripts"], "global_defs": vrrp["global_defs"],
        "notify_hook": False, "state": per_node["state"], "priority": per_node["priority"],
        "vrrp_interfaces": sorted({i["interface"] for i in instances}),
        "peer_addresses": {i["interface"]: i["unicast_peers"] or
                           [str(_primary(view["node_ifaces"][n], i["interface"]).ip)
                            for n in view["nodes"] if n != me] for i in instances},
    }

