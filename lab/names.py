"""Names of lab objects: the per-run prefix and checks on labels and interface names.

Every namespace, bridge and veth of a lab run starts with the run's prefix
("hf" + 4 hex digits + "-"), so leftovers of any run can be found by
PREFIX_RE alone and nothing outside the lab is ever mistaken for lab state.
"""
import os
import re
import secrets
from pathlib import Path

PREFIX_RE = re.compile(r"^hf[0-9a-f]{4}-")
IFNAMSIZ = 15  # longest Linux interface name (IFNAMSIZ - 1 for the NUL)
SWITCH_LABEL = "switch"  # the switch netns is PREFIX + this; no host may use it

# Host and switch labels double as hostnames and name parts: keep them plain.
LABEL_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class LabError(RuntimeError):
    """Something in the lab could not be set up, found or torn down."""


def default_state_root():
    """Where runs keep their state: $HAFW_LAB_RUN, else <repo>/.lab-run."""
    env = os.environ.get("HAFW_LAB_RUN")
    return Path(env) if env else Path(__file__).resolve().parent.parent / ".lab-run"


def new_prefix():
    """A fresh random run prefix such as 'hf3a9c-'."""
    return "hf%s-" % secrets.token_hex(2)


def check_prefix(prefix):
    """Return prefix if it is a valid run prefix, else raise LabError."""
    if not (PREFIX_RE.match(prefix) and len(prefix) == 7):
        raise LabError("bad lab prefix %r: want 'hf' + 4 hex digits + '-'" % prefix)
    return prefix


def prefix_of(name):
    """The run prefix a namespace name starts with, or None if it is not ours."""
    match = PREFIX_RE.match(name)
    return match.group(0) if match else None


def check_label(label, what="name"):
    """Return label if usable as a host/switch name, else raise LabError."""
    if not LABEL_RE.match(label):
        raise LabError("bad %s %r: want [a-z][a-z0-9-]*, at most 32 chars" % (what, label))
    return label


def check_ifname(name):
    """Return name if the kernel accepts it as an interface name, else raise LabError."""
    if not (IFNAME_RE.match(name) and len(name) <= IFNAMSIZ) or name in (".", ".."):
        raise LabError("bad interface name %r: at most %d chars of [A-Za-z0-9_.-]"
                       % (name, IFNAMSIZ))
    return name


def host_netns(prefix, host):
    """Network namespace name of a host."""
    if host == SWITCH_LABEL:
        raise LabError("%r is reserved for the switch namespace" % host)
    return prefix + check_label(host, "host name")


def switch_netns(prefix):
    """Network namespace name holding all bridges of a run."""
    return prefix + SWITCH_LABEL


def bridge_name(prefix, switch):
    """Bridge (in the switch netns) of a switch, e.g. 'hf3a9c-lan'."""
    return check_ifname(prefix + check_label(switch, "switch name"))


def port_name(prefix, number):
    """Switch-side veth end number N, e.g. 'hf3a9c-p7'."""
    return check_ifname("%sp%d" % (prefix, number))
