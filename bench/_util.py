"""Helpers shared by the bench scripts (not a bench: `make bench` skips _*.py)."""

import json
import os
import time
from datetime import datetime
from pathlib import Path

SYSCTL = Path("/proc/sys/net/netfilter")
# what a bench raised, so that a run killed by SIGKILL can be undone by the next one
SYSCTL_NOTE = Path("/run/hafw-bench.sysctl.json")


def say(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def pow2_at_least(n):
    p = 1
    while p < n:
        p *= 2
    return p


def hook_time(stamp, tz):
    """Epoch seconds of a transition-hook log stamp ('2026-11-26T09:12:15.444', '+0000'), or None."""
    try:
        return datetime.strptime(stamp + tz, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# the root namespace's conntrack limits (global: read-only in every other netns)
# ---------------------------------------------------------------------------

def _read_sysctl(name):
    return int((SYSCTL / name).read_text().split()[0])


def _write_sysctl(name, value):
    (SYSCTL / name).write_text("%d\n" % value)


def restore_leftover_sysctls():
    """Undo what a bench killed by SIGKILL left raised (its note in /run says what)."""
    try:
        note = json.loads(SYSCTL_NOTE.read_text())
    except (FileNotFoundError, ValueError):
        return
    pid = note.get("pid")
    if pid and pid != os.getpid() and Path("/proc/%d" % pid).exists():
        raise SystemExit("another bench (pid %d) holds the conntrack limits: %s" % (pid, SYSCTL_NOTE))
    for name, (orig, mine) in note.get("changed", {}).items():
        if _read_sysctl(name) == mine:
            _write_sysctl(name, orig)
            say("restored %s=%d (left raised to %d by a killed run)" % (name, orig, mine))
    SYSCTL_NOTE.unlink(missing_ok=True)


class RootConntrackLimits:
    """Raise nf_conntrack_max (and nf_conntrack_buckets, only if the chains would pass
    8 entries each) in the root namespace for a block; restore the originals on exit."""

    def __init__(self, ct_max):
        self.want = ct_max
        self.changed = {}

    def __enter__(self):
        restore_leftover_sysctls()
        cur_max, cur_buckets = _read_sysctl("nf_conntrack_max"), _read_sysctl("nf_conntrack_buckets")
        plan = {}
        if self.want > cur_max:
            plan["nf_conntrack_max"] = (cur_max, self.want)
        if self.want > 8 * cur_buckets:
            plan["nf_conntrack_buckets"] = (cur_buckets, pow2_at_least(self.want // 4))
        if not plan:
            return self
        SYSCTL_NOTE.write_text(json.dumps({"pid": os.getpid(), "changed": plan}))
        try:
            for name, (orig, new) in plan.items():
                _write_sysctl(name, new)
                self.changed[name] = (orig, new)
                say("root netns: %s %d -> %d (restored at the end)" % (name, orig, new))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for name, (orig, new) in reversed(list(self.changed.items())):
            try:
                now = _read_sysctl(name)
                if now == new:
                    _write_sysctl(name, orig)
                    say("root netns: %s restored to %d" % (name, orig))
                else:
                    say("root netns: %s is %d, not the %d set here: someone changed it; left as is"
                        % (name, now, new))
            except OSError as e:
                say("root netns: could not restore %s=%d: %s" % (name, orig, e))
        self.changed = {}
        SYSCTL_NOTE.unlink(missing_ok=True)
        return False
