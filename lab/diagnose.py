"""
What a firewall host of the lab looks like from inside: its conntrack
table, conntrackd's caches, the takeover gate, and its VRRP state for
failure messages.

keepalived logs to syslog, and the lab hosts have none (this machine has no
/dev/log), so a timeout waiting for VIPs would otherwise say nothing about
why. keepalived dumps its live state on SIGUSR1 to $TMPDIR/keepalived.data;
we read the lines that explain an election (state, faults, interface,
priority, last transition) and remove the files again.
"""

import re
import time

CONNTRACKD = ["conntrackd", "-C", "/etc/conntrackd/conntrackd.conf"]
GATE_JUMP = "-A PREROUTING -j HAFW_GATE"
HOOK_LOG = "/var/log/hafw-conntrackd.log"  # the transition hook's log (conntrackd/parameters)


def conntrack_count(host):
    """Entries in the host's kernel conntrack table (-1: unreadable)."""
    out = host.exec(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"], check=False).stdout.strip()
    return int(out) if out.isdigit() else -1


def conntrackd_caches(host, timeout=30):
    """(internal, external): active objects in conntrackd's caches (-1: no answer)."""
    out = host.exec([*CONNTRACKD, "-s", "cache"], check=False, timeout=timeout).stdout
    found = [re.search(r"cache:%s\s+active objects:\s+(\d+)" % kind, out) for kind in ("internal", "external")]
    return tuple(int(m.group(1)) if m else -1 for m in found)


def gate_closed(host):
    """True while the takeover gate's jump is in mangle PREROUTING (the node is not primary)."""
    return GATE_JUMP in host.exec(["iptables", "-w", "5", "-t", "mangle", "-S", "PREROUTING"], check=False).stdout


# the lines of an instance's block in keepalived.data that explain its state
_INSTANCE_KEYS = ("State", "Wantstate", "Number of config faults", "Number of interface and track script faults",
                  "Last transition", "Interface", "Effective priority", "Advert interval")
_DUMPS = ("/tmp/keepalived.data", "/tmp/keepalived_parent.data")


def vrrp_instances(host, wait=3.0):
    """{instance: {key: value}} from a SIGUSR1 dump of the host's keepalived; {} if none runs."""
    pid = host.exec(["pgrep", "-o", "-x", "keepalived"], check=False).stdout.strip()
    if not pid:
        return {}
    host.exec(["rm", "-f", *_DUMPS], check=False)
    host.exec(["kill", "-USR1", pid], check=False)
    deadline = time.monotonic() + wait
    text = ""
    # the parent forwards the signal to its VRRP child, which writes the file
    while "VRRP Topology" not in text and time.monotonic() < deadline:
        time.sleep(0.2)
        text = host.exec(["cat", _DUMPS[0]], check=False).stdout
    host.exec(["rm", "-f", *_DUMPS], check=False)
    instances, current = {}, None
    for line in text.splitlines():
        match = re.match(r"\s*VRRP Instance = (\S+)", line)
        if match:
            current = instances.setdefault(match.group(1), {})
            continue
        key, sep, value = line.strip().partition(" = ")
        if current is not None and sep and key in _INSTANCE_KEYS:
            current.setdefault(key, value)
    return instances


def vrrp_report(host):
    """Links, addresses, keepalived processes and instance states, as text."""
    if not host.running:
        return "%s is not running\n" % host.name
    parts = [
        host.exec(["ip", "-br", "link"], check=False).stdout,
        host.exec(["ip", "-br", "-4", "addr"], check=False).stdout,
        host.exec(["pgrep", "-a", "keepalived"], check=False).stdout or "keepalived: not running\n",
    ]
    for name, fields in vrrp_instances(host).items():
        parts.append("%s: %s\n" % (name, ", ".join("%s=%s" % item for item in fields.items())))
    # keepalived logs to syslog, which lab hosts lack: the transition hook's log
    # says what keepalived went through (a "stop" means it was told to exit),
    # the init script's pid file whether it was started as a service
    parts.append(host.exec(["sh", "-c", f"echo '--- {HOOK_LOG} (last 12)'; "
                                        f"tail -n 12 {HOOK_LOG} 2>&1; "
                                        "echo '--- pid files'; ls -l /run/keepalived*.pid 2>&1; "
                                        "echo '--- processes'; ps -eo pid,ppid,stat,lstart,args 2>&1 | tail -n 25"],
                           check=False).stdout)
    return "".join(parts)
