"""
Firewall part of the hafw model: validate ``firewall:`` rules and render the
node's whole ruleset for iptables (``iptables-restore`` input) or nftables.

The iptables text is written in the canonical form ``iptables-save`` prints
(option order, ``/32`` suffixes, numeric log levels), so the live table can be
compared with the file to detect drift without a parser. A functional test
restores the text in a namespace and checks ``iptables-save`` gives it back.

For pairs, the rules keepalived and conntrackd need are derived, opened to the
peer only: VRRP on each VRRP interface, conntrackd's port on the sync link.
"""

import ipaddress
import re

CHAINS = ("input", "forward", "output")
ACTIONS = ("accept", "drop", "reject", "log")
NAT_TYPES = ("dnat", "snat", "masquerade")
PROTOS = ("tcp", "udp", "icmp", "vrrp", "all")
RULE_KEYS = {"in", "out", "proto", "src", "dst", "sport", "dport", "action", "comment"}
NAT_KEYS = {"type", "in", "out", "proto", "src", "dst", "sport", "dport", "to", "comment"}
LOG_LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
# the order iptables-save prints them in
CT_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED")
DEFAULTS = {
    "backend": "iptables",
    "log_prefix": "DROPPED ",
    "log_level": "info",
    "log_dropped": True,
    "established_states": ["ESTABLISHED", "RELATED"],
    "input": {"policy": "accept", "rules": []},
    "forward": {"policy": "drop", "rules": []},
    "output": {"policy": "accept", "rules": []},
    "nat": [],
}
VRRP_MCAST = "224.0.0.18"
GATE_CHAIN = "HAFW_GATE"
GATE_JUMP = f"-A PREROUTING -j {GATE_CHAIN}"  # inserted and removed by the transition hook only
# nftables: the gate is a regular chain; the hook adds "jump gate" to the
# (otherwise empty) base chain gate_hook to close it and flushes it to open it
NFT_TABLE = "hafw"
NFT_GATE_CHAIN, NFT_GATE_HOOK = "gate", "gate_hook"


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
def check(chk, path, raw, node_ifaces, vips, routes):
    """Validate ``firewall:``; return the normalised settings, or None if absent."""
    if raw is None:
        return None
    raw = chk.mapping(path, raw, allowed=set(DEFAULTS))
    fw = {**DEFAULTS, **raw}
    fw["backend"] = chk.choice([*path, "backend"], fw["backend"], ("iptables", "nftables"), "backend")
    if not isinstance(fw["log_prefix"], str) or len(fw["log_prefix"]) > 29 or '"' in fw["log_prefix"]:
        chk.fail([*path, "log_prefix"], "must be a string of at most 29 characters without quotes")
    chk.choice([*path, "log_level"], fw["log_level"], tuple(LOG_LEVELS), "log level")
    chk.boolean([*path, "log_dropped"], fw["log_dropped"])
    states = chk.sequence([*path, "established_states"], fw["established_states"])
    fw["established_states"] = [chk.choice([*path, "established_states", i], s, CT_STATES, "conntrack state")
                                for i, s in enumerate(states)]
    ifnames = {i for ifaces in node_ifaces.values() for i in ifaces}
    for chain in CHAINS:
        cpath = [*path, chain]
        spec = {**DEFAULTS[chain], **chk.mapping(cpath, raw.get(chain), allowed={"policy", "rules"})}
        spec["policy"] = chk.choice([*cpath, "policy"], spec["policy"], ("accept", "drop"), "chain policy")
        spec["rules"] = [_rule(chk, [*cpath, "rules", i], r, RULE_KEYS, ifnames)
                         for i, r in enumerate(chk.sequence([*cpath, "rules"], spec["rules"]))]
        fw[chain] = spec
    fw["nat"] = [_nat(chk, [*path, "nat", i], r, ifnames, node_ifaces, vips, routes)
                 for i, r in enumerate(chk.sequence([*path, "nat"], fw["nat"]))]
    return fw


def _rule(chk, path, raw, keys, ifnames):
    rule = chk.mapping(path, raw, allowed=keys)
    out = {"comment": rule.get("comment")}
    for key in ("in", "out"):
        if key in rule and chk.ifname([*path, key], rule[key]) is not None:
            if rule[key] not in ifnames:
                chk.fail([*path, key], f"{rule[key]} is not an interface of any node of this cluster")
            out[key] = rule[key]
    proto = rule.get("proto", "all")
    out["proto"] = chk.choice([*path, "proto"], proto, PROTOS, "protocol")
    for key in ("src", "dst"):
        if key in rule:
            net = chk.network([*path, key], rule[key] if "/" in str(rule[key]) else f"{rule[key]}/32")
            out[key] = net
    for key in ("sport", "dport"):
        if key in rule:
            out[key] = chk.port([*path, key], rule[key])
            if out["proto"] not in ("tcp", "udp"):
                chk.fail([*path, key], f"ports need proto tcp or udp, not {proto!r}")
    if "action" in keys:
        out["action"] = chk.choice([*path, "action"], rule.get("action", "accept"), ACTIONS, "action")
    return out


