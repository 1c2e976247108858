"""
Set a kernel parameter's live value, tolerating parameters that are
read-only where the minion runs.

Salt's ``sysctl.present`` both persists and sets a value and fails when the
kernel refuses the write. A firewall running in a network namespace (a
container, the hafw lab) meets sysctls that are global, not per namespace:
``net.netfilter.nf_conntrack_max`` is read-only there and only the host can
change it, while ``net.ipv4.ip_forward`` is per namespace and writable.
This state writes ``/proc/sys`` directly and, when the parameter is
read-only, succeeds if the live value already satisfies the request (it is
at least the requested number) and fails, saying so, if it does not.

Persistence is not done here: the hafw kernel tree writes
``/etc/sysctl.d/60-hafw.conf`` with ``file.managed``, which is what is
loaded at boot.

.. code-block:: yaml

    hafw-kernel-sysctl-net.ipv4.ip_forward:
      hafw_sysctl.present:
        - name: net.ipv4.ip_forward
        - value: 1
"""

import errno
import os

import salt.utils.files

__virtualname__ = "hafw_sysctl"
PROC_SYS = "/proc/sys"


def __virtual__():
    if __grains__.get("kernel") != "Linux":
        return (False, "hafw_sysctl: /proc/sys exists on Linux only")
    return __virtualname__


def _path(name):
    """/proc/sys path of a sysctl, in sysctl(8)'s dotted or slashed form.

    As in sysctl(8), when a dotted name also holds slashes the slashes stand
    for dots inside one component (an interface such as ``eth0.10``).
    """
    if "." in name and "/" not in name.strip("/"):
        rel = name.replace(".", "/")
    elif "." in name:
        rel = name.replace("/", "\0").replace(".", "/").replace("\0", ".")
    else:
        rel = name.strip("/")
    return os.path.join(PROC_SYS, rel)


def _normal(value):
    """Values as sysctl compares them: fields separated by single spaces."""
    return " ".join(str(value).split())


def _at_least(current, wanted):
    """True when both are single integers and current >= wanted."""
    try:
        return int(current) >= int(wanted)
    except ValueError:
        return False


def _read(path):
    with salt.utils.files.fopen(path, "r") as fh:
        return _normal(fh.read())


def _read_only(ret, name, current, wanted):
    why = (f"{name} is read-only here (a global kernel setting, e.g. inside a "
           "network namespace or container: only the host can set it)")
    if _at_least(current, wanted):
        ret["result"] = True
        ret["comment"] = (f"{why}; its live value {current} already satisfies the "
                          f"requested {wanted} (>=): left as set by the host")
    else:
        ret["comment"] = (f"{why}; its live value {current} does not satisfy the "
                          f"requested {wanted}: set it to at least {wanted} on the host")
    return ret


def present(name, value):
    """
    Ensure the live value of kernel parameter ``name`` is ``value``.

    name
        The sysctl, e.g. ``net.ipv4.ip_forward`` (or ``net/ipv4/ip_forward``).

    value
        The wanted value; multi-field values (``"32768 60999"``) are
        compared field by field, whitespace-insensitively.

    When the parameter cannot be written here (read-only in this network
    namespace) the state succeeds without changes if the live value is a
    number at least ``value``, and fails otherwise; the comment says which.
    A parameter that does not exist fails (its module may not be loaded).

    .. code-block:: yaml

        hafw-kernel-sysctl-net.netfilter.nf_conntrack_max:
          hafw_sysctl.present:
            - name: net.netfilter.nf_conntrack_max
            - value: 65536

    CLI Example:

    .. code-block:: bash

        salt-call state.single hafw_sysctl.present name=net.ipv4.ip_forward value=1
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    wanted = _normal(value)
    path = _path(name)
    try:
        current = _read(path)
    except FileNotFoundError:
        ret["comment"] = (f"{name} does not exist ({path}): is the kernel module that "
                          "provides it loaded?")
        return ret
    except OSError as exc:
        ret["comment"] = f"cannot read {name} ({path}): {exc.strerror}"
        return ret

    if current == wanted:
        ret["result"] = True
        ret["comment"] = f"{name} is already {wanted}"
        return ret
    if not os.access(path, os.W_OK):
        return _read_only(ret, name, current, wanted)

    ret["changes"] = {"old": current, "new": wanted}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"would set {name} to {wanted} (now {current})"
        return ret
    try:
        with salt.utils.files.fopen(path, "w") as fh:
            fh.write(wanted + "\n")
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            ret["changes"] = {}
            return _read_only(ret, name, current, wanted)
        ret["changes"] = {}
        ret["comment"] = f"the kernel refused {name} = {wanted}: {exc.strerror}"
        return ret
    after = _read(path)
    if after != wanted:
        ret["changes"] = {"old": current, "new": after}
        ret["comment"] = f"wrote {wanted} to {name} but the kernel keeps {after}"
        return ret
    ret["result"] = True
    ret["comment"] = f"set {name} to {wanted}"
    return ret
