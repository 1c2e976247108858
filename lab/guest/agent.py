"""
The guest's agent: builds a run's IPVS hosts inside the guest with the lab's
own code, cables them to the run's switches through the guest's NICs, and
then does what the host side asks (lab/guest/remote.py) until told to stop.

    HAFW_GUEST_SPEC=/run/hafw-out/spec.json python -m lab.guest.agent

The spec (written by GuestPart.start): the run's prefix, the hosts (as in
the resolved topology), the NICs (network, MAC) and the salt-master's
address with each minion's key. The guest's switches are bridges of the
same names in a switch namespace of the same name, each with the NIC of
its network as a port: a frame from a host here crosses the NIC to the
run's bridge on the other side.
"""

import json
import os
import sys
import time
from pathlib import Path

from .. import netns, saltmaster
from ..fleet import boot_host, build_host
from ..lab import Lab
from . import rpc

REPO = Path(__file__).resolve().parents[2]

# Under TCG a job process costs seconds (a fork that reloads the loader): run jobs in
# the minion's threads instead; nothing else about the minion changes.
GUEST_MINION = {"multiprocessing": False, "autoload_dynamic_modules": False}
# ... and no saltutil.sync_all (then a reload of every module) at the start of each
# state run, which costs a minute there: the formula's extension modules are put
# where that sync would put them, once, when the host is built.
EXTMODS = {"_modules": "modules", "_states": "states", "_utils": "utils", "_beacons": "beacons",
           "_grains": "grains"}
# What a Debian boot does with the files the formula wrote, before the minion
# starts: systemd-tmpfiles and systemd-sysctl on the formula's own files, the
# if-up.d route hook, the enabled daemons (keepalived, conntrackd). A host here
# thus comes back in seconds, as a real one does, instead of after the startup
# highstate, which takes minutes under emulation (it still runs, and finds
# nothing to change). Nothing happens on a host the formula never converged.
DEBIAN_BOOT = r"""
[ -d /etc/hafw ] || exit 0
for f in /etc/tmpfiles.d/hafw-*.conf; do
    [ -f "$f" ] || continue
    grep '^d ' "$f" | while read -r _ path mode user group _; do
        install -d -m "$mode" -o "$user" -g "$group" "$path"
    done
done
for f in /etc/sysctl.d/*hafw*.conf; do [ -f "$f" ] && sysctl -q -p "$f"; done
[ -x /etc/hafw/routes.sh ] && /etc/hafw/routes.sh
for daemon in conntrackd keepalived; do
    # only a config the formula wrote (Debian's conntrackd package ships one of its own)
    grep -qs "hafw formula" "/etc/$daemon/$daemon.conf" && ls /etc/rc2.d/S*"$daemon" >/dev/null 2>&1 \
        && "/etc/init.d/$daemon" start
done
exit 0
"""
IPVS_MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_sh", "nf_conntrack")
HOST_METHODS = ("link_down", "link_up", "cable_out", "cable_in", "kill_all", "reboot")


def say(text):
    print("lab: %s" % text, flush=True)


def nic_by_mac(mac):
    for dev in Path("/sys/class/net").iterdir():
        try:
            if (dev / "address").read_text().strip() == mac:
                return dev.name
        except OSError:
            continue
    raise RuntimeError("no NIC with MAC %s in the guest" % mac)


def seed_extmods(host, cachedir="/var/cache/salt/minion"):
    """The formula's _modules & co in the minion's extmods, as saltutil.sync_all leaves them."""
    for source, kind in EXTMODS.items():
        if (REPO / source).is_dir():
            host.exec(["sh", "-c", 'mkdir -p "$2" && cp -a "$1"/*.py "$2"/', "seed", str(REPO / source),
                       f"{cachedir}/extmods/{kind}"])


class Agent:
    def __init__(self, spec):
        self.spec = spec
        self.lab = Lab(prefix=spec["prefix"])
        self.server = None

    def build(self):
        # The hosts here share one kernel: loaded by two nodes' kmod states at once, a module
        # "appears" for one only, and Salt's kmod.present calls the other's load a failure
        # (seen: ip_vs_lc on lb-cent7h). Each real node has its own kernel; preload them here.
        for module in IPVS_MODULES:
            netns.run(["modprobe", module])
        lab = self.lab.create(hold=False)
        for nic in self.spec["nics"]:
            bridge = lab.add_switch(nic["network"])
            dev = nic_by_mac(nic["mac"])
            netns.run(["ip", "link", "set", dev, "netns", lab.switch_ns])
            netns.ip(lab.switch_ns, "link", "set", dev, "master", bridge, "up")
        for name, spec in self.spec["hosts"].items():
            say("building %s" % name)
            host = build_host(lab, name, spec)
            if spec["minion"]:
                saltmaster.configure_minion(host, name, self.spec["master_address"], self.spec["keys"][name],
                                            extra=GUEST_MINION)
                seed_extmods(host)

    def boot(self, name):
        host, spec = self.lab[name], self.spec["hosts"][name]
        boot_host(host, spec)
        host.exec(["sh", "-c", DEBIAN_BOOT])
        if spec["minion"]:
            saltmaster.start_minion(host)

    def handle(self, req):
        op, name = req["op"], req.get("host")
        if op == "exec":
            proc = self.lab[name].exec(req["argv"], check=False, timeout=req.get("cmd_timeout", 60),
                                       input=req.get("input"), env=req.get("env"))
            return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
        if op == "running":
            return {"running": self.lab[name].running}
        if op == "boot":
            self.boot(name)
            return {}
        if op == "call":
            if req["method"] not in HOST_METHODS:
                raise ValueError("no host method %r" % req["method"])
            return {"value": getattr(self.lab[name], req["method"])(*req.get("args", []))}
        if op == "shutdown":
            self.server.stop.set()
            return {}
        raise ValueError("unknown request %r" % op)

    def serve(self, root):
        self.server = rpc.Server(root, self.handle)
        self.server.serve()
        time.sleep(0.3)  # the shutdown answer is written
        self.lab.destroy()


def main():
    spec_path = Path(os.environ["HAFW_GUEST_SPEC"])
    spec = json.loads(spec_path.read_text())
    spec_path.unlink()  # the minions' private keys: now in their hosts' /etc/salt only
    start = time.monotonic()
    agent = Agent(spec)
    agent.build()
    (spec_path.parent / "ready.json").write_text(json.dumps({"built_s": round(time.monotonic() - start, 1)}))
    say("hosts %s up in %.0f s; serving" % (", ".join(spec["hosts"]), time.monotonic() - start))
    agent.serve(spec_path.parent / "rpc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