def _nat(chk, path, raw, ifnames, node_ifaces, vips, routes):
    rule = _rule(chk, path, raw, NAT_KEYS, ifnames)
    kind = chk.choice([*path, "type"], raw.get("type") if isinstance(raw, dict) else None, NAT_TYPES, "NAT type")
    rule["type"] = kind
    if kind == "dnat" and "out" in rule:
        chk.fail([*path, "out"], "a DNAT rule matches the incoming interface (in), not out")
    if kind in ("snat", "masquerade") and "in" in rule:
        chk.fail([*path, "in"], f"a {kind.upper()} rule matches the outgoing interface (out), not in")
    if kind == "masquerade":
        if "to" in raw:
            chk.fail([*path, "to"], "masquerade takes no target address")
        return rule
    if kind is None:
        return rule
    if "to" not in raw:
        chk.fail([*path, "to"], f"is required for {kind}")
        return rule
    m = re.match(r"^([0-9.]+)(?::(\d+))?$", str(raw["to"]))
    addr = chk.address([*path, "to"], m.group(1)) if m else None
    if m is None:
        chk.fail([*path, "to"], f"{raw['to']!r} is not an address or address:port")
    if m and m.group(2):
        chk.port([*path, "to"], int(m.group(2)))
        if rule["proto"] not in ("tcp", "udp"):
            chk.fail([*path, "to"], "a target port needs proto tcp or udp")
    rule["to"] = str(raw["to"])
    if addr is None:
        return rule
    if kind == "dnat":
        connected = any(addr in a.network for ifs in node_ifaces.values() for al in ifs.values() for a in al)
        routed = any(addr in ipaddress.IPv4Network(r["to"] if r["to"] != "default" else "0.0.0.0/0")
                     for r in routes)
        if not (connected or routed):
            chk.fail([*path, "to"], f"DNAT target {addr} is in no subnet of the nodes and no route reaches it")
    else:
        own = {a.ip for ifs in node_ifaces.values() for al in ifs.values() for a in al}
        vip_set = {v.ip for v in vips}
        if addr not in own | vip_set:
            chk.fail([*path, "to"], f"SNAT source {addr} is neither a VIP nor an address of the node")
        elif vips and addr not in vip_set:
            chk.fail([*path, "to"], f"SNAT source {addr} is a node address: in a pair it must be a VIP, "
                     "or connections break when the VIP moves")
    return rule


# ---------------------------------------------------------------------------
# derivation
# ---------------------------------------------------------------------------
def derive(fw, view, me, conntrackd):
    """The node's chains (auto rules first) and both renderings."""
    auto = []
    vrrp = view["vrrp"]
    if vrrp:
        peers = [n for n in view["nodes"] if n != me]
        for inst in vrrp["instances"]:
            for peer in peers:
                src = view["node_ifaces"][peer][inst["interface"]][0].ip
                auto.append({"in": inst["interface"], "proto": "vrrp", "src": _net(src),
                             "dst": None if vrrp["unicast"] else _net(VRRP_MCAST),
                             "action": "accept", "comment": f"hafw: VRRP {inst['name']} from {peer}"})
    if conntrackd:
        dst = _net(conntrackd["multicast_group"]) if conntrackd["transport"] == "multicast" else None
        auto.append({"in": conntrackd["interface"], "proto": "tcp" if conntrackd["transport"] == "tcp" else "udp",
                     "src": _net(conntrackd["peer_address"]) if conntrackd["peer_address"] else None,
                     "dst": dst, "dport": (conntrackd["port"],) * 2, "action": "accept",
                     "comment": "hafw: conntrackd sync from peer"})
    auto = _dedupe(auto)
    chains = {}
    for chain in CHAINS:
        spec = fw[chain]
        rules = []
        if spec["policy"] == "drop" or chain == "input" and auto:
            if fw["established_states"]:
                rules.append({"ctstate": ",".join(s for s in CT_STATES if s in fw["established_states"]),
                              "action": "accept", "proto": "all"})
        if chain == "input":
            rules += auto
        rules += spec["rules"]
        if spec["policy"] == "drop" and fw["log_dropped"]:
            rules.append({"proto": "all", "action": "log"})
        chains[chain] = {"policy": spec["policy"], "rules": rules}
    gated = bool(conntrackd and conntrackd.get("takeover_gate"))
    out = {"backend": fw["backend"], "chains": chains, "nat": fw["nat"],
           "log_prefix": fw["log_prefix"], "log_level": fw["log_level"],
           "gate_rules": _gate_rules(view, me) if gated else None}
    out["iptables"] = render_iptables(out)
    out["nftables"] = render_nftables(out)
    out["gate"] = gated
    # what the hook and the ruleset state need to know about the gate
    nft = fw["backend"] == "nftables"
    out["gate_chain"] = (NFT_GATE_CHAIN if nft else GATE_CHAIN) if gated else ""
    out["gate_table"] = f"ip {NFT_TABLE}" if nft else "mangle"
    out["gate_jump"] = f"jump {NFT_GATE_CHAIN}" if nft else GATE_JUMP  # the live rule that is not drift
    del out["gate_rules"]  # rule dicts hold IPv4Network objects: only the renderings leave
    # rule dicts hold IPv4Network objects; keep only the renderings and plain data
    out["chains"] = {c: {"policy": v["policy"], "rules": len(v["rules"])} for c, v in chains.items()}
    out["nat"] = len(fw["nat"])
    return out


