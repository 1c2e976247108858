"""Polling with a deadline, for tests that wait on daemons."""

import time


def wait_for(predicate, timeout, what, interval=0.1, explain=None):
    """Poll predicate until it is true; on timeout raise AssertionError naming `what`.

    explain: a callable whose text is added to the error, to show why.
    """
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            detail = "\n" + explain() if explain else ""
            raise AssertionError("timed out after %ss waiting for %s%s" % (timeout, what, detail))
        time.sleep(interval)
    return time.monotonic() - start
