"""The reference deployment as a live Salt fleet: lab hosts built from lab/topology.yaml.

    with Lab() as lab:                      # or Lab().create(hold=False) to outlive the process
        fleet = Fleet(lab).up()             # start() (build, salt-master, minions) + converge
        fleet.converge()                    # salt '*fw*' state.apply, through the master
        fleet.crash("fw-cent7i"); fleet.reboot("fw-cent7i")

Fleet(lab, agentless=True) runs the same fleet without minions: sshd in each
formula host and salt-ssh from the salt host (lab/saltssh.py); no salt-master
daemon, no beacon, no reactor, no startup highstate.

See docs/lab.md.
"""

import ipaddress
import json
import time
from pathlib import Path

import yaml

from . import saltmaster, saltssh
from .diagnose import vrrp_report
from .guest.remote import GuestPart
from .lab import Lab
from .names import LabError
from .salt import example_pillar

TOPOLOGY = Path(__file__).resolve().parent / "topology.yaml"
DAEMONS = ("salt-master", "salt-minion", "keepalived", "conntrackd")


def _cidrs(network, addresses):
    """Addresses on a network as CIDRs; a bare address takes the network's prefix length."""
    net = ipaddress.ip_network(network)
    out = []
    for addr in addresses:
        iface = ipaddress.ip_interface(addr if "/" in addr else "%s/%d" % (addr, net.prefixlen))
        if iface.ip not in net:
            raise LabError("%s is not in %s" % (addr, network))
        out.append(str(iface))
    return out


def kernel_has_ipvs():
    """Whether this kernel has IPVS loaded (read only: the lab loads no module in the root namespace)."""
    return Path("/proc/net/ip_vs").exists()


def load_topology(path=TOPOLOGY, pillar=None, ipvs=False):
    """The topology with every address resolved (pillar addresses filled in), as plain data.

    ipvs: the hosts marked `needs: ipvs` (the live load balancers) instead of
    those marked `needs: no-ipvs` (their stand-in).
    """
    pillar = pillar or example_pillar()
    clusters = pillar["hafw"]["clusters"]
    nodes = {n: c["nodes"][n] for c in clusters.values() for n in c["nodes"]}
    raw = yaml.safe_load(Path(path).read_text())
    networks, hosts = raw["networks"], {}
    for name, spec in raw["hosts"].items():
        needs = spec.get("needs")
        if needs not in (None, "ipvs", "no-ipvs"):
            raise LabError("%s: needs: %r (ipvs or no-ipvs)" % (name, needs))
        if (needs == "ipvs" and not ipvs) or (needs == "no-ipvs" and ipvs):
            continue
        pillar_ifs, vips, routes = {}, {}, dict(spec.get("routes") or {})
        if spec.get("pillar"):
            pillar_ifs = nodes[name]["interfaces"]
        elif spec.get("stand_in_for"):
            cluster = clusters[spec["stand_in_for"]]
            pillar_ifs = next(iter(cluster["nodes"].values()))["interfaces"]
            for inst in cluster.get("vrrp", {}).get("instances", {}).values():
                vips.setdefault(inst["interface"], []).extend(inst["vips"])
            routes.update({r["to"]: r["via"] for r in cluster.get("routes", [])})
        links = []
        for ifname, text in spec["links"].items():
            network, *addrs = text.split()
            if network not in networks:
                raise LabError("%s:%s: no network %r" % (name, ifname, network))
            if not addrs:
                given = pillar_ifs.get(ifname)
                addrs = [given] if isinstance(given, str) else list(given or [])
                if not addrs:
                    raise LabError("%s:%s: no address in the topology or the pillar" % (name, ifname))
            addrs += vips.get(ifname, [])
            links.append({"ifname": ifname, "network": network, "addresses": _cidrs(networks[network], addrs)})
        missing = set(pillar_ifs) - {link["ifname"] for link in links}
        if missing:
            raise LabError("%s: pillar interfaces %s have no link in the topology" % (name, sorted(missing)))
        if spec.get("gateway"):
            routes["default"] = spec["gateway"]
        hosts[name] = {"role": spec.get("role", ""), "minion": bool(spec.get("pillar")), "needs": needs,
                       "master": bool(spec.get("master")), "links": links,
                       "routes": [{"dest": d, "via": v} for d, v in routes.items()],
                       "sysctl": spec.get("sysctl") or {}, "iptables": spec.get("iptables") or []}
    masters = [n for n, h in hosts.items() if h["master"]]
    if len(masters) != 1:
        raise LabError("the topology needs exactly one host with master: true, not %s" % masters)
    return {"networks": networks, "hosts": hosts,
            "pair_vips": {n: [v.split("/")[0] for c in clusters.values() if n in c["nodes"]
                              for i in c.get("vrrp", {}).get("instances", {}).values() for v in i["vips"]]
                          for n in hosts if hosts[n]["minion"]}}


