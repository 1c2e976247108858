"""
Maintenance and planned switchover of a VRRP pair (issue 4).

keepalived tracks three files the formula declares (``track_file`` in
keepalived.conf, ``vrrp:maintenance``): a 1 in ``hafw_demote`` (under
/run: gone after a reboot) or ``hafw_demote_persistent`` (under /var/lib)
lowers this node's priority by 253, below any peer's, so it stays backup
while its peer lives and still takes over if the peer dies; a 1 in
``hafw_step_down`` puts it in FAULT, which makes it send a priority-0
advert so that the peer takes over at once, whatever its ``nopreempt``.
These functions write the files; the ``vrrp_sync`` states decide when.

:depends: keepalived 2.x with the formula's keepalived.conf

CLI Example:

.. code-block:: bash

    salt '*fw*' vrrp_sync.maintenance
    salt 'fw-cent7i' vrrp_sync.demote persistent=True
"""

import logging
import os
import re
import time

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)
__virtualname__ = "vrrp_sync"

KEEPALIVED_CONFIG = "/etc/keepalived/keepalived.conf"
FILES = ("hafw_demote", "hafw_demote_persistent", "hafw_step_down")
_TRACK_FILE = re.compile(r"^\s*track_file\s+(\S+)\s*\{(.*?)\}", re.M | re.S)
_FILE = re.compile(r"^\s*file\s+\"?([^\"\s]+)\"?", re.M)


def __virtual__():
    # No check of keepalived.conf here: the formula writes it in the same run
    # that calls these functions; each function says when it is missing.
    if not os.path.isdir("/proc/sys/net"):
        return (False, "vrrp_sync: not a Linux host (no /proc/sys/net)")
    return __virtualname__


def _files():
    """{name: path} of the maintenance files, from the live keepalived.conf."""
    path = __opts__.get("vrrp_sync.keepalived_config", KEEPALIVED_CONFIG)
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError as exc:
        raise CommandExecutionError(f"cannot read {path}: {exc.strerror}") from exc
    found = {}
    for name, body in _TRACK_FILE.findall(text):
        match = _FILE.search(body)
        if name in FILES and match:
            found[name] = match.group(1)
    missing = [n for n in FILES if n not in found]
    if missing:
        raise CommandExecutionError(f"{path} declares no track_file {', '.join(missing)}: vrrp:maintenance is "
                                    "off for this cluster, or the formula's keepalived.conf is not applied yet")
    return found


def _read(path):
    try:
        with open(path) as fh:
            return int(fh.read().strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError:
        return 1  # keepalived reads garbage as non-zero too
    except OSError as exc:
        raise CommandExecutionError(f"cannot read {path}: {exc.strerror}") from exc


def _write(path, value):
    """Write in place: keepalived watches the file with inotify and rereads it when it is closed."""
    if _read(path) == value and os.path.exists(path):
        return False
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(f"{value}\n")
    except OSError as exc:
        raise CommandExecutionError(f"cannot write {path}: {exc.strerror}") from exc
    return True


def maintenance():
    """
    This node's maintenance state: ``demoted`` (either demote file holds a
    non-zero value), ``persistent`` (the one under /var/lib does),
    ``stepping_down`` (the step-down file: FAULT), and the files' paths.

    CLI Example:

    .. code-block:: bash

        salt '*fw*' vrrp_sync.maintenance
    """
    files = _files()
    values = {name: _read(path) for name, path in files.items()}
    return {"demoted": bool(values["hafw_demote"] or values["hafw_demote_persistent"]),
            "persistent": bool(values["hafw_demote_persistent"]),
            "stepping_down": bool(values["hafw_step_down"]), "files": files}


def demote(persistent=False):
    """
    Lower this node's priority below any peer's: it stays backup while a
    peer runs (and takes over if none does). Does not move the master role
    by itself when the peer runs ``nopreempt``: ``step_down`` does.
    ``persistent=True`` keeps the demotion across a reboot.

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7i' vrrp_sync.demote
        salt 'fw-cent7i' vrrp_sync.demote persistent=True
    """
    files = _files()
    changed = _write(files["hafw_demote_persistent" if persistent else "hafw_demote"], 1)
    return {"changed": changed, "demoted": True, "persistent": bool(persistent) or maintenance()["persistent"]}


def undemote():
    """
    Give this node its configured priority back (both demote files to 0).

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7i' vrrp_sync.undemote
    """
    files = _files()
    changed = [_write(files[name], 0) for name in ("hafw_demote", "hafw_demote_persistent")]
    return {"changed": any(changed), "demoted": False}


def _holds_vips():
    role = __salt__["conntrack.role"]()
    return any(inst["held"] for inst in role["instances"].values())


def step_down(persistent=False, timeout=10):
    """
    Hand the master role to the peer now: demote this node (so that it does
    not take the role back), put it in FAULT until its VIPs are gone (its
    priority-0 advert makes the peer take over at once), then let it come
    back as a demoted backup. Waits at most ``timeout`` seconds for the VIPs
    to go; the step-down file is cleared in every case.

    CLI Example:

    .. code-block:: bash

        salt 'fw-cent7i' vrrp_sync.step_down
    """
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"timeout: {timeout!r} is not a number of seconds") from None
    files = _files()
    demote(persistent)
    started = time.monotonic()
    _write(files["hafw_step_down"], 1)
    try:
        while _holds_vips():
            if time.monotonic() - started > timeout:
                raise CommandExecutionError(f"this node still holds VIPs {timeout}s after stepping down: "
                                            "is keepalived running with the formula's keepalived.conf?")
            time.sleep(0.05)
        released = round(time.monotonic() - started, 3)
    finally:
        _write(files["hafw_step_down"], 0)
    return {"released_after_s": released, "demoted": True, "persistent": bool(persistent)}
