"""The lab fleet from the command line (docs/lab.md).

    python -m lab up                 build lab/topology.yaml, start salt, converge; leave it running
    python -m lab up --agentless     the same with sshd in the formula hosts and salt-ssh, no minions
    python -m lab up --lb            the live load-balancer pair too (IPVS: in a qemu guest here)
    python -m lab status             hosts, VRRP role (VIPs held), daemons running
    python -m lab exec HOST CMD...   run a command in a host (interactive: exec HOST bash)
    python -m lab salt ARGS...       the salt CLI on the master, e.g. salt '*fw*' state.apply
    python -m lab salt-ssh ARGS...   salt-ssh from the salt host (the repo's Saltfile), e.g. '*fw*' state.apply
    python -m lab crash HOST         links down, every process killed
    python -m lab reboot HOST        power-cycle; a minion host converges itself (startup highstate)
    python -m lab down               tear the run down (make lab-clean removes any leftover)

With several runs alive, pick one with --prefix hfXXXX-.
"""

import argparse
import sys
import time

from .fleet import TOPOLOGY, Fleet, load_topology
from .lab import Lab
from .names import LabError
from .salt import REPO
from .saltmaster import VENV_BIN


def say(msg):
    print("lab: %s" % msg, flush=True)


def fleet_runs():
    return [p for p in Lab.runs() if (Lab(p).state_dir / "fleet.json").exists()]


def attach(prefix):
    if not prefix:
        runs = fleet_runs()
        if len(runs) != 1:
            raise LabError("%s; pick one with --prefix" % ("no fleet is up (python -m lab up)" if not runs
                                                           else "several fleets are up: %s" % " ".join(runs)))
        prefix = runs[0]
    return Fleet.attach(prefix, say)


def cmd_up(args):
    lab = Lab().create(hold=False)
    start = time.monotonic()
    try:
        topology = load_topology(args.topology, ipvs=args.lb)
        fleet = Fleet(lab, topology, say, agentless=args.agentless, ipvs_guest=args.lb)
        say("run %s (state in %s)" % (lab.prefix, lab.state_dir))
        fleet.up()
    except BaseException:  # error or Ctrl-C: nothing is left behind
        say("failed: tearing %s down" % lab.prefix)
        lab.destroy()
        raise
    say("up in %.1f s: %s" % (time.monotonic() - start, ", ".join("%s %.1f s" % kv for kv in fleet.timings.items())))
    say("next: python -m lab status | salt '*fw*' state.apply | crash fw-cent7i | down")
    return 0


def cmd_status(args):
    fleet = attach(args.prefix)
    rows = [("HOST", "STATE", "VRRP", "DAEMONS", "ADDRESSES", "ROLE")]
    for name, st in fleet.status().items():
        addrs = " ".join(a for link in fleet.topology["hosts"][name]["links"] for a in link["addresses"][:1])
        rows.append((name, "up" if st["running"] else "DOWN",
                     "%s (%d VIPs)" % (st["vrrp"], len(st["vips"])) if st["vrrp"] else "-",
                     ",".join(st["daemons"]) or "-", addrs, st["role"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    print("run %s" % fleet.lab.prefix)
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return 0


def _interactive(host, cmd):
    if not hasattr(host, "popen"):  # a host in the IPVS guest: the command's output once it ends
        proc = host.exec(cmd, check=False, timeout=600)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        return proc.returncode
    proc = host.popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


def cmd_exec(args):
    fleet = attach(args.prefix)
    return _interactive(fleet[args.host], args.cmd)


def cmd_salt(args):
    fleet = attach(args.prefix)
    return _interactive(fleet.master, [str(VENV_BIN / "salt"), *args.args])


def cmd_salt_ssh(args):
    fleet = attach(args.prefix)
    return _interactive(fleet.master, ["sh", "-c", 'cd "$0" && exec "$@"', str(REPO),
                                       str(VENV_BIN / "salt-ssh"), *args.args])


def cmd_crash(args):
    fleet = attach(args.prefix)
    start = time.monotonic()
    fleet.crash(args.host)
    say("%s crashed (links down, processes killed) in %.1f s" % (args.host, time.monotonic() - start))
    return 0


def cmd_reboot(args):
    fleet = attach(args.prefix)
    start = time.monotonic()
    result = fleet.reboot(args.host)
    took = time.monotonic() - start
    if result is None:
        say("%s rebooted in %.1f s" % (args.host, took))
        return 0
    say("%s rebooted and converged itself in %.1f s: %d states, %d changed, %d failed"
        % (args.host, took, result["states"], len(result["changed"]), len(result["failed"])))
    for sid, comment in result["failed"].items():
        print("    %s: %s" % (sid, comment))
    return 0 if result["ok"] else 1


def cmd_down(args):
    fleet = attach(args.prefix)
    fleet.lab.destroy()
    say("%s torn down" % fleet.lab.prefix)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--prefix", help="the run to act on (default: the only fleet up)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build, converge, leave running")
    up.add_argument("--topology", default=str(TOPOLOGY))
    up.add_argument("--agentless", action="store_true", help="sshd and salt-ssh instead of salt minions")
    up.add_argument("--lb", action="store_true",
                    help="the live load-balancer pair (in the IPVS guest if this kernel has no IPVS) "
                         "instead of the stand-in")
    up.set_defaults(func=cmd_up)
    sub.add_parser("status", help="hosts, VRRP roles, daemons").set_defaults(func=cmd_status)
    ex = sub.add_parser("exec", help="run a command in a host")
    ex.add_argument("host")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)
    sa = sub.add_parser("salt", help="the salt CLI on the master")
    sa.add_argument("args", nargs=argparse.REMAINDER)
    sa.set_defaults(func=cmd_salt)
    ss = sub.add_parser("salt-ssh", help="salt-ssh from the salt host (agentless runs)")
    ss.add_argument("args", nargs=argparse.REMAINDER)
    ss.set_defaults(func=cmd_salt_ssh)
    for name, func in (("crash", cmd_crash), ("reboot", cmd_reboot)):
        p = sub.add_parser(name, help="%s a host" % name)
        p.add_argument("host")
        p.set_defaults(func=func)
    sub.add_parser("down", help="tear the run down").set_defaults(func=cmd_down)
    args = parser.parse_args(argv)
    if args.command == "exec" and not args.cmd:
        parser.error("exec needs a command")
    try:
        return args.func(args)
    except (LabError, TimeoutError, KeyError) as err:
        print("lab: error: %s" % err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