def _gate_rules(view, me):
    """
    The takeover gate (docs/takeover.md): while the hook's jump is in
    mangle PREROUTING (on every node that is not primary), packets on the
    VRRP interfaces that have no conntrack entry are dropped, so that no
    packet of a replicated connection meets an empty table before the commit
    (loose pickup with the wrong NAT, RST from the VIP, ICMP unreachable).
    VRRP itself and the node's own addresses pass; other links (the sync
    link, management) are not gated.
    """
    rules = [{"proto": "vrrp", "action": "return", "comment": "hafw: VRRP"}]
    ifaces = view["node_ifaces"][me]
    vrrp_ifaces = sorted({i["interface"] for i in view["vrrp"]["instances"]})
    for ifname in vrrp_ifaces:
        for addr in ifaces.get(ifname, []):
            rules.append({"in": ifname, "dst": _net(addr.ip), "action": "return",
                          "comment": "hafw: own address"})
    for ifname in vrrp_ifaces:
        rules.append({"in": ifname, "ctstate": "INVALID,NEW", "action": "drop",
                      "comment": "hafw: closed until this node has committed the replicated states"})
    return rules


def _net(addr):
    return ipaddress.IPv4Network(f"{addr}/32") if "/" not in str(addr) else ipaddress.IPv4Network(addr)


def _dedupe(rules):
    seen, out = set(), []
    for r in rules:
        key = tuple(sorted((k, str(v)) for k, v in r.items() if k != "comment"))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


# ---------------------------------------------------------------------------
# iptables (canonical iptables-save form)
# ---------------------------------------------------------------------------
def _ipt_match(rule):
    parts = []
    for key, flag in (("src", "-s"), ("dst", "-d")):
        if rule.get(key) is not None:
            parts.append(f"{flag} {rule[key]}")
    for key, flag in (("in", "-i"), ("out", "-o")):
        if rule.get(key):
            parts.append(f"{flag} {rule[key]}")
    proto = rule.get("proto") or "all"
    if proto != "all":
        parts.append(f"-p {proto}")
        if rule.get("sport") or rule.get("dport"):
            parts.append(f"-m {proto}")
            for key in ("sport", "dport"):
                if rule.get(key):
                    lo, hi = rule[key]
                    parts.append(f"--{key} {lo}" if lo == hi else f"--{key} {lo}:{hi}")
    if rule.get("ctstate"):
        parts.append(f"-m conntrack --ctstate {rule['ctstate']}")
    if rule.get("comment"):
        # quotes are dropped: iptables-save escapes them, and the file must stay canonical
        parts.append('-m comment --comment "{}"'.format(re.sub("[\"']", "", rule["comment"])))
    return parts


def _ipt_target(rule, fw):
    action = rule.get("action") or rule.get("type")
    if action == "log":
        return f'-j LOG --log-prefix "{fw["log_prefix"]}" --log-level {LOG_LEVELS[fw["log_level"]]}'
    if action == "dnat":
        return f"-j DNAT --to-destination {rule['to']}"
    if action == "snat":
        return f"-j SNAT --to-source {rule['to']}"
    return f"-j {action.upper()}"


