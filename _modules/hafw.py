"""
hafw cluster model: validate the ``hafw`` pillar and derive a node's settings.

Every hafw state tree reads its data through :py:func:`node`, so a bad pillar
fails at render time, naming the pillar key and what is wrong, before any
state runs: nothing is half-applied.

The logic lives in ``_utils/hafw_model.py`` (plain Python, unit-tested on its
own); this module only feeds it the pillar and turns its errors into Salt's.
"""

import hashlib
import json
import logging

from salt.exceptions import SaltInvocationError

try:
    import hafw_model
    from hafw_check import ModelError

    HAS_MODEL = True
except ImportError:  # _utils not synced yet
    HAS_MODEL = False

log = logging.getLogger(__name__)
__virtualname__ = "hafw"


def __virtual__():
    if not HAS_MODEL:
        return (False, "hafw: _utils/hafw_model.py is not available; run saltutil.sync_all")
    return __virtualname__


def _pillar(hafw=None):
    """The hafw pillar: the data passed in (salt-ssh), else this minion's."""
    if hafw is None:
        return __pillar__.get("hafw") or {}
    if not isinstance(hafw, dict):
        raise SaltInvocationError(f"hafw: expected the hafw pillar as a mapping, got {type(hafw).__name__}")
    return hafw


def _cached(kind, minion_id, compute, hafw=None):
    """Memoise per run: every map.jinja of a highstate asks for the same node."""
    key = hashlib.sha256(json.dumps(_pillar(hafw), sort_keys=True, default=str).encode()).hexdigest()
    cache = __context__.setdefault("hafw.model", {})
    if (kind, minion_id, key) not in cache:
        cache[(kind, minion_id, key)] = compute()
    return cache[(kind, minion_id, key)]


def validate(hafw=None):
    """
    Check the whole ``hafw`` pillar (every cluster, not only this node's).

    Returns ``True``, or raises an error listing each bad pillar key.

    hafw
        The hafw pillar data to check instead of this minion's pillar.

    CLI Example:

    .. code-block:: bash

        salt '*fw*' hafw.validate
    """
    try:
        return _cached("validate", None, lambda: hafw_model.validate(_pillar(hafw)), hafw)
    except ModelError as exc:
        raise SaltInvocationError(str(exc)) from None


def node(minion_id=None, hafw=None):
    """
    Return the derived settings of a node: its cluster and role, the
    components to manage, keepalived instances with this node's state and
    priority, conntrackd own/peer addresses and ignore list, the rendered
    firewall ruleset, sysctls and kernel modules.

    A minion in no cluster gets ``components: []``.

    minion_id
        The node to derive; defaults to this minion's id.

    hafw
        The hafw pillar data to derive from instead of this minion's pillar.
        The formula's map.jinja files pass it: under salt-ssh a template's
        call runs on the target as a bare ``salt-call``, without the pillar.

    CLI Example:

    .. code-block:: bash

        salt fw-cent7i hafw.node
        salt-call hafw.node minion_id=fw-cent7j
    """
    minion_id = minion_id or __opts__["id"]
    try:
        return _cached("node", minion_id, lambda: hafw_model.node(_pillar(hafw), minion_id), hafw)
    except ModelError as exc:
        raise SaltInvocationError(str(exc)) from None


def peers(minion_id=None, hafw=None):
    """
    Return the minion ids of this node's cluster peers (empty if standalone).

    CLI Example:

    .. code-block:: bash

        salt fw-cent7i hafw.peers
    """
    return node(minion_id, hafw).get("peers", [])
