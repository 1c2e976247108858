"""
VRRP part of the hafw model: validate ``vrrp:`` (instances, VIPs, VRIDs,
priorities, states) and build the keepalived view of one node.
"""

from hafw_check import merge, primary

VRRP_STATES = ("MASTER", "BACKUP")
DEFAULTS = {
    "version": 3,
    # sub-second failover by default: 3 adverts + skew = 0.37 s at priority 70;
    # no spurious transition in a 10-minute CPU soak (docs/failover-timing.md)
    "advert_int": 0.1,
    "priority": 100,
    "priority_step": 10,
    "preempt": True,
    "preempt_delay": 0,
    "unicast": False,
    "garp_master_delay": 1,
    # the master re-announces its VIPs every N seconds (0: only after a
    # takeover): a backup that took over for a moment (a master stalled past
    # the 0.37 s down interval, and deaf to the backup's adverts meanwhile,
    # e.g. during a reload on a loaded machine) leaves the neighbours' ARP
    # entries on its MAC, where new connections meet the closed gate; found in
    # CI (docs/failover-scenarios.md, R12)
    "garp_master_refresh": 10,
    # after a boot, keep the sync group in FAULT until conntrackd's startup
    # resync has brought the peer's table (a vrrp_script calling the hook),
    # so that a rebooted node does not take the VIPs back with half a table;
    # only where the cluster runs conntrackd
    "resync_hold": True,
    # files keepalived tracks so that the vrrp_sync states can demote this
    # node (maintenance) and hand the master role over (docs/operating.md)
    "maintenance": True,
    "sync_group": None,
    "notify_hook": None,  # None: on when the cluster runs conntrackd
    "track_interfaces": [],  # extra links whose loss makes the node give up
    "track_scripts": {},
    "global_defs": {},
}


INSTANCE_KEYS = {"interface", "virtual_router_id", "vips", "track_interfaces", "options"}


def check(chk, path, raw, nodes, node_ifaces):
    """Validate the cluster's VRRP block; return the normalised cluster view."""
    vrrp = merge(DEFAULTS, chk.mapping(path, raw, allowed=set(DEFAULTS) | {"instances"}))
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
    chk.integer([*path, "garp_master_refresh"], vrrp["garp_master_refresh"], 0, 3600)
    chk.boolean([*path, "resync_hold"], vrrp["resync_hold"])
    chk.boolean([*path, "maintenance"], vrrp["maintenance"])
    if vrrp["sync_group"] is not None:
        chk.name([*path, "sync_group"], vrrp["sync_group"], "sync group name")
    chk.mapping([*path, "global_defs"], vrrp["global_defs"])
    _check_known_interfaces(chk, [*path, "track_interfaces"],
                            chk.sequence([*path, "track_interfaces"], vrrp["track_interfaces"]), node_ifaces)
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
        vips = _instance_vips(chk, ipath, inst.get("vips"), ifname, node_ifaces, seen_vip)
        track = chk.sequence([*ipath, "track_interfaces"], inst.get("track_interfaces"))
        _check_known_interfaces(chk, [*ipath, "track_interfaces"], track, node_ifaces)
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


def _instance_vips(chk, ipath, raw, ifname, node_ifaces, seen_vip):
    """An instance's VIPs: CIDR inside the subnet of its interface on every node."""
    vips = []
    for n, vip in enumerate(chk.sequence([*ipath, "vips"], raw)):
        vpath = [*ipath, "vips", n]
        if not isinstance(vip, str) or "/" not in vip or vip.endswith("/32"):
            # keepalived takes a bare address as /32; on a shared subnet that
            # leaves the VIP without a connected route on the master
            chk.fail(vpath, f"{vip!r}: give the VIP with its subnet's prefix, like 192.168.0.40/24")
            continue
        iface = chk.interface_address(vpath, vip)
        if iface is None:
            continue
        if iface.ip in seen_vip:
            chk.fail(vpath, f"{iface.ip} is already a VIP of instance {seen_vip[iface.ip]}")
        seen_vip[iface.ip] = ipath[-1]
        for node, ifaces in node_ifaces.items():
            local = ifaces.get(ifname, [])
            if local and not any(iface.ip in a.network for a in local):
                chk.fail(vpath, f"{iface} is outside every subnet of {node}'s {ifname} "
                         "({})".format(", ".join(str(a.network) for a in local)))
            if any(iface.ip == a.ip for a in local):
                chk.fail(vpath, f"{iface.ip} is {node}'s own address on {ifname}, not a free VIP")
        vips.append(iface)
    if raw is not None and not raw:
        chk.fail([*ipath, "vips"], "needs at least one virtual IP")
    return vips


