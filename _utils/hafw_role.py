"""
A firewall node's VRRP role and whether its conntrackd side agrees (issue 4).

Plain Python: ``conntrack.role`` gathers the facts (the node's VIPs from the
model, the addresses on its links, the transition hook's role file, the
takeover gate, conntrackd running) and ``judge`` says what they mean.
"""

import ipaddress


def parse_ip_addr(text):
    """Addresses of ``ip -o addr show`` output: {ifname: {address, ...}}."""
    out = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 4 and words[2] in ("inet", "inet6"):
            ifname = words[1].split("@")[0]
            out.setdefault(ifname, set()).add(str(ipaddress.ip_interface(words[3]).ip))
    return out


def instance_roles(instances, addrs):
    """{instance: {"interface", "vips", "held", "role"}}: MASTER holds every VIP, BACKUP none, else PARTIAL."""
    out = {}
    for inst in instances:
        # the model's VIPs: {"address", "dev", ...} (or "ADDR/LEN" strings)
        where = [(v["address"], v.get("dev") or inst["interface"]) if isinstance(v, dict)
                 else (str(ipaddress.ip_interface(v).ip), inst["interface"]) for v in inst["vips"]]
        vips = [a for a, _ in where]
        held = [a for a, dev in where if a in addrs.get(dev, set())]
        role = "MASTER" if len(held) == len(vips) else "BACKUP" if not held else "PARTIAL"
        out[inst["name"]] = {"interface": inst["interface"], "vips": vips, "held": held, "role": role}
    return out


def judge(instances, hook_role, gate_closed, conntrackd_running, keepalived_running, sync=True):
    """
    The group's role and the problems, each said so that an operator knows
    what to do: MASTER must have run the primary transition (gate open),
    BACKUP a backup, fault or stop one (gate closed), both with conntrackd
    running. ``gate_closed`` is None where there is no gate; ``sync`` False
    for a cluster without conntrackd (then only the VIPs are judged).
    """
    roles = {i["role"] for i in instances.values()}
    group = roles.pop() if len(roles) == 1 else "SPLIT"
    problems = []
    if not keepalived_running:
        problems.append("keepalived is not running" + (": this node holds VIPs nobody will move"
                                                       if group != "BACKUP" else ""))
    if group == "SPLIT" or group == "PARTIAL":
        problems.append("the VIPs are split: " + ", ".join(f"{n} {i['role']} ({len(i['held'])}/{len(i['vips'])})"
                                                          for n, i in sorted(instances.items())))
    if sync:
        if not conntrackd_running:
            problems.append("conntrackd is not running: no state is replicated")
        if group == "MASTER":
            if hook_role != "primary":
                problems.append(f"holds the VIPs but the hook's last transition was {hook_role or 'none'!r}, "
                                "not primary: the peer's states may not be committed")
            if gate_closed:
                problems.append("holds the VIPs with the takeover gate closed: new connections are dropped")
        elif group == "BACKUP":
            if hook_role == "primary":
                problems.append("holds no VIP but the hook's last transition was primary (a missed backup "
                                "notify): this node does not ask for the primary's states")
            if gate_closed is False:
                problems.append("the takeover gate is open on a backup: a takeover could track packets "
                                "before their states are in the table")
    return {"group": group, "hook": hook_role or None, "gate": None if gate_closed is None else
            ("closed" if gate_closed else "open"), "conntrackd_running": conntrackd_running,
            "keepalived_running": keepalived_running, "consistent": not problems, "problems": problems}
