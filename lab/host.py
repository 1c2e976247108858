"""A lab host: network + mount + UTS + PID namespaces with private /etc, /var, /run.

The host's network namespace is a named one (`ip netns add`); the other
namespaces belong to a small init process started with
`ip netns exec NS unshare --mount --uts --pid --fork --mount-proc ...`.
That init overlay-mounts /etc and /var (upper dirs in the run's state dir,
so they survive a crash like a disk would), mounts a fresh tmpfs on /run,
sets the hostname and then only reaps orphans.  Killing it kills every
process of the host: a power cut.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import netns
from .names import LabError

READY_MARK = "/run/lab-host-ready"

# PID 1 of the host.  Runs with the lab's Python, stdlib only.
INIT_SCRIPT = r"""# PID 1 of a lab host (written by lab/host.py)
import os, signal, socket, subprocess, sys
name, host_dir, private_tmp = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)  # only SIGKILL from outside ends a host

def mount(*args):
    subprocess.run(["mount", *args], check=True)

for top in ("etc", "var"):
    opts = "lowerdir=/%s,upperdir=%s/%s.upper,workdir=%s/%s.work" % (top, host_dir, top, host_dir, top)
    mount("-t", "overlay", "lab-" + top, "-o", opts, "/" + top)
mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "lab-run", "/run")
os.mkdir("/run/lock")
os.chmod("/run/lock", 0o1777)  # /var/lock -> /run/lock on Debian
if private_tmp:
    mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "lab-tmp", "/tmp")
socket.sethostname(name)
with open("/etc/hostname", "w") as f:
    f.write(name + "\n")
with open("/etc/hosts", "a+") as f:  # so the hostname resolves at once
    f.seek(0)
    if ("127.0.1.1\t%s\n" % name) not in f.read():
        f.write("127.0.1.1\t%s\n" % name)
with open("/run/lab-host-ready", "w") as f:
    f.write(name + "\n")

