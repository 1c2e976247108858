"""Helpers shared by the bench scripts (not a bench: `make bench` skips _*.py)."""

import time
from datetime import datetime


def wait_for(what, fn, timeout, step=0.1):
    """Poll fn() until it returns something truthy, and return that; bounded in time and count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 2):
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(step)
    raise TimeoutError("timed out after %.0f s waiting for %s" % (timeout, what))


def hook_time(stamp, tz):
    """Epoch seconds of a transition-hook log stamp ('2026-11-26T09:12:15.444', '+0000'), or None."""
    try:
        return datetime.strptime(stamp + tz, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except ValueError:
        return None
