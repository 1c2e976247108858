"""
The part of a lab run that lives in the IPVS guest, seen from this machine.

The load balancers need IPVS, which this machine's kernel lacks; everything
else runs faster here. So a run's hosts that need IPVS are built, by the
same lab code (lab/guest/agent.py), inside a qemu guest, and cabled to the
run's own switches: one virtio NIC per network those hosts use, whose host
end is a tap in the run's switch namespace, enslaved to that network's
bridge (qemu runs in that namespace). The guest has no other network
device, and nothing of it touches the root namespace. Its salt-minions
talk to the run's salt-master over the mgmt switch like any other host.

``GuestHost`` stands for one such host: ``exec``, ``running``, ``crash``
parts (``link_down``, ``kill_all``), ``reboot`` and ``boot`` go to the agent
as requests over the 9p share (lab/guest/rpc.py).
"""

import json
import os
import subprocess
import time

from .. import netns
from ..host import HostCommandError
from ..names import LabError, check_ifname
from . import rpc
from .run import Guest

AGENT = [".venv/bin/python", "-m", "lab.guest.agent"]


def tap_name(prefix, network):
    """The switch-side tap of the guest's NIC on a network, e.g. 'hf3a9c-qinside'."""
    return check_ifname("%sq%s" % (prefix, network[:7]))


def guest_mac(prefix, index):
    """A locally administered MAC per NIC, unique per run (the agent finds each NIC by it)."""
    return "52:54:%s:%s:00:%02x" % (prefix[2:4], prefix[4:6], index)


class GuestHost:
    """A lab host inside the guest, with the Host methods the fleet uses."""

    def __init__(self, name, client, spec):
        self.name, self.client, self.links = name, client, spec["links"]

    def __repr__(self):
        return "<GuestHost %s>" % self.name

    def _call(self, op, timeout=60, **args):
        return self.client.call(op, timeout=timeout, host=self.name, **args)

    @property
    def running(self):
        return self._call("running")["running"]

    def exec(self, cmd, check=True, timeout=60, input=None, env=None):  # noqa: A002 (Host's signature)
        answer = self._call("exec", timeout=timeout + 30, argv=[str(c) for c in cmd], input=input,
                            env=env, cmd_timeout=timeout)
        proc = subprocess.CompletedProcess(cmd, answer["rc"], answer["stdout"], answer["stderr"])
        if check and proc.returncode:
            raise HostCommandError(self.name, cmd, proc)
        return proc

    def _method(self, method, *args, timeout=120):
        return self._call("call", timeout=timeout, method=method, args=list(args)).get("value")

    def link_down(self, ifname):
        return self._method("link_down", ifname)

    def link_up(self, ifname):
        return self._method("link_up", ifname)

    def cable_out(self, ifname):
        return self._method("cable_out", ifname)

    def cable_in(self, ifname):
        return self._method("cable_in", ifname)

    def kill_all(self):
        return self._method("kill_all")

    def reboot(self):
        return self._method("reboot", timeout=300)

    def boot(self):
        """What the host runs at boot (its sysctls, iptables and salt-minion), in the guest."""
        return self._call("boot", timeout=300)


class GuestPart:
    """The guest of one run: its NICs on the run's switches, its agent, its hosts."""

    def __init__(self, lab, hosts, master_address, keys, say=None):
        self.lab, self.hosts = lab, hosts
        self.master_address, self.keys = master_address, keys
        self.say = say or (lambda msg: None)
        self.dir = lab.state_dir / "guest"
        self.client = rpc.Client(self.dir / "rpc")
        self.guest = None

    def networks(self):
        return sorted({link["network"] for spec in self.hosts.values() for link in spec["links"]})

    def _wire(self):
        """One tap per network in the run's switch namespace, on that network's bridge."""
        nics = []
        for index, network in enumerate(self.networks()):
            tap = tap_name(self.lab.prefix, network)
            netns.ip(self.lab.switch_ns, "tuntap", "add", "dev", tap, "mode", "tap")
            netns.ip(self.lab.switch_ns, "link", "set", tap, "master", self.lab.switches[network], "up")
            nics.append({"network": network, "tap": tap, "mac": guest_mac(self.lab.prefix, index)})
        return nics

    def start(self, timeout=600):
        """Boot the guest and wait until its agent has built the hosts; {name: GuestHost}."""
        nics = self._wire()
        self.dir.mkdir(parents=True, exist_ok=True)
        spec = {"prefix": self.lab.prefix, "hosts": self.hosts, "nics": nics,
                "master_address": self.master_address, "keys": {n: self.keys[n] for n in self.hosts}}
        # it holds the minions' private keys: the owner's only, and the agent removes it once read
        fd = os.open(self.dir / "spec.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(spec, fh)
        (self.dir / "ready.json").unlink(missing_ok=True)
        self.guest = Guest(AGENT, out_dir=self.dir, nics=[(n["tap"], n["mac"]) for n in nics],
                           netns=self.lab.switch_ns, env={"HAFW_GUEST_SPEC": "/run/hafw-out/spec.json"})
        self.guest.start()
        self._record_pid()
        last = None
        while not (self.dir / "ready.json").exists():
            if not self.guest.running():
                raise LabError("the IPVS guest stopped before its hosts were up:\n%s\n%s" % (
                    self.guest.result().output[-3000:], "\n".join(self.guest.result().console.splitlines()[-20:])))
            if time.monotonic() - self.guest.started > timeout:
                raise LabError("the IPVS guest's hosts were not up after %d s (%s)" % (timeout, self.guest.marker()))
            marker = self.guest.marker()
            if marker != last:
                self.say("guest: %s" % marker.removeprefix("hafw-guest: ").removeprefix("lab: "))
                last = marker
            time.sleep(0.5)
        return self.proxies()

    def _record_pid(self):
        """qemu runs in the switch namespace (lab.clean kills it there); recorded too, like a host's init."""
        started = netns.start_time(self.guest.proc.pid)
        with open(self.lab.state_dir / "pids", "a") as fh:
            fh.write("%d %s\n" % (self.guest.proc.pid, started))

    def proxies(self):
        return {name: GuestHost(name, self.client, spec) for name, spec in self.hosts.items()}

    @classmethod
    def attach(cls, lab, hosts):
        """The guest part of a run made by another process (its agent answers any process)."""
        part = cls(lab, hosts, None, {})
        if not (part.dir / "ready.json").exists():
            raise LabError("run %s has no IPVS guest up" % lab.prefix)
        return part
