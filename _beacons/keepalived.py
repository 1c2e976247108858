"""
Every VRRP transition of this node as a Salt event (issue 5).

keepalived writes each transition to its notify FIFO (``vrrp_notify_fifo``
in the formula's keepalived.conf) as ``INSTANCE "VI_1" MASTER 100`` or
``GROUP "G1" BACKUP``. The beacon reads what the FIFO holds at each run,
and fires one event per change of state:

    salt/beacon/<minion>/keepalived/<group or instance>/<STATE>

with ``kind`` (GROUP, INSTANCE), ``name``, ``state``, ``previous``,
``priority``, the node's ``sync_group``, the ``vips`` it holds now, conntrackd's
``sync_status`` at that moment (firewalls), ``source`` (``fifo``, or
``vips`` when the FIFO stayed silent ``vips_grace`` seconds while the VIPs on
the links showed the change)
and ``at`` (epoch seconds).

Salt runs beacons once a second (a fixed period of the minion's loop), too
slow for a takeover: the beacon therefore starts a reader thread in the
minion that waits on the FIFO and fires each transition to the master the
moment keepalived writes it (as a beacon return, so the tag and data are
those of a beacon); each regular run checks that the thread lives and
compares the VIPs on the links with the last state seen (the fallback).
keepalived opens the FIFO read-write and non-blocking: lines written while
nobody reads wait in the pipe (64 KiB). The transition hook (notify_*
scripts) is independent of it. The last state seen is kept in a file under
the minion's cachedir (with a lock: the thread and the runs share it),
because Salt resets module globals on every module sync and pillar refresh.

Configure it in pillar (a pillar ``beacons:`` replaces the minion config's
``beacons:``, it does not merge with it):

.. code-block:: yaml

    beacons:
      keepalived:
        - interval: 1            # minion loop intervals (loop_interval, 1 s by default)
        - fifo: /run/keepalived/notify.fifo
        - vips: true             # fall back to the VIPs present when the FIFO is silent
        - vips_grace: 2          # seconds the VIPs must disagree with the FIFO before the fallback speaks
        - sync_status: true      # add conntrack.sync_status to each event
        - reader: true           # a thread fires FIFO lines at once (false: read once a second)
"""

import fcntl
import json
import logging
import os
import re
import select
import stat
import threading
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)
__virtualname__ = "keepalived"

DEFAULTS = {"fifo": "/run/keepalived/notify.fifo", "vips": True, "vips_grace": 2.0, "sync_status": True,
            "reader": True, "state_file": None}
STATES = ("MASTER", "BACKUP", "FAULT", "STOP")
_LINE = re.compile(r'^(INSTANCE|GROUP) "([^"]+)" (MASTER|BACKUP|FAULT|STOP|DELETED)(?: (\d+))?$')
_READ_MAX = 1 << 16


def __virtual__():
    return __virtualname__


def _config(config):
    """The beacon's settings: Salt's list of one-key dicts, merged over the defaults."""
    merged = dict(DEFAULTS)
    for item in config or []:
        if isinstance(item, dict):
            merged.update({k: v for k, v in item.items() if not k.startswith("_")})
    return merged


def validate(config):
    """Reject a config that is not a list of one-key dicts with known keys and sane values."""
    if not isinstance(config, list) or not all(isinstance(i, dict) for i in config):
        return False, "keepalived beacon: the configuration must be a list of one-key dicts (- fifo: PATH)"
    known = set(DEFAULTS) | {"interval", "enabled", "disable_during_state_run", "run_once", "beacon_module"}
    cfg = {}
    for item in config:
        cfg.update(item)
    unknown = sorted(k for k in cfg if k not in known and not k.startswith("_"))
    if unknown:
        return False, f"keepalived beacon: unknown keys {unknown} (known: {sorted(known)})"
    fifo = cfg.get("fifo", DEFAULTS["fifo"])
    if not isinstance(fifo, str) or not fifo.startswith("/"):
        return False, f"keepalived beacon: fifo: {fifo!r} must be an absolute path"
    for key in ("vips", "sync_status", "reader"):
        if key in cfg and not isinstance(cfg[key], bool):
            return False, f"keepalived beacon: {key}: {cfg[key]!r} must be true or false"
    grace = cfg.get("vips_grace", DEFAULTS["vips_grace"])
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= 60:
        return False, f"keepalived beacon: vips_grace: {grace!r} must be a number of seconds from 0 to 60"
    if cfg.get("state_file") is not None and not str(cfg["state_file"]).startswith("/"):
        return False, f"keepalived beacon: state_file: {cfg['state_file']!r} must be an absolute path"
    return True, "valid"


def parse_line(line):
    """(kind, name, state, priority) of a notify FIFO line, or None if malformed."""
    match = _LINE.match(line.strip())
    if not match:
        return None
    kind, name, state, prio = match.groups()
    # a group line carries a 0 where an instance carries its priority
    return kind, name, state, int(prio) if prio and kind == "INSTANCE" else None


