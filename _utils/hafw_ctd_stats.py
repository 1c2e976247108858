"""
Reading conntrackd: its configuration file and what ``conntrackd -s ...``
prints (conntrack-tools 1.4.7), turned into plain data. Plain Python, no
Salt: the ``conntrack`` execution module runs the commands and uses these
parsers; the unit tests feed them the daemon's real output.
"""

import re

_NUM = re.compile(r"(\d+)")


def read_config(text):
    """
    The settings of a conntrackd.conf an operator asks about: ``mode``
    (ftfw, alarm, notrack), ``inject`` (DisableExternalCache on),
    ``transport`` (udp, tcp, multicast), ``interface``, ``socket`` and
    ``lock_file``.
    """
    words = [w for line in text.splitlines() for w in line.split("#", 1)[0].replace("{", " { ").split()]
    low = [w.lower() for w in words]
    out = {"mode": None, "inject": False, "transport": None, "interface": None, "socket": None, "lock_file": None}
    for i, w in enumerate(low):
        nxt = words[i + 1] if i + 1 < len(words) else None
        if w == "mode" and nxt and nxt.lower() in ("ftfw", "alarm", "notrack"):
            out["mode"] = nxt.lower()
        elif w == "disableexternalcache":
            out["inject"] = bool(nxt) and nxt.lower() in ("on", "yes", "true", "1")
        elif w in ("udp", "tcp", "multicast") and nxt == "{" and out["transport"] is None:
            out["transport"] = w
        elif w == "interface" and nxt and out["interface"] is None:
            out["interface"] = nxt
        elif w == "path" and nxt:
            out["socket"] = nxt
        elif w == "lockfile" and nxt:
            out["lock_file"] = nxt
    return out


def _ints(line):
    return [int(n) for n in _NUM.findall(line)]


def caches(text):
    """``conntrackd -s cache``: {"internal": {...}, "external": {...}} (no external in inject mode)."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"cache:(\w+)\s+active objects:\s+(\d+)", line)
        if m:
            current = out.setdefault(m.group(1), {"active": int(m.group(2))})
            continue
        if current is None or ":" not in line:
            continue
        key, _, value = line.strip().partition(":")
        nums = _ints(value)
        if key == "creation OK/failed" and len(nums) == 2:
            current["created"], current["create_failed"] = nums
        elif key == "update OK/failed" and len(nums) == 2:
            current["updated"], current["update_failed"] = nums
        elif key == "deletion created/failed" and len(nums) == 2:
            current["deleted"], current["delete_failed"] = nums
        elif key == "no space left in cache" and nums:
            current["no_space"] = nums[0]
        elif key == "no memory available" and nums:
            current["no_memory"] = nums[0]
    return out


def traffic(text):
    """The "UDP|TCP|Multicast traffic" block of ``-s`` or ``-s network``: bytes, packets, errors."""
    out = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(\w+) traffic \(active device=(\S+)\)", line.strip())
        if not m:
            continue
        out = {"transport": m.group(1).lower(), "device": m.group(2)}
        for row in lines[i + 1:i + 4]:
            nums = _ints(row)
            if len(nums) != 2:
                continue
            kind = row.split()[1].lower()  # Bytes, Pckts, Error
            key = {"bytes": "bytes", "pckts": "packets", "error": "errors"}.get(kind, kind)
            out[f"{key}_sent"], out[f"{key}_recv"] = nums
        break
    return out


def network(text):
    """``conntrackd -s network``: message errors and the sequence tracking (packets lost)."""
    out = {"recv": {}, "send": {}}
    section = None
    for line in text.splitlines():
        s = line.strip().rstrip(":")
        if s in ("recv", "send"):
            section = s
            continue
        if section and ":" in line:
            key, _, value = line.strip().partition(":")
            nums = _ints(value)
            if nums:
                out[section][key.strip().lower().replace(" ", "_")] = nums[0]
    out["traffic"] = traffic(text)
    return out


def queues(text):
    """``conntrackd -s queue``: {queue name: {"current", "max", "no_space"}}."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"queue (\w+):", line.strip())
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        nums = _ints(line)
        if line.startswith("current elements") and nums:
            current["current"] = nums[0]
        elif line.startswith("maximum elements") and nums:
            current["max"] = nums[0]
        elif line.startswith("not enough space errors") and nums:
            current["no_space"] = nums[0]
    return out


def runtime(text):
    """``conntrackd -s runtime``: uptime (minutes) and the netlink counters (overruns, resyncs...)."""
    out = {"uptime_min": None, "netlink": {}}
    m = re.search(r"daemon uptime:\s*(\d+)\s*min", text)
    if m:
        out["uptime_min"] = int(m.group(1))
    block = text.split("netlink stats:", 1)[1].split("\n\n", 1)[0] if "netlink stats:" in text else ""
    for line in block.splitlines():
        key, _, value = line.strip().partition(":")
        nums = _ints(value)
        if key and nums:
            out["netlink"][key.strip().lower().replace(" ", "_").replace("(in_bytes)", "bytes")] = nums[0]
    return out


HOOK_STEP = re.compile(r"^(\S+) hafw-conntrackd\[\d+\] (\w+): (\w[\w-]*): step=(\S+) rc=(\d+) ms=(\d+)")


def last_step(log_text, transition, step):
    """The last ``TRANSITION: step=STEP`` line of the transition hook's log: at, rc, ms (or None)."""
    found = None
    for line in log_text.splitlines():
        m = HOOK_STEP.match(line)
        if m and m.group(3) == transition and m.group(4) == step:
            found = {"at": m.group(1), "rc": int(m.group(5)), "ms": int(m.group(6))}
    return found
