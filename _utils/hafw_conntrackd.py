"""
conntrackd part of the hafw model: validate ``conntrackd:`` (mode, transport,
the sync link, table sizing against the kernel's) and derive one node's own
and peer addresses and its ``Address Ignore`` list.
"""

from hafw_check import merge, primary

MODES = ("ftfw", "alarm", "notrack")
TRANSPORTS = ("udp", "multicast", "tcp")
PROTOCOLS = ("TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "DCCP", "UDPLITE", "GRE")
DEFAULTS = {
    "enabled": True,
    "interface": None,
    "mode": "ftfw",
    "transport": "udp",
    "port": 3780,
    "multicast_group": "225.0.0.50",
    "checksum": True,
    # None: the seed's 1249280, or in inject mode room for a resync burst
    # (INJECT_BUFFER_PER_ENTRY bytes a tracked entry)
    "snd_socket_buffer": None,
    "rcv_socket_buffer": None,
    "nice": -20,
    "hash_size": 32768,
    "hash_limit": None,  # None: 2 x nf_conntrack_max
    "netlink_buffer_size": 2097152,
    "netlink_buffer_size_max_growth": 8388608,
    "protocols": ["TCP", "UDP", "ICMP"],
    "ignore_addresses": [],
    "ignore_vips": True,
    # inject mode (docs/takeover.md): synced states go straight into the
    # backup's kernel table, so a takeover has nothing to commit
    "disable_external_cache": False,
    # inject mode: a backup asks the primary for a full resync this often, or
    # its injected entries expire (FTFW sends no refresh while packets flow);
    # at most half the shortest timeout that matters (UDP stream: 120 s).
    # None: 30 s, longer for big tables (each resync sends the whole table):
    # one second per 20k entries of nf_conntrack_max, at most 60 s
    "inject_refresh_s": None,
    # a node that is not primary drops packets without a conntrack entry; the
    # hook opens it once the commit is done (docs/takeover.md)
    "takeover_gate": True,
    # a (re)started node asks its peer for the whole external cache at once;
    # None: on for ftfw and notrack (alarm mode has no such option)
    "startup_resync": None,
    "syslog": True,
    "options": {},
}

SEED_SOCKET_BUFFER = 1249280
# Inject mode: a resync (a restarted node's StartupResync, the backup's
# periodic refresh) arrives faster than conntrackd injects it into the kernel
# (~100k entries/s here), so the burst waits in the UDP socket buffers. With
# the seed's 1.2 MB a 200k-entry resync lost a quarter of its entries for
# good (FTFW could not resend them); with 64 MB it was complete in 2.1 s.
# 256 bytes an entry of nf_conntrack_max covers that with room to spare.
INJECT_BUFFER_PER_ENTRY = 256


def _socket_buffers(chk, path, ctd, ctmax):
    for key in ("snd_socket_buffer", "rcv_socket_buffer"):
        if ctd[key] is None:
            size = SEED_SOCKET_BUFFER
            if ctd["disable_external_cache"] is True and isinstance(ctmax, int):
                size = max(size, min(INJECT_BUFFER_PER_ENTRY * ctmax, 2**31 - 1))
            ctd[key] = size
        else:
            chk.integer([*path, key], ctd[key], 1024, 2**31 - 1)


def check(chk, path, raw, kernel, vrrp_ifaces, node_ifaces, nodes):
    ctd = merge(DEFAULTS, chk.mapping(path, raw, allowed=set(DEFAULTS)))
    if chk.boolean([*path, "enabled"], ctd["enabled"]) is False:
        return None
    ctd["mode"] = chk.choice([*path, "mode"], ctd["mode"], MODES, "conntrackd sync mode")
    ctd["transport"] = chk.choice([*path, "transport"], ctd["transport"], TRANSPORTS, "transport")
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
    for key in ("netlink_buffer_size", "netlink_buffer_size_max_growth", "hash_size"):
        chk.integer([*path, key], ctd[key], 1024, 2**31 - 1)
    chk.integer([*path, "nice"], ctd["nice"], -20, 19)
    if isinstance(ctd["hash_size"], int) and ctd["hash_size"] <= 8192:
        # measured with conntrackd 1.4.7: with HashSize <= 8192 a flush (-f)
        # after a commit is ignored ("commit still in progress") for good
        chk.fail([*path, "hash_size"], f"{ctd['hash_size']} is too small: conntrackd ignores cache flushes "
                 "with HashSize 8192 or less; use at least 16384")
    ctmax = kernel["nf_conntrack_max"]
    _socket_buffers(chk, path, ctd, ctmax)
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
    ctd["protocols"] = [chk.choice([*path, "protocols", i], p, PROTOCOLS, "protocol")
                        for i, p in enumerate(protos)]
    if not protos:
        chk.fail([*path, "protocols"], "lists no protocol: nothing would be synced")
    for i, addr in enumerate(chk.sequence([*path, "ignore_addresses"], ctd["ignore_addresses"])):
        chk.address([*path, "ignore_addresses", i], addr)
    chk.boolean([*path, "ignore_vips"], ctd["ignore_vips"])
    chk.boolean([*path, "disable_external_cache"], ctd["disable_external_cache"])
    chk.boolean([*path, "takeover_gate"], ctd["takeover_gate"])
    if ctd["inject_refresh_s"] is None:
        ctmax = kernel["nf_conntrack_max"]
        ctd["inject_refresh_s"] = min(60, max(30, -(-ctmax // 20000))) if isinstance(ctmax, int) else 30
    else:
        chk.integer([*path, "inject_refresh_s"], ctd["inject_refresh_s"], 5, 3600)
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
    for key in chk.mapping([*path, "options", "sync"], opts.get("sync")):
        # one transport per daemon: conntrackd cannot mix UDP, TCP and Multicast
        if str(key).lower() in TRANSPORTS and str(key).lower() != ctd["transport"]:
            chk.fail([*path, "options", "sync", key], f"a {key} block mixes transports with "
                     f"transport: {ctd['transport']}; conntrackd syncs over one transport")
    return ctd


def derive(ctd, ifaces, peer_ifaces, vips):
    own = primary(ifaces, ctd["interface"])
    peer = primary(peer_ifaces, ctd["interface"]) if peer_ifaces else None
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