def _check_known_interfaces(chk, path, names, node_ifaces):
    for i, name in enumerate(names):
        if chk.ifname([*path, i], name) is not None:
            missing = [node for node, ifaces in node_ifaces.items() if name not in ifaces]
            if missing:
                chk.fail([*path, i], "{} is not an interface of {}".format(name, ", ".join(missing)))


def node_state(vrrp, index, node_cfg):
    """A node's VRRP state and priority: its own, or derived from its place in the list."""
    priority = node_cfg.get("priority", vrrp["priority"] - index * vrrp["priority_step"])
    default_state = "MASTER" if (vrrp["preempt"] and index == 0) else "BACKUP"
    return {"state": str(node_cfg.get("state", default_state)).upper(), "priority": priority}


def check_nodes(chk, path, vrrp, nodes, node_cfg):
    """Every node's state and priority, explicit or derived, in the validation pass."""
    if not all(isinstance(vrrp[k], int) for k in ("priority", "priority_step")):
        return  # already reported
    for index, node in enumerate(nodes):
        npath = [*path, "nodes", node]
        cfg = node_cfg[node]
        mine = node_state(vrrp, index, cfg)
        if "priority" in cfg:
            chk.integer([*npath, "priority"], cfg["priority"], 1, 254)
        elif not 1 <= mine["priority"] <= 254:
            chk.fail([*npath, "priority"], f"derived priority {mine['priority']} is outside 1-254; "
                     "lower vrrp:priority_step or set the node's priority")
        if "state" in cfg and chk.choice([*npath, "state"], cfg["state"], VRRP_STATES, "VRRP state") is None:
            continue
        if mine["state"] == "MASTER" and vrrp["preempt"] is False:
            chk.fail([*npath, "state"], "MASTER with preempt: false; keepalived's nopreempt needs state BACKUP")


def check_vrids_across(chk, clusters):
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


def keepalived_view(vrrp, view, me, per_node):
    """Everything keepalived.conf needs for this node, in template order."""
    ifaces = view["node_ifaces"][me]
    instances = []
    for inst in vrrp["instances"]:
        own = primary(ifaces, inst["interface"])
        peers = [str(primary(view["node_ifaces"][n], inst["interface"]).ip) for n in view["nodes"] if n != me]
        track = inst["track_interfaces"]
        if track is None:
            track = vrrp["track_interfaces"]
        instances.append({
            "name": inst["name"], "interface": inst["interface"], "state": per_node["state"],
            "virtual_router_id": inst["virtual_router_id"], "priority": per_node["priority"],
            "advert_int": vrrp["advert_int"], "version": vrrp["version"], "preempt": vrrp["preempt"],
            "preempt_delay": vrrp["preempt_delay"], "garp_master_delay": vrrp["garp_master_delay"],
            "garp_master_refresh": vrrp["garp_master_refresh"],
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
        "resync_hold": vrrp["resync_hold"],
        "maintenance": vrrp["maintenance"],
        "notify_hook": False, "state": per_node["state"], "priority": per_node["priority"],
        "vrrp_interfaces": sorted({i["interface"] for i in instances}),
        "peer_addresses": {i["interface"]: i["unicast_peers"] or
                           [str(primary(view["node_ifaces"][n], i["interface"]).ip)
                            for n in view["nodes"] if n != me] for i in instances},
    }