def render_iptables(fw):
    """``iptables-restore`` input for the nat and filter tables."""
    lines = ["# Managed by Salt (hafw formula): edit the pillar, not this file.", "*nat"]
    lines += [f":{c} ACCEPT [0:0]" for c in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")]
    for rule in fw["nat"]:
        chain = "PREROUTING" if rule["type"] == "dnat" else "POSTROUTING"
        lines.append(" ".join([f"-A {chain}", *_ipt_match(rule), _ipt_target(rule, fw)]))
    lines.append("COMMIT")
    if fw.get("gate_rules"):
        lines.append("*mangle")
        lines += [f":{c} ACCEPT [0:0]" for c in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")]
        lines.append(f":{GATE_CHAIN} - [0:0]")
        lines += [" ".join([f"-A {GATE_CHAIN}", *_ipt_match(r), _ipt_target(r, fw)]) for r in fw["gate_rules"]]
        lines.append("COMMIT")
    lines.append("*filter")
    lines += [f":{c.upper()} {fw['chains'][c]['policy'].upper()} [0:0]" for c in CHAINS]
    for chain in CHAINS:
        for rule in fw["chains"][chain]["rules"]:
            lines.append(" ".join([f"-A {chain.upper()}", *_ipt_match(rule), _ipt_target(rule, fw)]))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# nftables (one table, replaced atomically by nft -f)
# ---------------------------------------------------------------------------
def _nft_rule(rule, fw):
    parts = []
    for key, word in (("in", "iifname"), ("out", "oifname")):
        if rule.get(key):
            parts.append(f'{word} "{rule[key]}"')
    for key, word in (("src", "saddr"), ("dst", "daddr")):
        if rule.get(key) is not None:
            net = rule[key]
            parts.append(f"ip {word} {net.network_address if net.prefixlen == 32 else net}")
    proto = rule.get("proto") or "all"
    if proto != "all" and not (rule.get("sport") or rule.get("dport")):
        parts.append(f"ip protocol {proto}")
    for key in ("sport", "dport"):
        if rule.get(key):
            lo, hi = rule[key]
            parts.append(f"{proto} {key} {lo}" if lo == hi else f"{proto} {key} {lo}-{hi}")
    if rule.get("ctstate"):
        parts.append("ct state " + ",".join(s.lower() for s in rule["ctstate"].split(",")))
    action = rule.get("action") or rule.get("type")
    if action == "log":
        parts.append(f'log prefix "{fw["log_prefix"]}" level {fw["log_level"]}')
    elif action == "dnat":
        parts.append(f"dnat to {rule['to']}")
    elif action == "snat":
        parts.append(f"snat to {rule['to']}")
    else:
        parts.append(action)
    if rule.get("comment"):
        parts.append('comment "{}"'.format(re.sub("[\"']", "", rule["comment"])))
    return " ".join(parts)


def render_nftables(fw, table=NFT_TABLE):
    """An nft script that replaces table ``ip hafw`` atomically, leaving other tables alone."""
    lines = ["#!/usr/sbin/nft -f", "# Managed by Salt (hafw formula): edit the pillar, not this file.",
             f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{"]
    hooks = (("prerouting", "nat", "dstnat", "dnat"), ("postrouting", "nat", "srcnat", None))
    for name, kind, prio, want in hooks:
        lines.append(f"\tchain {name} {{")
        lines.append(f"\t\ttype {kind} hook {name} priority {prio}; policy accept;")
        for rule in fw["nat"]:
            if (rule["type"] == "dnat") == (want == "dnat"):
                lines.append("\t\t" + _nft_rule(rule, fw))
        lines.append("\t}")
    for chain in CHAINS:
        spec = fw["chains"][chain]
        lines.append(f"\tchain {chain} {{")
        lines.append(f"\t\ttype filter hook {chain} priority filter; policy {spec['policy']};")
        lines += ["\t\t" + _nft_rule(r, fw) for r in spec["rules"]]
        lines.append("\t}")
    if fw.get("gate_rules"):
        # priority mangle (-150): after the conntrack lookup, before DNAT
        lines.append(f"\tchain {NFT_GATE_CHAIN} {{")
        lines += ["\t\t" + _nft_rule(r, fw) for r in fw["gate_rules"]]
        lines.append("\t}")
        lines.append(f"\tchain {NFT_GATE_HOOK} {{")
        lines.append("\t\ttype filter hook prerouting priority mangle; policy accept;")
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"