# -- the FIFO ---------------------------------------------------------------------
def _split_lines(seen, data):
    """Complete lines of data after what was left over (a partial last line waits in seen['partial'])."""
    text = seen.pop("partial", "") + data.decode("utf-8", "replace")
    lines = text.split("\n")
    if lines[-1]:
        seen["partial"] = lines[-1]
    return [line for line in lines[:-1] if line.strip()]


def _open_fifo(path):
    """A non-blocking read end of the FIFO and its inode, or (None, None) when there is none yet."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, None  # keepalived not running (it makes the FIFO at start and removes it at exit)
    if not stat.S_ISFIFO(st.st_mode):
        log.warning("keepalived beacon: %s is not a FIFO; is vrrp_notify_fifo set to it?", path)
        return None, None
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK), st.st_ino
    except OSError as exc:
        log.warning("keepalived beacon: cannot open %s: %s", path, exc)
        return None, None


def _drain(fd):
    """Everything waiting in the pipe; b"" also when no writer is left (keepalived stopped)."""
    chunks = []
    while True:
        try:
            data = os.read(fd, _READ_MAX)
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _reader(cfg, opts, funcs, fire, stop=None, wait=1.0):
    """
    The reader thread: wait on the FIFO, turn each batch of lines into
    events at once (``funcs()``: the current function loader). Reopens the FIFO when keepalived replaced it (restart)
    or left it (no writer: the read end would stay readable forever).
    """
    fd = inode = None
    while not (stop and stop.is_set()):
        if fd is None:
            fd, inode = _open_fifo(cfg["fifo"])
            if fd is None:
                time.sleep(wait)
                continue
        readable = select.select([fd], [], [], wait)[0]
        data = _drain(fd) if readable else b""
        try:
            current = os.stat(cfg["fifo"]).st_ino
        except FileNotFoundError:
            current = None
        if (readable and not data) or current != inode:
            os.close(fd)
            fd = None
            if readable and not data:
                time.sleep(0.1)  # no writer: do not spin on the readable end
        if data:
            try:
                events = _events_for(cfg, opts, funcs(), fifo_data=data)
                if events:
                    fire(events)
            except Exception:  # pylint: disable=broad-except
                log.exception("keepalived beacon: the FIFO reader failed on a batch; going on")
    if fd is not None:
        os.close(fd)


def _fire_to_master(opts, events):
    """Send events the way the minion sends beacon returns (tag salt/beacon/<id>/keepalived/<tag>)."""
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    batch = []
    for event in events:
        data = dict(event)
        data.setdefault("id", opts["id"])
        batch.append({"tag": f"salt/beacon/{opts['id']}/{__virtualname__}/{data.pop('tag')}", "data": data,
                      "beacon_name": __virtualname__})
    with salt.utils.event.get_event("minion", opts=opts, listen=False) as bus:
        bus.fire_event({"beacons": batch}, "__beacons_return")


def _thread_name(cfg):
    return f"hafw-keepalived-fifo:{cfg['fifo']}"


class _ReaderThread(threading.Thread):
    """The FIFO reader; ``funcs`` is replaced by every beacon run (a module refresh makes a new loader)."""

    def __init__(self, cfg, opts, funcs):
        super().__init__(name=_thread_name(cfg), daemon=True)
        self.cfg, self.opts, self.funcs = cfg, opts, funcs

    def run(self):
        _reader(self.cfg, self.opts, lambda: self.funcs, lambda events: _fire_to_master(self.opts, events))


def _ensure_reader(cfg):
    """
    Start the reader thread unless it runs (found by name: module globals do
    not survive a reload), and hand it this run's function loader. The
    loader's dunders are context variables, unset in another thread: the
    thread calls the loader's functions, which set their own context.
    """
    funcs = __salt__.value() if hasattr(__salt__, "value") else __salt__
    for thread in threading.enumerate():
        if thread.name == _thread_name(cfg) and thread.is_alive():
            thread.funcs = funcs
            return False
    _ReaderThread(cfg, dict(__opts__), funcs).start()
    return True


# -- last-seen state ----------------------------------------------------------------
def _state_path(cfg, opts):
    return cfg["state_file"] or os.path.join(opts.get("cachedir", "/var/cache/salt/minion"),
                                             "hafw-keepalived-beacon.json")


@contextmanager
def _locked(path):
    """The last-seen state, loaded and saved under a lock (the reader thread and the runs share it)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            seen = _load(path)
            yield seen
            _save(path, seen)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load(path):
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(path, data):
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("keepalived beacon: cannot save %s: %s", path, exc)


# -- what the node holds ------------------------------------------------------------
def _held(funcs):
    """conntrack.vips: the VIPs held per instance and the group's role (one `ip addr`), or None."""
    if "conntrack.vips" not in funcs:
        return None
    try:
        return funcs["conntrack.vips"]()
    except Exception as exc:  # pylint: disable=broad-except
        log.debug("keepalived beacon: no role (%s)", exc)
        return None


