"""
Master-side helpers of the hafw reactor (reactor/, docs/events.md).

Sync them to the master once: ``salt-run saltutil.sync_runners``.

CLI Example:

.. code-block:: bash

    salt-run hafw.transitions last=5
"""

import json
import os
import time

from salt.exceptions import SaltInvocationError

LOG = "/var/log/salt/hafw-transitions.log"
__virtualname__ = "hafw"


def __virtual__():
    return __virtualname__


def _log_path(log):
    return log or __opts__.get("hafw_reactor", {}).get("log") or LOG


def record(node, state, name=None, kind=None, previous=None, source=None, at=None, log=None):
    """
    Append one VRRP transition to the master's transition log (a JSON line;
    the file is created if needed). The reactor calls it for every MASTER
    and FAULT event it acts on.

    CLI Example:

    .. code-block:: bash

        salt-run hafw.record fw-cent7j MASTER name=G1 kind=GROUP previous=BACKUP
    """
    if not node or not state:
        raise SaltInvocationError("node and state are required")
    path = _log_path(log)
    line = {"at": at or time.time(), "recorded": time.time(), "node": node, "state": state, "name": name,
            "kind": kind, "previous": previous, "source": source}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")
    return line


def transitions(last=20, node=None, log=None):
    """
    The last recorded transitions (newest last), optionally of one node.

    CLI Example:

    .. code-block:: bash

        salt-run hafw.transitions last=5 node=fw-cent7j
    """
    path = _log_path(log)
    try:
        with open(path) as fh:
            lines = [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []
    if node:
        lines = [t for t in lines if t.get("node") == node]
    return lines[-int(last):]
