"""
salt-ssh wrapper for the hafw cluster model: derive a node's settings on the
control host.

Under salt-ssh, a template's ``salt['hafw.node']`` call is otherwise a remote
``salt-call`` over ssh, one per map.jinja the highstate renders. The model is
plain computation over the pillar and the node id, both known on the control
host, so this wrapper answers at once. Without it salt-ssh still works (the
remote module answers, from the pillar the formula passes), only slower.

Enable it in the master config of the host that runs salt-ssh
(docs/salt-ssh.md). salt-ssh 3008 loads wrappers with the target's options,
so the folder goes in ``ssh_minion_opts``; it is a path on the control host,
and the model is imported from the ``_utils`` folder beside it:

.. code-block:: yaml

    ssh_minion_opts:
      wrapper_dirs:
        - /srv/formulas/hafw/_wrapper
"""

import hashlib
import json
import os
import sys

from salt.exceptions import SaltInvocationError

__virtualname__ = "hafw"


def _import_model():
    """hafw_model from the formula's _utils beside this file's folder (the wrapper's
    __opts__ are the target's: its extension_modules is a path on the target)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for utils_dir in (os.path.join(root, "_utils"), os.path.join(root, "utils")):
        if os.path.isfile(os.path.join(utils_dir, "hafw_model.py")) and utils_dir not in sys.path:
            sys.path.append(utils_dir)
    import hafw_model  # pylint: disable=import-outside-toplevel
    from hafw_check import ModelError  # pylint: disable=import-outside-toplevel

    return hafw_model, ModelError


def __virtual__():
    try:
        _import_model()
    except ImportError:
        return (False, "hafw wrapper: no _utils/hafw_model.py beside the _wrapper folder")
    return __virtualname__


def _pillar(hafw):
    if hafw is None:
        return __pillar__.get("hafw") or {}
    if not isinstance(hafw, dict):
        raise SaltInvocationError(f"hafw: expected the hafw pillar as a mapping, got {type(hafw).__name__}")
    return hafw


def _cached(kind, minion_id, hafw, compute):
    """Once per target and salt-ssh run: every map.jinja asks for the same node."""
    key = hashlib.sha256(json.dumps(hafw, sort_keys=True, default=str).encode()).hexdigest()
    cache = __context__.setdefault("hafw.model", {})
    if (kind, minion_id, key) not in cache:
        cache[(kind, minion_id, key)] = compute()
    return cache[(kind, minion_id, key)]


def validate(hafw=None):
    """
    Check the whole ``hafw`` pillar, as the ``hafw.validate`` module does.

    CLI Example:

    .. code-block:: bash

        salt-ssh '*fw*' hafw.validate
    """
    model, model_error = _import_model()
    data = _pillar(hafw)
    try:
        return _cached("validate", None, data, lambda: model.validate(data))
    except model_error as exc:
        raise SaltInvocationError(str(exc)) from None


def node(minion_id=None, hafw=None):
    """
    A node's derived settings, as the ``hafw.node`` module returns them,
    computed on the control host.

    CLI Example:

    .. code-block:: bash

        salt-ssh fw-cent7i hafw.node
    """
    model, model_error = _import_model()
    data = _pillar(hafw)
    minion_id = minion_id or __opts__["id"]
    try:
        return _cached("node", minion_id, data, lambda: model.node(data, minion_id))
    except model_error as exc:
        raise SaltInvocationError(str(exc)) from None


def peers(minion_id=None, hafw=None):
    """
    The minion ids of the node's cluster peers.

    CLI Example:

    .. code-block:: bash

        salt-ssh fw-cent7i hafw.peers
    """
    return node(minion_id, hafw).get("peers", [])
