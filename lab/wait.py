"""Polling with a deadline, for everything that waits on daemons: the lab,
its tests and the benches."""

import time


def wait_for(predicate, timeout, what, interval=0.1, explain=None):
    """Poll predicate() until it returns something truthy, and return that.

    On timeout raise TimeoutError naming `what`; explain: a callable whose
    text is added to the error, to show why. Bounded in time and count.
    """
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    detail = "\n" + explain() if explain else ""
    raise TimeoutError("timed out after %ss waiting for %s%s" % (timeout, what, detail))
