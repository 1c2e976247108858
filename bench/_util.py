"""Helpers shared by the bench scripts (not a bench: `make bench` skips _*.py)."""

from datetime import datetime


def hook_time(stamp, tz):
    """Epoch seconds of a transition-hook log stamp ('2026-11-26T09:12:15.444', '+0000'), or None."""
    try:
        return datetime.strptime(stamp + tz, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except ValueError:
        return None
