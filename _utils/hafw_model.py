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

import hafw_conntrackd
import hafw_lvs
import hafw_netfilter
import hafw_vrrp
from hafw_check import Checker, merge

ROLES = ("firewall", "loadbalancer")

# Semantic defaults of the model (docs/pillar.md explains each one); the
# VRRP and conntrackd ones are in hafw_vrrp and hafw_conntrackd.
KERNEL_DEFAULTS = {"nf_conntrack_max": 65536, "sysctl": {}, "modules": []}


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


# ---------------------------------------------------------------------------
# kernel, routes
# ---------------------------------------------------------------------------
def _kernel(chk, path, raw):
    kernel = merge(KERNEL_DEFAULTS, chk.mapping(path, raw, allowed=set(KERNEL_DEFAULTS)))
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
    vrrp = hafw_vrrp.check(chk, [*path, "vrrp"], raw["vrrp"], nodes, node_ifaces) if pair else None
    if vrrp:
        hafw_vrrp.check_nodes(chk, path, vrrp, nodes, node_cfg)
    for node, cfg in node_cfg.items():
        for key in ("state", "priority"):
            if key in cfg and not vrrp:
                chk.fail([*path, "nodes", node, key], "is a VRRP setting: the cluster has no vrrp")
    vrrp_ifaces = {i["interface"] for i in vrrp["instances"]} if vrrp else set()
    ctd = None
    if pair and role == "firewall":
        ctd = hafw_conntrackd.check(chk, [*path, "conntrackd"], raw.get("conntrackd"), kernel, vrrp_ifaces,
                                    node_ifaces, nodes)
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
    """Validate every cluster and derive every node; return {minion: derived settings}."""
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
    hafw_vrrp.check_vrids_across(chk, clusters)
    chk.raise_if_any()  # derivation below relies on a structurally valid model
    # per-node derivations can still find problems (overrides)
    derived = {node: _derive(chk, clusters[cname], node) for node, cname in owner.items()}
    chk.raise_if_any()
    return derived


def validate(pillar):
    """Check the whole ``hafw`` pillar; raise ModelError listing every problem."""
    _index(pillar)
    return True


def node(pillar, minion_id):
    """Validate everything, then return the derived settings of ``minion_id``.

    A minion that belongs to no cluster gets ``{"id": ..., "cluster": None,
    "components": []}``: the formula then manages nothing on it.
    """
    derived = _index(pillar)
    if minion_id not in derived:
        return {"id": minion_id, "cluster": None, "role": None, "components": []}
    return derived[minion_id]


def _derive(chk, view, me):
    """Derive one node's settings from its cluster view (plus its overrides)."""
    index = view["nodes"].index(me)
    npath = ["hafw", "clusters", view["name"], "nodes", me]
    cfg = view["node_cfg"][me]
    if cfg.get("override"):
        # Re-validate the cluster with this node's overrides merged in, so an
        # override is held to the same rules as the cluster itself.
        merged = merge(view["raw"], cfg["override"])
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
        per_node = hafw_vrrp.node_state(vrrp, index, cfg)
        vips = [v for i in vrrp["instances"] for v in i["vips"]]
        out["vrrp"] = hafw_vrrp.keepalived_view(vrrp, view, me, per_node)
    ctd = view["conntrackd"]
    if ctd:
        peer_ifaces = view["node_ifaces"].get(peers[0], {}) if len(peers) == 1 else None
        out["conntrackd"] = hafw_conntrackd.derive(ctd, ifaces, peer_ifaces, vips)
        if out.get("vrrp") and vrrp["notify_hook"] is not False:
            out["vrrp"]["notify_hook"] = True
    if view["lvs"]:
        out["lvs"] = hafw_lvs.derive(view["lvs"], vrrp)
    out["firewall"] = None
    if view["firewall"]:
        out["firewall"] = hafw_netfilter.derive(view["firewall"], view, me, out.get("conntrackd"))
    if out.get("conntrackd"):
        ctd_out = out["conntrackd"]
        fw = out["firewall"]
        ctd_out["gate_chain"] = fw["gate_chain"] if fw else ""
        ctd_out["gate_table"] = fw["gate_table"] if fw else "mangle"
        ctd_out["gate_backend"] = fw["backend"] if fw else "iptables"
        # the hook's per-step timeout must outlast the commit of a full table
        # (measured: ~1 s per 100k entries; docs/takeover.md)
        ctd_out["hook_timeout_s"] = max(10, -(-3 * view["kernel"]["nf_conntrack_max"] // 100000))
        # the resync hold (keepalived vrrp_script "HOOK synced") gives up after
        # twice a full table's resync at 100k entries/s (docs/failover-timing.md)
        ctd_out["hold_max_s"] = max(10, 2 * -(-view["kernel"]["nf_conntrack_max"] // 100000))
    if out.get("vrrp"):
        out["vrrp"]["resync_hold"] = bool(out["vrrp"]["resync_hold"] and out["vrrp"].get("notify_hook"))
    out["selinux"] = {
        "module": bool(ctd),
        "booleans": merge({"domain_kernel_load_modules": True} if view["lvs"] else {},
                           view["selinux"].get("booleans")),
        # scripts keepalived runs, labelled bin_t (keepalived_t executes no
        # other file type): the conntrackd hook, the load balancers' hold check
        "scripts": [name for name, on in (("hook", bool(ctd)),
                                          ("ipvs-hold", bool(out.get("lvs") and out["lvs"]["ipvs_hold"]))) if on],
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
    if view["conntrackd"]:
        # no pickup of mid-stream TCP packets: a connection lives on the new
        # master only if it was replicated (a loose pickup re-NATs it wrong and
        # hides a broken sync; measured in docs/takeover.md)
        sysctl["net.netfilter.nf_conntrack_tcp_loose"] = 0
    if view["lvs"]:
        # time-based re-sync of the IPVS connections (hafw_lvs.sysctls)
        sysctl.update(hafw_lvs.sysctls(view["lvs"]))
    sysctl.update(view["kernel"]["sysctl"])
    return sysctl


def _modules(view):
    mods = list(view["kernel"]["modules"])
    if view["lvs"]:
        mods += [m for m in hafw_lvs.kernel_modules(view["lvs"]) if m not in mods]
    return mods


