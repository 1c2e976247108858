"""Network namespaces, bridges, veths, addresses and routes, via `ip`; and processes.

Every network function takes the namespace to act in: nothing here ever
touches the root network namespace (all `ip` calls carry `-n NS`).
"""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .names import LabError, check_ifname


def ip(ns, *args, check=True):
    """Run `ip -n NS ARGS...`; raise LabError with ip's message on failure."""
    if not ns:
        raise LabError("refusing to run ip in the root network namespace")
    return run(["ip", "-n", ns, *args], check=check)


def run(cmd, check=True, timeout=30):
    """Run cmd (a list); on failure raise LabError carrying its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError("%s failed (rc %d): %s"
                       % (" ".join(cmd), proc.returncode, proc.stderr.strip()))
    return proc


def list_netns():
    """Names of all named network namespaces (/run/netns)."""
    out = run(["ip", "netns", "list"]).stdout
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def add_netns(ns):
    """Create a network namespace with its loopback up."""
    run(["ip", "netns", "add", ns])
    ip(ns, "link", "set", "lo", "up")


def delete_netns(ns):
    """Delete a network namespace; a missing one is fine."""
    if ns in list_netns():
        run(["ip", "netns", "delete", ns])


def netns_pids(ns):
    """Pids of the processes whose network namespace is ns."""
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split()]


def sysctl(ns, key, value):
    """Set a (network) sysctl inside ns."""
    run(["ip", "netns", "exec", ns, "sysctl", "-qw", "%s=%s" % (key, value)])


def add_switch_netns(ns):
    """Create the namespace that holds the bridges: a plain L2 switch box."""
    add_netns(ns)
    # Ports are pure L2: no IPv6 link-local chatter or DAD from the switch itself.
    sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
    sysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1)


def add_bridge(ns, bridge):
    """Create an up bridge that forwards at once (no STP, no forward delay)."""
    ip(ns, "link", "add", check_ifname(bridge), "type", "bridge",
       "stp_state", "0", "forward_delay", "0",
       # Without an IGMP querier snooping could starve multicast (VRRP).
       "mcast_snooping", "0")
    ip(ns, "link", "set", bridge, "up")


def add_veth(switch_ns, port, bridge, host_ns, ifname, mac=None):
    """Create a veth: end `port` in `bridge`, peer named `ifname` in host_ns.

    The peer is created straight into host_ns under its final name, so no
    temporary name ever shows up in the host, and nothing in the root netns.
    """
    peer = ["peer", "name", check_ifname(ifname), "netns", host_ns]
    if mac:
        peer += ["address", mac]
    ip(switch_ns, "link", "add", check_ifname(port), "type", "veth", *peer)
    ip(switch_ns, "link", "set", port, "master", bridge)
    ip(switch_ns, "link", "set", port, "up")


def delete_link(ns, ifname):
    """Delete an interface (for a veth, both ends go); a missing one is fine."""
    ip(ns, "link", "delete", ifname, check=False)


def mac_address(ns, ifname):
    """The MAC address of an interface."""
    return json.loads(ip(ns, "-j", "link", "show", "dev", ifname).stdout)[0]["address"]


def link_up(ns, ifname):
    """Bring an interface up."""
    ip(ns, "link", "set", ifname, "up")


def link_down(ns, ifname):
    """Bring an interface down (administratively: its routes go with it)."""
    ip(ns, "link", "set", ifname, "down")


def add_address(ns, ifname, cidr):
    """Add an address such as '192.168.0.1/24' to an interface."""
    ip(ns, "address", "add", cidr, "dev", ifname)


def add_route(ns, dest, via=None, dev=None):
    """Add a route; dest is a prefix or 'default'."""
    args = ["route", "add", dest]
    if via:
        args += ["via", via]
    if dev:
        args += ["dev", dev]
    ip(ns, *args)


# --- processes, e.g. those living in lab namespaces ---

def start_time(pid):
    """Start time of pid (clock ticks since boot), or None if it is gone.

    Recorded with each pid so that a recycled pid is never killed.
    """
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5)


def kill(pid, started=None):
    """SIGKILL pid if it still is the process started at `started`."""
    now = start_time(pid)
    if now is None or (started is not None and now != started):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def descendants(pid):
    """Pids of all descendants of pid, parents before their children."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop(0)
        try:
            children = Path("/proc/%d/task/%d/children" % (parent, parent)).read_text()
        except (FileNotFoundError, ProcessLookupError):  # exited meanwhile (ESRCH while it exits)
            continue
        found += [int(c) for c in children.split()]
        todo += [int(c) for c in children.split()]
    return found


def wait_gone(pids, timeout=10.0):
    """Wait until none of pids runs any more (zombies count as gone); True if so."""
    deadline = time.monotonic() + timeout
    while any(os.path.exists("/proc/%d" % p) and not is_zombie(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def is_zombie(pid):
    """True if pid has exited (a zombie not yet reaped, or gone)."""
    try:
        return Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True
