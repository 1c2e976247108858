"""
Small schema checker for the hafw pillar.

Every problem is recorded with the colon-separated pillar key it concerns
(``hafw:clusters:fw-pair:vrrp:instances:VI_1:state``), the same notation as
``pillar.get``, so that an operator can find the line in their pillar. The
checker never stops at the first problem: validation reports them all, and
nothing is derived (or written) while any remains.

This module has no Salt imports: the unit tests load it as a plain module.
"""

import copy
import ipaddress
import re

IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ModelError(ValueError):
    """The pillar is not a valid hafw model; ``problems`` lists (key, message)."""

    def __init__(self, problems):
        self.problems = list(problems)
        lines = [f"{key}: {msg}" for key, msg in self.problems]
        super().__init__(
            "invalid hafw pillar ({} problem{}):\n  ".format(
                len(lines), "" if len(lines) == 1 else "s"
            )
            + "\n  ".join(lines)
        )


class Checker:
    """Collects problems while walking a pillar subtree."""

    def __init__(self):
        self.problems = []

    def fail(self, path, msg):
        self.problems.append((":".join(str(p) for p in path), msg))

    def raise_if_any(self):
        if self.problems:
            raise ModelError(self.problems)

    # -- structure -------------------------------------------------------
    def mapping(self, path, value, allowed=None, required=()):
        """Check that ``value`` is a dict with known keys; return it (or {})."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {type(value).__name__}")
            return {}
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    self.fail(
                        [*path, key],
                        "unknown key (allowed: {})".format(", ".join(sorted(allowed))),
                    )
        for key in required:
            if key not in value:
                self.fail([*path, key], "is required")
        return value

    def sequence(self, path, value):
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"must be a list, got {type(value).__name__}")
            return []
        return value

    # -- scalars (each returns the normalised value or None) ---------------
    def integer(self, path, value, lo=None, hi=None):
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {value!r}")
            return None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(path, f"{value} is outside {lo}-{hi}")
            return None
        return value

    def number(self, path, value, lo=None, hi=None):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(path, f"must be a number, got {value!r}")
            return None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(path, f"{value} is outside {lo}-{hi}")
            return None
        return value

    def boolean(self, path, value):
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, got {value!r}")
            return None
        return value

    def choice(self, path, value, choices, what="value"):
        def fold(v):
            return v.lower() if isinstance(v, str) else v

        norm = fold(value)
        lowered = {fold(c): c for c in choices}
        if isinstance(norm, (list, dict)) or norm not in lowered:
            self.fail(
                path, "{!r} is not a valid {} ({})".format(value, what, " or ".join(map(str, choices)))
            )
            return None
        return lowered[norm]

    def name(self, path, value, what="name"):
        if not isinstance(value, str) or not NAME_RE.match(value):
            self.fail(path, f"{value!r} is not a valid {what} (letters, digits, _ . -)")
            return None
        return value

    def ifname(self, path, value):
        if not isinstance(value, str) or not IFNAME_RE.match(value):
            self.fail(path, f"{value!r} is not a valid interface name (1-15 chars)")
            return None
        return value

    def port(self, path, value):
        """A port or an ``a:b`` / ``a-b`` range; returns (lo, hi)."""
        if isinstance(value, str) and re.match(r"^\d+[:-]\d+$", value):
            lo, hi = (int(x) for x in re.split("[:-]", value))
            if not (1 <= lo <= hi <= 65535):
                self.fail(path, f"port range {value!r} must be within 1-65535 and ordered")
                return None
            return (lo, hi)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if self.integer(path, value, 1, 65535) is None:
            return None
        return (value, value)

    def interface_address(self, path, value):
        """``192.168.0.41/24`` -> IPv4Interface (prefix required)."""
        if not isinstance(value, str) or "/" not in value:
            self.fail(path, f"{value!r} must be an address with a prefix length, like 10.0.0.1/24")
            return None
        try:
            iface = ipaddress.IPv4Interface(value)
        except ValueError as exc:
            self.fail(path, f"bad CIDR {value!r}: {exc}")
            return None
        if iface.network.prefixlen == 32 or iface.ip in (
            iface.network.network_address,
            iface.network.broadcast_address,
        ):
            self.fail(path, f"{value!r} is the network or broadcast address of its subnet")
            return None
        return iface

    def address(self, path, value):
        try:
            return ipaddress.IPv4Address(value)
        except (ValueError, TypeError):
            self.fail(path, f"{value!r} is not an IPv4 address")
            return None

    def network(self, path, value):
        """An address or CIDR network (``default`` allowed where callers say)."""
        if not isinstance(value, str):
            self.fail(path, f"{value!r} is not an IPv4 address or network")
            return None
        try:
            return ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            self.fail(path, f"bad CIDR {value!r}: {exc}")
            return None


# -- pillar helpers shared by the model's parts ------------------------------
def merge(base, over):
    """Deep-merge ``over`` onto a copy of ``base`` (dicts merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def primary(ifaces, ifname):
    """A node's first address on an interface (or None)."""
    return ifaces[ifname][0] if ifaces.get(ifname) else None
