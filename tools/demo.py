"""
make demo: the reference deployment, rendered and applied for real.

1. Renders every node of pillar.example (what `make render` shows) into
   lab-report/rendered/<node>/.
2. Builds three namespaced lab hosts on the seed's links (outside
   192.168.0.0/24, inside 192.168.1.0/24, sync 192.168.3.0/24): the firewall
   pair fw-cent7i/fw-cent7j and the standalone NAT firewall fw-cent7m.
3. Applies the formula on each with a real masterless salt-call (repo as
   file_roots, pillar.example unchanged), then again to show it is idempotent.
4. Shows the pair at work: VRRP roles and VIPs, the live ruleset, and a
   connection-tracking entry created on the master replicated to the backup.

The full lab (salt-master, minions, traffic, failover) is the next step of
the project; this demo is the formula-core stage and says so.
"""

import pathlib
import sys
import time

from lab import Lab
from lab import salt as labsalt
from tools.golden import render

REPO = pathlib.Path(__file__).resolve().parents[1]
REPORT = REPO / "lab-report"
HOSTS = ("fw-cent7i", "fw-cent7j", "fw-cent7m")


def say(msg):
    print(f"demo: {msg}", flush=True)


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    say(f"timed out waiting for {what}")
    return False


def apply(host, name, label):
    start = time.monotonic()
    rc, result = labsalt.salt_call(host, "state.apply")
    failed = labsalt.state_failures(result)
    changes = labsalt.state_changes(result) if not failed else {}
    say(f"{name}: {label}: {len(result)} states, {len(changes)} changed, {len(failed)} failed "
        f"({time.monotonic() - start:.1f} s)")
    if rc or failed:
        for sid, comment in failed.items():
            print(f"    {sid}: {comment}")
        raise SystemExit(f"demo: state.apply failed on {name}")
    return changes


def main():
    pillar = labsalt.example_pillar()
    say("1/4 rendering every node of pillar.example (make render)")
    for node in sorted(n for c in pillar["hafw"]["clusters"].values() for n in c["nodes"]):
        out = REPORT / "rendered" / node
        render(node, "Debian", out)
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        say(f"  {node}: {len(files)} files ({', '.join('/' + f for f in files[:4])}, ...)")

    say("2/4 building lab hosts (network, mount, UTS and PID namespaces each)")
    with Lab() as lab:
        for switch in ("net3", "net8", "net9"):
            lab.add_switch(switch)
        hosts = {}
        for name in HOSTS:
            hosts[name] = lab.add_host(name)
            for ifname, cidr in labsalt.node_interfaces(pillar, name).items():
                lab.connect(hosts[name], ifname.replace("enp0s", "net"), ifname, cidr)
            labsalt.configure_masterless(hosts[name], name, pillar)
        say(f"  lab prefix {lab.prefix}: {', '.join(HOSTS)}")

        say("3/4 state.apply on each host (masterless salt-call, pillar.example unchanged)")
        for name, host in hosts.items():
            apply(host, name, "first apply")
        for name, host in hosts.items():
            changes = apply(host, name, "second apply")
            if changes:
                raise SystemExit(f"demo: the second apply on {name} changed {sorted(changes)}")

        say("4/4 the pair at work")
        i, j = hosts["fw-cent7i"], hosts["fw-cent7j"]

        pair_vips = [v.split("/")[0] for inst in pillar["hafw"]["clusters"]["fw-pair"]["vrrp"]["instances"].values()
                     for v in inst["vips"]]

        def vips(host):
            addrs = host.exec(["ip", "-o", "-4", "addr"]).stdout
            return [v for v in pair_vips if f" {v}/" in addrs]

        wait_for("fw-cent7i to become master", lambda: len(vips(i)) == len(pair_vips), 30)
        for name in ("fw-cent7i", "fw-cent7j"):
            role = hosts[name].exec(["cat", "/run/conntrackd/hafw-role"], check=False).stdout.split()
            say(f"  {name}: holds {len(vips(hosts[name]))} of {len(pair_vips)} VIPs {vips(hosts[name])}, "
                f"last transition: {role[0] if role else 'none'}")
        rules = i.exec(["iptables-save"]).stdout
        say(f"  fw-cent7i ruleset: {rules.count('-A ')} rules, FORWARD policy "
            f"{'DROP' if ':FORWARD DROP' in rules else 'ACCEPT'}")
        # a forwarded connection's entry, created in the master's kernel table
        i.exec(["conntrack", "-I", "-p", "tcp", "-s", "192.168.0.201", "-d", "192.168.1.60", "--sport", "40000",
                "--dport", "25", "--state", "ESTABLISHED", "-u", "ASSURED", "-t", "300"])
        conf = "/etc/conntrackd/conntrackd.conf"
        replicated = wait_for("the entry on fw-cent7j", lambda: "dport=25" in j.exec(
            ["conntrackd", "-C", conf, "-e"], check=False).stdout, 15)
        say(f"  conntrack entry 192.168.0.201:40000 -> 192.168.1.60:25 created on fw-cent7i: "
            f"{'replicated to' if replicated else 'NOT seen on'} fw-cent7j's external cache")
        say("tearing the lab down")
    say(f"done: rendered files in {REPORT / 'rendered'}")
    say("next stage (issue 3): the full lab with a salt-master, 200 flows and a failover")
    return 0 if replicated else 1


if __name__ == "__main__":
    sys.exit(main())