def build_host(lab, name, spec):
    """A host of the topology on lab's switches: links, addresses, routes (not booted)."""
    host = lab.add_host(name)
    for link in spec["links"]:
        lab.connect(host, link["network"], link["ifname"], link["addresses"])
    for route in spec["routes"]:
        host.add_route(route["dest"], via=route["via"])
    return host


def boot_host(host, spec):
    """What a plain host runs at boot: its sysctls and iptables rules (the salt daemons are Fleet.boot's)."""
    for key, value in spec["sysctl"].items():
        host.exec(["sysctl", "-qw", "%s=%s" % (key, value)])
    for rule in spec["iptables"]:
        host.exec(["iptables", *map(str, rule)])


class Fleet:
    """A lab run built from the topology, with a salt-master and minions."""

    def __init__(self, lab, topology=None, say=None, pillar=None, agentless=False, ipvs_guest=False):
        """pillar: the hafw pillar to serve (a dict); default pillar.example, unchanged.
        agentless: salt-ssh instead of a salt-master and minions.
        ipvs_guest: the live load balancers (the hosts that need IPVS) instead of their
        stand-in, in a qemu guest (lab/guest/) unless this kernel has IPVS loaded."""
        self.lab = lab
        self.agentless = agentless
        self.pillar = pillar
        if agentless and ipvs_guest:
            raise LabError("the IPVS guest's minions need the salt-master: no agentless run with the load balancers")
        self.topology = topology or load_topology(pillar=pillar, ipvs=ipvs_guest)
        # with IPVS loaded here the load balancers run natively (their ip_vs modules are then loaded)
        native = kernel_has_ipvs()
        self.guest_hosts = [n for n, h in self.topology["hosts"].items() if h["needs"] == "ipvs" and not native]
        self.guest, self.remote = None, {}
        self.say = say or (lambda msg: None)
        self.timings = {}
        master = next(n for n, h in self.topology["hosts"].items() if h["master"])
        self.master_name = master
        self.master_address = self.mgmt_address(master)
        self.minions = [n for n, h in self.topology["hosts"].items() if h["minion"]]

    @classmethod
    def attach(cls, prefix, say=None):
        """The Fleet of a run made by another process (python -m lab up)."""
        lab = Lab.attach(prefix)
        saved = lab.state_dir / "fleet.json"
        if not saved.exists():
            raise LabError("lab run %s is not a fleet (no fleet.json)" % prefix)
        fleet = cls(lab, json.loads(saved.read_text()), say, agentless=(lab.state_dir / "agentless").exists())
        if fleet.guest_hosts:
            fleet.guest = GuestPart.attach(lab, {n: fleet.topology["hosts"][n] for n in fleet.guest_hosts})
            fleet.remote = fleet.guest.proxies()
        return fleet

    def __getitem__(self, name):
        return self.remote[name] if name in self.remote else self.lab[name]

    @property
    def master(self):
        return self.lab[self.master_name]

    def _timed(self, label, func, *args, **kwargs):
        self.say("%s ..." % label)
        start = time.monotonic()
        result = func(*args, **kwargs)
        self.timings[label] = round(time.monotonic() - start, 2)
        self.say("%s ... %.1f s" % (label, self.timings[label]))
        return result

    # --- building ---

    def up(self):
        """start(), then converge through the master and wait for the VRRP masters."""
        self.start()
        results = self._timed("converging %s" % ",".join(self.minions), self.converge, "*")
        bad = {m: r["failed"] for m, r in results.items() if not r["ok"]}
        if bad or set(results) != set(self.minions):
            raise LabError("converge failed: %s (returned: %s)" % (bad, sorted(results)))
        self._timed("waiting for VRRP masters", self.wait_vrrp)
        return self

    def start(self):
        """Build the hosts, start the salt-master and the minions (agentless: the
        sshds), wait until all answer."""
        self._timed("building %d hosts" % len(self.topology["hosts"]), self.build)
        if self.agentless:
            for name in self.minions:
                self.boot(name)
            self._timed("waiting for %d hosts over ssh" % len(self.minions), self.wait_minions)
            return self
        self._timed("starting salt-master", self.boot, self.master_name)
        for name in self.minions:
            self.boot(name)
        # a minion in the TCG guest starts about 20 times slower than here
        self._timed("waiting for %d minions" % len(self.minions), self.wait_minions,
                    timeout=400 if self.guest_hosts else 90)
        return self

    def build(self):
        """Switches, hosts, links, routes and boot config of every host; keys and configs for Salt."""
        (self.lab.state_dir / "fleet.json").write_text(json.dumps(self.topology, indent=1))
        for network in self.topology["networks"]:
            self.lab.add_switch(network)
        for name, spec in self.topology["hosts"].items():
            if name in self.guest_hosts:
                continue
            build_host(self.lab, name, spec)
            if not spec["master"] and not spec["minion"]:
                self.boot(name)
        if self.agentless:
            (self.lab.state_dir / "agentless").touch()
            saltmaster.configure_master(self.master, self.master_address, [], self.pillar)
            client_key = saltssh.client_key(self.master)
            known_hosts = [saltssh.configure_target(self[name], self.mgmt_address(name), client_key)
                           for name in self.minions]
            saltssh.configure_control(self.master, {n: self.mgmt_address(n) for n in self.minions}, known_hosts)
            return
        keys = saltmaster.configure_master(self.master, self.master_address, self.minions, self.pillar)
        for name in self.minions:
            if name not in self.guest_hosts:
                saltmaster.configure_minion(self[name], name, self.master_address, keys[name])
        if self.guest_hosts:
            self.guest = GuestPart(self.lab, {n: self.topology["hosts"][n] for n in self.guest_hosts},
                                   self.master_address, keys, say=self.say)
            self.remote = self._timed("starting the IPVS guest (%s)" % ",".join(self.guest_hosts),
                                      self.guest.start)

    def mgmt_address(self, name):
        """The host's address on the mgmt network (where its salt daemon or sshd listens)."""
        links = self.topology["hosts"][name]["links"]
        mgmt = [link for link in links if link["network"] == "mgmt"] or links
        return mgmt[0]["addresses"][0].split("/")[0]

    def boot(self, name):
        """What a host runs at boot: sysctls, iptables, its salt daemon."""
        spec, host = self.topology["hosts"][name], self[name]
        if name in self.guest_hosts:
            host.boot()  # the guest's agent runs boot_host there
            return
        boot_host(host, spec)
        if spec["master"]:
            saltmaster.start_master(host)
            saltmaster.wait_master(host, self.master_address)
            saltmaster.start_eventlog(host)
            saltmaster.sync_runners(host)
        if spec["minion"]:
            if self.agentless:
                saltssh.start_sshd(host)
            else:
                saltmaster.start_minion(host)

    # --- Salt ---

    def events(self, since=0.0, prefix=""):
        """The master's recorded events (lab/eventlog.py) received after `since` (epoch s), tag prefix."""
        out = self.master.exec(["cat", saltmaster.EVENTLOG], check=False).stdout
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [e for e in events if e["t"] >= since and e["tag"].startswith(prefix)]

    def beacon_event(self, node, state, since, kind="GROUP"):
        """The first keepalived beacon event (a sync group's, by default) of node entering state,
        received after since (epoch s), or None."""
        for event in self.events(since, f"salt/beacon/{node}/keepalived/"):
            if event["tag"].endswith("/" + state) and event["data"].get("kind") == kind:
                return event
        return None

    def hook_role(self, name):
        """What the transition hook last recorded on the node: primary, backup, fault, stop or ''."""
        return self[name].exec(["cat", "/run/conntrackd/hafw-role"], check=False).stdout.split(" ")[0]

    def reactor_return(self, node, since):
        """The return of the reactor's vrrp_sync.consistent job on node received after since, or None."""
        for event in self.events(since, "salt/job/"):
            data = event["data"]
            if data.get("id") == node and data.get("fun") == "state.single" and \
                    "vrrp_sync.consistent" in json.dumps(data.get("fun_args")):
                return event
        return None

    def salt_run(self, *args, timeout=60):
        """`salt-run ARGS... --out json` on the master; the parsed output."""
        return saltmaster.salt_run(self.master, *args, timeout=timeout)

    def salt(self, *args, timeout=60):
        """`salt ARGS... --out json --static` on the master (agentless: `salt-ssh`); the parsed output."""
        if self.agentless:
            return saltssh.salt_ssh(self.master, *args, timeout=timeout * 3 + 60)
        return saltmaster.salt(self.master, *args, timeout=timeout)

    def set_pillar(self, pillar):
        """Serve another hafw pillar (a dict; None: pillar.example); the next converge applies it.

        The topology (addresses, VIPs) must stay what it was: only settings may change.
        """
        lbs = any(h["needs"] == "ipvs" for h in self.topology["hosts"].values())
        if load_topology(pillar=pillar, ipvs=lbs) != self.topology:
            raise LabError("the new pillar changes the lab's topology (addresses or VIPs)")
        saltmaster.set_pillar(self.master, pillar)
        self.pillar = pillar

    def wait_minions(self, minions=None, timeout=90):
        if self.agentless:
            return saltssh.wait_targets(self.master, minions or self.minions, timeout)
        # a guest minion answers a ping in seconds: a shorter CLI timeout only piles up pings
        return saltmaster.wait_minions(self.master, minions or self.minions, timeout,
                                       ping_timeout=30 if self.guest_hosts else 3)

    def converge(self, target="*fw*", timeout=None):
        """salt TARGET state.apply; {minion: summary} (ok, states, changed, failed).

        Every host the master converged from then on highstates itself at boot.
        """
        # queue: a state the reactor runs on a new master (vrrp_sync.consistent) may be running
        queue = [] if self.agentless else ["queue=True"]
        timeout = timeout or (900 if self.guest_hosts and target in ("*", "lb*", "*lb*") else 300)
        result = self.salt(target, "state.apply", *queue, timeout=timeout)
        summaries = {m: saltmaster.summary(r) for m, r in result.items()}
        for minion, s in summaries.items():
            if s["ok"] and minion in self.lab.hosts and not self.agentless:
                saltmaster.enable_startup_highstate(self[minion])
        return summaries

    # --- failures ---

    def crash(self, name):
        """Power cut: every link down, every process killed. Addresses and conntrack
        entries stay in the dead netns, unreachable, until reboot() replaces it."""
        host = self[name]
        if host.running:
            for link in host.links:
                host.link_down(link["ifname"])
        host.kill_all()

    def reboot(self, name, timeout=180):
        """Power-cycle (new netns: empty conntrack, iptables, sysctls) and boot;
        a minion's startup highstate is awaited: returns its summary (not in
        the IPVS guest, where the host boots as Debian does and is back at once)."""
        since = time.time()
        self[name].reboot()
        self.boot(name)
        if not self.topology["hosts"][name]["minion"] or self.agentless:
            return None  # agentless: no startup highstate, the operator converges
        if name in self.guest_hosts:
            return None  # back by its Debian boot (lab/guest/agent.py); the highstate runs on, slowly
        result, seconds = saltmaster.wait_highstate(self.master, name, since, timeout)
        self.timings["reboot %s: startup highstate returned" % name] = round(seconds, 2)
        return result

    # --- looking ---

    def vips(self, name):
        """The pair VIPs (from the pillar) that host `name` holds now."""
        host = self[name]
        if not host.running:
            return []
        addrs = host.exec(["ip", "-o", "-4", "addr", "show"]).stdout
        return [v for v in self.topology["pair_vips"].get(name, []) if " %s/" % v in addrs]

    def wait_vips(self, name, count=None, timeout=30):
        """Wait until host `name` holds `count` pair VIPs (default: all); returns seconds."""
        want = len(self.topology["pair_vips"][name]) if count is None else count
        start = time.monotonic()
        while len(self.vips(name)) != want:
            if time.monotonic() - start > timeout:
                raise TimeoutError("%s holds %s, not %d VIPs, after %d s\n%s"
                                   % (name, self.vips(name), want, timeout, vrrp_report(self[name])))
            time.sleep(0.2)
        return time.monotonic() - start

    def wait_vrrp(self, timeout=40):
        """Wait until each VRRP pair has one host holding all its VIPs and the other none."""
        pairs = {}
        for name, vips in self.topology["pair_vips"].items():
            if vips:
                pairs.setdefault(tuple(sorted(vips)), []).append(name)
        deadline = time.monotonic() + timeout
        for vips, members in pairs.items():
            settled = [0] * (len(members) - 1) + [len(vips)]  # one holds them all, the others none
            while sorted(len(self.vips(m)) for m in members) != settled:
                if time.monotonic() > deadline:
                    raise TimeoutError("no single VRRP master among %s\n%s" % (
                        members, "".join("-- %s\n%s" % (m, vrrp_report(self[m])) for m in members)))
                time.sleep(0.2)

    def status(self):
        """{host: {running, role, vrrp, vips, daemons}} of every host."""
        out = {}
        for name, spec in self.topology["hosts"].items():
            host = self[name]
            entry = {"running": host.running, "role": spec["role"], "vrrp": None, "vips": [], "daemons": []}
            if host.running:
                ps = host.exec(["ps", "-eo", "comm=,args="]).stdout
                entry["daemons"] = [d for d in DAEMONS if any(d in line for line in ps.splitlines())]
                pair = self.topology["pair_vips"].get(name)
                if pair:
                    entry["vips"] = self.vips(name)
                    entry["vrrp"] = {0: "BACKUP", len(pair): "MASTER"}.get(len(entry["vips"]), "SPLIT")
            out[name] = entry
        return out
