"""The Lab: a run's switch namespace, bridges and hosts, torn down as one."""

import json
from pathlib import Path

from . import netns
from .host import Host
from .names import (
    LabError,
    bridge_name,
    check_prefix,
    default_state_root,
    host_netns,
    new_prefix,
    port_name,
    switch_netns,
)


def _clean():
    """lab.clean, imported late: `python -m lab.clean` must not find it preloaded."""
    from . import clean
    return clean


class Lab:
    """One lab run: its switch namespace, bridges and hosts, all under one prefix.

    As a context manager it holds the run live (lab.clean skips it) and tears
    everything down on exit, whether by success, exception or Ctrl-C.
    """

    def __init__(self, prefix=None, state_root=None):
        self.state_root = Path(state_root or default_state_root())
        self._auto_prefix = not prefix
        self._set_prefix(check_prefix(prefix) if prefix else new_prefix())
        self.switches = {}  # switch name -> bridge name
        self.hosts = {}  # host name -> Host
        self.ports_made = 0  # switch-side veth ends are numbered
        self._lock = None
        self._owned = False  # True once create() has claimed the prefix

    def _set_prefix(self, prefix):
        self.prefix = prefix
        self.state_dir = self.state_root / prefix.rstrip("-")
        self.switch_ns = switch_netns(prefix)

    def _prefix_in_use(self):
        return (self.state_dir.exists() or _clean().is_held(self.prefix)
                or any(ns.startswith(self.prefix) for ns in netns.list_netns()))

    def __repr__(self):
        return "<Lab %s hosts=%s switches=%s>" % (self.prefix, list(self.hosts), list(self.switches))

    def __enter__(self):
        try:
            return self.create()
        except BaseException:
            if self._owned:
                self.destroy()
            raise

    def __exit__(self, *exc_info):
        self.destroy()

    def __getitem__(self, host_name):
        return self.hosts[host_name]

    def create(self, hold=True):
        """Make the run: state dir, live lock (if hold) and switch namespace."""
        if self._prefix_in_use():
            if not self._auto_prefix:
                raise LabError("prefix %s is in use" % self.prefix)
            while self._prefix_in_use():
                self._set_prefix(new_prefix())
        self.state_dir.mkdir(parents=True)
        self._owned = True  # from here on, destroy() may remove what has this prefix
        if hold:
            self._lock = _clean().hold(self.prefix, self.state_dir)
        netns.add_switch_netns(self.switch_ns)
        self.save()
        return self

    def destroy(self):
        """Kill all hosts, delete all namespaces and the state dir of this run."""
        if not self._owned:
            raise LabError("lab %s was not created or attached here" % self.prefix)
        for host in self.hosts.values():
            try:
                host.kill_all()
            except Exception:  # clean_run below still kills it by its recorded pid
                pass
        _clean().clean_run(self.prefix, self.state_dir, force=True)
        if self._lock:
            self._lock.close()
            self._lock = None

    def add_switch(self, name):
        """Create a bridge for switch `name`; returns the bridge's name."""
        bridge = bridge_name(self.prefix, name)
        netns.add_bridge(self.switch_ns, bridge)
        self.switches[name] = bridge
        self.save()
        return bridge

    def add_host(self, name, start=True, private_tmp=False):
        """Create host `name` (its netns and state) and, if start, boot it.

        private_tmp gives the host its own tmpfs /tmp; by default /tmp is
        shared with the machine so tests can hand files to hosts.
        """
        if name in self.hosts:
            raise LabError("host %s exists" % name)
        host_dir = self.state_dir / "hosts" / name
        host_dir.mkdir(parents=True)
        host = Host(name, host_netns(self.prefix, name), host_dir, self.state_dir,
                    self.switch_ns, private_tmp)
        self.hosts[name] = host
        host.create_netns()
        host.save()
        self.save()
        if start:
            host.start()
        return host

    def connect(self, host, switch, ifname, address=None, mac=None):
        """Cable `host` (Host or name) to `switch` as interface `ifname`.

        address is a CIDR ('192.168.0.1/24'), a list of them, or None.
        """
        host = self.hosts[host] if isinstance(host, str) else host
        addresses = [address] if isinstance(address, str) else list(address or ())
        self.ports_made += 1
        host.plug(port_name(self.prefix, self.ports_made), self.switches[switch],
                  ifname, addresses, mac)
        self.save()
        return host

    def save(self):
        state = {"prefix": self.prefix, "switches": self.switches,
                 "hosts": list(self.hosts), "ports_made": self.ports_made}
        (self.state_dir / "lab.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def attach(cls, prefix, state_root=None):
        """The Lab of an existing run (e.g. made by another process), not held."""
        lab = cls(prefix, state_root)
        try:
            state = json.loads((lab.state_dir / "lab.json").read_text())
        except FileNotFoundError:
            raise LabError("no lab run %s in %s" % (prefix, lab.state_dir.parent)) from None
        lab.switches, lab.ports_made = state["switches"], state["ports_made"]
        lab._owned = True
        for name in state["hosts"]:
            lab.hosts[name] = Host.load(lab.state_dir / "hosts" / name, lab.state_dir)
        return lab

    @staticmethod
    def runs(state_root=None):
        """Prefixes of the runs with a state dir under state_root."""
        root = Path(state_root or default_state_root())
        return sorted(p.parent.name + "-" for p in root.glob("hf*/lab.json"))