def _sync_status(cfg, funcs):
    if not cfg["sync_status"] or "conntrack.sync_status" not in funcs:
        return None
    try:
        return funcs["conntrack.sync_status"]()
    except Exception as exc:  # pylint: disable=broad-except
        return {"running": False, "reason": str(exc)}


def _vip_states(role):
    """{("INSTANCE"|"GROUP", name): MASTER|BACKUP} from the VIPs held (PARTIAL/SPLIT: no opinion)."""
    out = {}
    for name, inst in (role or {}).get("instances", {}).items():
        if inst["role"] in ("MASTER", "BACKUP"):
            out[("INSTANCE", name)] = inst["role"]
    if role and role.get("sync_group") and role.get("group") in ("MASTER", "BACKUP"):
        out[("GROUP", role["sync_group"])] = role["group"]
    return out


def _agrees(fifo_state, vip_state):
    """A VIP-derived MASTER/BACKUP agrees with the FIFO's last word (no VIPs: BACKUP, FAULT or STOP)."""
    return fifo_state == vip_state or (vip_state == "BACKUP" and fifo_state in ("FAULT", "STOP"))


def _vip_changes(role, last, pending, grace, now):
    """
    The transitions the VIPs show and the FIFO did not say, once they have
    disagreed for ``grace`` seconds: keepalived adds a group's VIPs before it
    writes the group's line, and a busy reader thread may read that line a
    moment later; the fallback is for a FIFO that stays silent.
    """
    changes = []
    states = _vip_states(role)
    for key in [k for k in pending if tuple(k.split(":", 1)) not in states]:
        del pending[key]
    for (kind, name), state in sorted(states.items()):
        key = f"{kind}:{name}"
        if _agrees(last.get(key), state):
            pending.pop(key, None)
            continue
        first = pending.get(key)
        if not first or first[0] != state:
            pending[key] = [state, now]
            if grace > 0:
                continue
        elif now - first[1] < grace:
            continue
        changes.append({"kind": kind, "name": name, "state": state, "previous": last.get(key),
                        "priority": None, "source": "vips"})
        last[key] = state
        pending.pop(key, None)
    return changes


def _events_for(cfg, opts, funcs, fifo_data=b"", vips=False):
    """The events for new FIFO data and (vips=True) for VIPs that moved without a FIFO line."""
    changes = []
    with _locked(_state_path(cfg, opts)) as seen:
        last = seen.setdefault("last", {})
        pending = seen.setdefault("pending", {})
        for line in _split_lines(seen, fifo_data) if fifo_data else []:
            parsed = parse_line(line)
            if parsed is None:
                log.warning("keepalived beacon: skipping a malformed line of %s: %r", cfg["fifo"], line[:200])
                continue
            kind, name, state, prio = parsed
            if state == "DELETED":  # an instance removed by a reload: forget it
                last.pop(f"{kind}:{name}", None)
                continue
            key = f"{kind}:{name}"
            pending.pop(key, None)  # the FIFO spoke: the fallback has nothing to add
            if last.get(key) != state:
                changes.append({"kind": kind, "name": name, "state": state, "previous": last.get(key),
                                "priority": prio, "source": "fifo"})
                last[key] = state
        role = _held(funcs) if (vips or changes) else None
        if vips and role:
            changes += _vip_changes(role, last, pending, float(cfg["vips_grace"]), time.time())
    if not changes:
        return []
    if role and any(c["state"] == "MASTER" for c in changes):
        # keepalived writes the line as it adds the VIPs: give them a moment (at most 0.2 s)
        for _ in range(20):
            if all(inst["role"] == "MASTER" for inst in role.get("instances", {}).values()):
                break
            time.sleep(0.01)
            role = _held(funcs) or role
    held = sorted({v for inst in (role or {}).get("instances", {}).values() for v in inst.get("held", [])})
    status = _sync_status(cfg, funcs)
    group = (role or {}).get("sync_group")
    now = time.time()
    return [{"tag": f"{c['name']}/{c['state']}", **c, "sync_group": group, "vips": held, "sync_status": status,
             "at": now} for c in changes]


def beacon(config):
    """
    Keep the FIFO reader thread running (it fires transitions at once) and
    return the events of the VIP fallback: transitions the FIFO did not
    report. With ``reader: false`` the FIFO is read here instead, once a
    second.
    """
    cfg = _config(config)
    fifo_data = b""
    if cfg["reader"]:
        _ensure_reader(cfg)
    else:
        fd, _inode = _open_fifo(cfg["fifo"])
        if fd is not None:
            try:
                fifo_data = _drain(fd)
            finally:
                os.close(fd)
    return _events_for(cfg, __opts__, __salt__, fifo_data=fifo_data, vips=cfg["vips"])
