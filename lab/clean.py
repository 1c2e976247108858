"""Find and remove lab runs: their processes, namespaces and state dirs.

A run is "held" while a process keeps its lock (a `with Lab()` block does);
held runs are live and skipped unless forced.  Everything else with the
project's prefix is a leftover of a crashed or detached run.

    python -m lab.clean [--prefix hf3a9c-] [--force] [--state-root DIR]
"""
import argparse
import fcntl
import shutil
import sys
from pathlib import Path

from . import netns
from .names import check_prefix, default_state_root, prefix_of
from .netns import kill, wait_gone

# One lock file per run, in the root mount namespace, so a run is found
# and known to be live whatever state root it uses.
REGISTRY = Path("/run/hafw-lab")


def read_pids(state_dir):
    """(pid, start_time) pairs recorded in a run's pids file."""
    try:
        lines = (Path(state_dir) / "pids").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(int(f[0]), f[1]) for f in (line.split() for line in lines) if len(f) >= 2]


def hold(prefix, state_dir):
    """Register a run and lock it as live; returns the open lock file (keep it)."""
    REGISTRY.mkdir(parents=True, exist_ok=True)
    lock = open(REGISTRY / (prefix + "lock"), "a+")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.truncate(0)
    lock.write(str(state_dir))
    lock.flush()
    return lock


def registered_state_dir(prefix):
    """The state dir a run registered, or None."""
    try:
        text = (REGISTRY / (prefix + "lock")).read_text().strip()
    except FileNotFoundError:
        return None
    return Path(text) if text else None


def is_held(prefix):
    """True if some live process holds the run's lock."""
    try:
        with open(REGISTRY / (prefix + "lock")) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True


def clean_run(prefix, state_dir=None, force=False):
    """Remove one run; returns what was done, as lines of text."""
    check_prefix(prefix)
    if is_held(prefix) and not force:
        return ["%s: live (lock held), skipped" % prefix]
    done = []
    state_dirs = {Path(d) for d in (state_dir, registered_state_dir(prefix)) if d}
    # First the recorded host inits: killing a PID-namespace init kills its host.
    recorded = [(p, t) for d in state_dirs for p, t in read_pids(d)]
    killed = [p for p, t in recorded if kill(p, t)]
    namespaces = [ns for ns in netns.list_netns() if ns.startswith(prefix)]
    # Then whatever still runs in the run's namespaces (all started by the lab).
    for ns in namespaces:
        killed += [p for p in netns.netns_pids(ns) if kill(p)]
    if killed:
        wait_gone(killed)
        done.append("%s: killed pids %s" % (prefix, " ".join(map(str, sorted(killed)))))
    for ns in namespaces:
        netns.delete_netns(ns)
        done.append("%s: deleted netns %s" % (prefix, ns))
    for d in state_dirs:
        if d.is_dir() and d.name == prefix.rstrip("-"):  # never rmtree a stray path
            shutil.rmtree(d)
            done.append("%s: removed %s" % (prefix, d))
    try:
        (REGISTRY / (prefix + "lock")).unlink()
    except FileNotFoundError:
        pass
    return done


def find_runs(state_root=None):
    """Prefixes of all runs seen: namespaces, registry entries, state dirs."""
    root = Path(state_root) if state_root else default_state_root()
    names = netns.list_netns()
    names += [p.name[:-len("lock")] for p in REGISTRY.glob("hf*-lock")]
    names += [p.name + "-" for p in root.glob("hf*") if p.is_dir()]
    return sorted({prefix_of(n) for n in names} - {None})


def clean(prefix=None, state_root=None, force=False):
    """Remove one run (prefix) or every run not held live; returns a report."""
    root = Path(state_root) if state_root else default_state_root()
    done = []
    for run in [prefix] if prefix else find_runs(root):
        done += clean_run(run, root / run.rstrip("-"), force=force)
    return done


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab.clean", description=__doc__.split("\n")[0])
    parser.add_argument("--prefix", help="clean only this run, e.g. hf3a9c-")
    parser.add_argument("--state-root", help="runs' state root (default: <repo>/.lab-run)")
    parser.add_argument("--force", action="store_true", help="also clean runs held live")
    args = parser.parse_args(argv)
    for line in clean(args.prefix, args.state_root, args.force) or ["nothing to clean"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