# Reap orphans forever.  SIGCHLD stays blocked so sigtimedwait cannot miss it.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        signal.sigtimedwait({signal.SIGCHLD}, 60)
"""

# Commands in a host get a plain root environment, not the caller's.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}


class HostCommandError(subprocess.CalledProcessError):
    """A command in a host failed; str() shows the host and its stderr."""

    def __init__(self, host, cmd, proc):
        super().__init__(proc.returncode, cmd, proc.stdout, proc.stderr)
        self.host = host

    def __str__(self):
        return "on %s: %s failed (rc %d): %s" % (
            self.host, self.cmd, self.returncode,
            (self.stderr or self.stdout or "").strip()[-2000:])


class Host:
    """One host of a lab; made by Lab.add_host(), not directly."""

    def __init__(self, name, netns_name, host_dir, run_dir, switch_ns, private_tmp=False):
        self.name = name
        self.netns = netns_name
        self.dir = Path(host_dir)  # overlay dirs, init.log, host.json
        self.run_dir = Path(run_dir)  # the run's state dir (pids file)
        self.switch_ns = switch_ns
        self.private_tmp = private_tmp
        self.links = []  # {port, bridge, ifname, addresses, mac}, replayed on reboot
        self.routes = []  # {dest, via, dev}, replayed on reboot
        self.init_pid = None
        self.init_started = None  # start time of init_pid, guards against pid reuse
        self._launcher = None  # our `ip netns exec ... unshare` child, if we started it

    def __repr__(self):
        return "<Host %s netns=%s init=%s>" % (self.name, self.netns, self.init_pid)

    # --- persistence (so another process, e.g. the CLI, can attach) ---

    FIELDS = ("name", "netns", "switch_ns", "private_tmp", "links", "routes",
              "init_pid", "init_started")

    def save(self):
        state = {k: getattr(self, k) for k in self.FIELDS}
        (self.dir / "host.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, host_dir, run_dir):
        state = json.loads((Path(host_dir) / "host.json").read_text())
        host = cls(state["name"], state["netns"], host_dir, run_dir,
                   state["switch_ns"], state["private_tmp"])
        for key in ("links", "routes", "init_pid", "init_started"):
            setattr(host, key, state[key])
        return host

    # --- network: the host's "hardware" and boot-time config ---

    def create_netns(self):
        """Create the network namespace and wire the recorded links and routes."""
        netns.add_netns(self.netns)
        for link in self.links:
            self._wire(link)
        for route in self.routes:
            netns.add_route(self.netns, **route)

    def delete_netns(self):
        """Unplug all links and delete the network namespace."""
        for link in self.links:
            # Deleting the switch end removes both ends now, not when the netns dies.
            netns.delete_link(self.switch_ns, link["port"])
        netns.delete_netns(self.netns)

    def _wire(self, link):
        netns.add_veth(self.switch_ns, link["port"], link["bridge"], self.netns,
                       link["ifname"], link["mac"])
        for cidr in link["addresses"]:
            netns.add_address(self.netns, link["ifname"], cidr)
        netns.link_up(self.netns, link["ifname"])

    def plug(self, port, bridge, ifname, addresses=(), mac=None):
        """Add interface `ifname` cabled to `bridge` via switch port `port`."""
        link = {"port": port, "bridge": bridge, "ifname": ifname,
                "addresses": list(addresses), "mac": mac}
        self._wire(link)
        # Keep the NIC's address across reboots, or peers' ARP caches go stale.
        link["mac"] = netns.mac_address(self.netns, ifname)
        self.links.append(link)
        self.save()

    def add_route(self, dest, via=None, dev=None):
        """Add a route now and after every reboot."""
        netns.add_route(self.netns, dest, via, dev)
        self.routes.append({"dest": dest, "via": via, "dev": dev})
        self.save()

    def link_up(self, ifname):
        netns.link_up(self.netns, ifname)

    def link_down(self, ifname):
        """`ip link set down` in the host: the interface and its routes go away."""
        netns.link_down(self.netns, ifname)

    def _port(self, ifname):
        for link in self.links:
            if link["ifname"] == ifname:
                return link["port"]
        raise LabError("%s has no link %s" % (self.name, ifname))

    def cable_out(self, ifname):
        """Pull the cable: the switch port goes down, the host's interface stays
        up with NO-CARRIER, and keeps its addresses and routes, as on hardware."""
        netns.link_down(self.switch_ns, self._port(ifname))

    def cable_in(self, ifname):
        """Plug the cable back: carrier returns on the host's interface."""
        netns.link_up(self.switch_ns, self._port(ifname))

    # --- life cycle ---

    @property
    def running(self):
        """True while the host's init lives."""
        return bool(self.init_pid) and netns.start_time(self.init_pid) == self.init_started

    def start(self, timeout=10.0):
        """Boot the host: start its init and wait until its mounts are ready."""
        if self.running:
            return
        for sub in ("etc.upper", "etc.work", "var.upper", "var.work"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # A file rather than `-c`, so that `ps` in the host shows a short line.
        (self.dir / "init.py").write_text(INIT_SCRIPT)
        cmd = ["ip", "netns", "exec", self.netns,
               "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
               "--propagation", "private",
               sys.executable, "-I", str(self.dir / "init.py"),
               self.name, str(self.dir), "1" if self.private_tmp else "0"]
        with open(self.dir / "init.log", "ab") as log:
            # Own session: a Ctrl-C in the terminal must not hit the hosts.
            self._launcher = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._launcher.poll() is not None or time.monotonic() > deadline:
                self.kill_all()
                log = (self.dir / "init.log").read_text(errors="replace")[-2000:]
                raise LabError("host %s did not start:\n%s" % (self.name, log))
            time.sleep(0.02)
        self.save()

    def _ready(self):
        """Find the init (PID 1 inside) below our launcher; True once it is ready."""
        if not self.init_pid:
            self.init_pid = find_ns_init(self._launcher.pid)
            if not self.init_pid:
                return False
            self.init_started = netns.start_time(self.init_pid)
            # Recorded so that lab.clean can end this host if we crash.
            with open(self.run_dir / "pids", "a") as pids:
                pids.write("%d %s %s\n" % (self.init_pid, self.init_started, self.name))
        return os.path.exists("/proc/%d/root%s" % (self.init_pid, READY_MARK))

    def kill_all(self, timeout=10.0):
        """Crash the host: SIGKILL its init, so the kernel kills all its processes."""
        if self.init_pid:
            netns.kill(self.init_pid, self.init_started)
            netns.wait_gone([self.init_pid], timeout)
        if self._launcher:
            self._launcher.wait(timeout)
            self._launcher = None
        self.init_pid = self.init_started = None
        if self.dir.is_dir():
            self.save()

    def stop(self, grace=5.0):
        """Shut down: SIGTERM every process of the host, wait up to grace s, kill the rest."""
        if self.running:
            self.exec(["kill", "-TERM", "-1"], check=False)
            deadline = time.monotonic() + grace
            while len(self.pids()) > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        self.kill_all()

    def reboot(self):
        """Power-cycle: kill everything and start again with a fresh network namespace.

        The new netns empties conntrack, iptables and sysctls, as a real reboot
        does; /etc and /var keep their changes, /run starts empty.
        """
        self.kill_all()
        self.delete_netns()
        self.create_netns()
        self.start()

    def pids(self):
        """Pids of the host's processes as seen inside the host (1 is init)."""
        if not self.running:
            return []
        proc_dir = "/proc/%d/root/proc" % self.init_pid
        return sorted(int(p) for p in os.listdir(proc_dir) if p.isdigit())

    # --- running commands inside ---

    def command(self, cmd):
        """The argument list that runs cmd (a list, or a str for `sh -c`) in the host.

        setpriv's parent-death signal ends the command when nsenter is killed
        (e.g. on timeout), so no stray command lingers in the host.
        """
        if not self.running:
            raise LabError("host %s is not running" % self.name)
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        return ["nsenter", "--target", str(self.init_pid), "--net", "--mount", "--uts",
                "--pid", "--", "setpriv", "--pdeathsig", "KILL", "--", *cmd]

    def exec(self, cmd, check=True, timeout=60, input=None, env=None):
        """Run cmd in the host, wait, return CompletedProcess (text stdout/stderr).

        Output is read until EOF: a command that leaves a process in the
        background must redirect its output (`cmd >/dev/null 2>&1 &`), as
        with subprocess.run.  On timeout the command and its descendants are
        killed and subprocess.TimeoutExpired is raised.
        """
        with self.popen(cmd, env=env, text=True, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL) as nsenter:
            try:
                stdout, stderr = nsenter.communicate(input, timeout)
            except subprocess.TimeoutExpired:
                # Kill below nsenter so that nsenter itself reaps and returns.
                for pid in reversed(netns.descendants(nsenter.pid)):
                    netns.kill(pid)
                nsenter.wait()  # not communicate(): orphans may hold the pipes open
                raise
        proc = subprocess.CompletedProcess(nsenter.args, nsenter.returncode, stdout, stderr)
        if check and proc.returncode != 0:
            raise HostCommandError(self.name, cmd, proc)
        return proc

    def popen(self, cmd, env=None, **kwargs):
        """Start cmd in the host without waiting; kwargs go to subprocess.Popen.

        The Popen is nsenter's; killing it ends cmd too (parent-death signal),
        but not cmd's own children.
        """
        return subprocess.Popen(self.command(cmd), env={**BASE_ENV, **(env or {})}, **kwargs)


def find_ns_init(launcher_pid):
    """Pid (as seen from here) of the PID-namespace init below launcher_pid, or None."""
    for pid in netns.descendants(launcher_pid):
        try:
            status = Path("/proc/%d/status" % pid).read_text()
        except FileNotFoundError:
            continue
        nspids = next(x.split()[1:] for x in status.splitlines() if x.startswith("NSpid:"))
        if len(nspids) > 1 and nspids[-1] == "1":
            return pid
    return None
