"""
A VRRP pair in the right state: conntrackd (a load-balancer pair: IPVS)
matching the role, and the master role where the operator wants it
(issues 4 and 6, docs/operating.md).

``consistent``
    On each node, conntrackd's side matches the VRRP role (master: the
    peer's states committed, the gate open; backup: gate closed, the
    primary's states asked for after a conntrackd restart). Fixes what is
    off by running the transition the node missed. On a load balancer:
    keepalived runs the IPVS sync daemon of the role (master or backup)
    and the virtual services are in the kernel; a reload fixes either.
``master`` / ``backup``
    Planned switchover and maintenance mode: ``master`` on the node that
    must hold the VIPs, ``backup`` on the one that must not. The role moves
    only after ``conntrack.sync_health`` says the peer's replica holds the
    connections; the states wait for the takeover and its commit, roll back
    on timeout, and never leave the pair without a master (a demoted node
    still takes over if its peer dies).

The peer is reached through the salt-master's peer publishing: its master
config must allow these minions ``conntrack.*`` and ``vrrp_sync.*`` on each
other (docs/operating.md).

.. code-block:: yaml

    firewall-pair-consistent:
      vrrp_sync.consistent: []

    fw-cent7j-takes-over:
      vrrp_sync.master:
        - timeout: 30
"""

import os
import time

from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    import hafw_peer
except ImportError:  # _utils not synced yet: __virtual__ refuses the state module
    hafw_peer = None

HOOK = "/etc/conntrackd/primary-backup.sh"
HOOK_STATE = "/run/conntrackd/hafw-role"


def __virtual__():
    if hafw_peer is None:
        return (False, "vrrp_sync: _utils/hafw_peer.py is not available; run saltutil.sync_all")
    if "vrrp_sync.maintenance" not in __salt__:
        return (False, "vrrp_sync: the vrrp_sync execution module is not available here (saltutil.sync_all)")
    return "vrrp_sync"


def _role():
    """conntrack.role, or an error saying why the conntrack module is missing (no nf_conntrack yet)."""
    if "conntrack.role" not in __salt__:
        raise CommandExecutionError("the conntrack execution module is not loaded: nf_conntrack is not in the "
                                    "kernel yet, or _modules were not synced (saltutil.sync_all)")
    return __salt__["conntrack.role"]()


def _ret(name):
    return {"name": name, "changes": {}, "result": True, "comment": ""}


# ---------------------------------------------------------------------------
# consistent
# ---------------------------------------------------------------------------
def _process_start(name):
    """Start time (epoch seconds) of the oldest process called name, or None."""
    res = __salt__["cmd.run_all"](["pidof", name], python_shell=False, ignore_retcode=True)
    pids = [int(p) for p in res.get("stdout", "").split() if p.isdigit()]
    if not pids:
        return None
    try:
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        starts = []
        for pid in pids:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            starts.append(btime + int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return min(starts)


def _last_transition(state_file):
    """(role, epoch seconds) of the hook's last transition, or (None, 0)."""
    try:
        with open(state_file) as fh:
            words = fh.read().split()
        return words[0], int(words[1]) / 1000.0
    except (OSError, IndexError, ValueError):
        return None, 0.0


def _lvs():
    """The node's lvs view if it is a load balancer (an lvs view and no conntrackd), else None."""
    if "hafw.node" not in __salt__:
        return None
    try:
        node = __salt__["hafw.node"]() or {}
    except (CommandExecutionError, SaltInvocationError):  # no usable pillar: judged as a firewall, as before
        return None
    return node.get("lvs") if node.get("lvs") and not node.get("conntrackd") else None


def _ipvs_plan(group, lvs):
    """
    A load balancer: keepalived runs the IPVS sync daemon of the node's role
    and has put its virtual services in the kernel; if not, a reload makes
    it program both again.
    """
    if "ipvs.sync_status" not in __salt__:
        raise CommandExecutionError("the ipvs execution module is not loaded (ipvsadm missing, or _modules "
                                    "not synced: saltutil.sync_all)")
    if lvs.get("sync_daemon"):
        want = "master" if group == "MASTER" else "backup"
        states = sorted(d["state"] for d in __salt__["ipvs.sync_status"]()["daemons"])
        if want not in states:
            return [("reload keepalived", f"its IPVS sync daemons are {', '.join(states) or 'none'}: "
                                          f"a {group.lower()} needs the {want} one")]
    if lvs.get("virtual_servers") and not __salt__["ipvs.services"](stats=False):
        return [("reload keepalived", "the kernel has none of its IPVS virtual services")]
    return []


def _plan(role, state_file, lvs=None):
    """The actions that bring conntrackd's side (lvs given: IPVS) in line with the role, each (action, why)."""
    plan = []
    group = role["group"]
    if not role["keepalived_running"]:
        plan.append(("start keepalived", "keepalived is not running"))
    if lvs:  # a load balancer: no conntrackd, no hook
        if role["keepalived_running"] and group in ("MASTER", "BACKUP"):
            plan += _ipvs_plan(group, lvs)
        return plan
    if role["conntrackd_running"] is False and role.get("gate") is not None:
        plan.append(("start conntrackd", "conntrackd is not running"))
    hook, gate = role["hook"], role["gate"]
    if group == "MASTER" and (hook != "primary" or gate == "closed"):
        plan.append(("primary", f"holds the VIPs, but the last transition was {hook or 'none'} "
                                f"and the gate is {gate}"))
    elif group == "BACKUP" and (hook == "primary" or gate == "open"):
        plan.append(("backup", f"holds no VIP, but the last transition was {hook} and the gate is {gate}"))
    elif group in ("MASTER", "BACKUP") and role.get("gate") is not None:
        # conntrackd restarted after the last transition: its caches start empty
        _, when = _last_transition(state_file)
        reconciled = os.path.getmtime(state_file + ".reconciled") if os.path.exists(
            state_file + ".reconciled") else 0.0
        started = _process_start("conntrackd")
        if started and started > max(when, reconciled) + 1:
            plan.append(("resync-master" if group == "MASTER" else "resync-backup",
                         "conntrackd restarted after the last transition"))
    return plan


# A keepalived started moments ago is not judged yet: its first transition
# runs the hook, and in the lab a freshly started keepalived was seen to shut
# down (notify "stop") some 10 ms after that first hook returned, under load
# (keepalived logs only to syslog there, so the cause is not known). Judging
# it after this grace finds it stopped and starts it again.
KEEPALIVED_STARTUP_S = 2.0


def _judge(state_file, settle, lvs=None):
    """(role, plan, settled), watching for up to `settle` seconds while a transition
    is in flight or keepalived is younger than KEEPALIVED_STARTUP_S."""
    deadline = time.monotonic() + settle
    while True:
        role = _role()
        plan = _plan(role, state_file, lvs)
        started = _process_start("keepalived") if role["keepalived_running"] else None
        young = started is not None and time.time() - started < KEEPALIVED_STARTUP_S
        settled = role["consistent"] and not plan
        if (settled and not young) or time.monotonic() >= deadline:
            return role, plan, settled
        time.sleep(0.5)  # a transition in flight settles by itself


def _run_plan(plan, hook, state_file):
    done = []
    for action, _why in plan:
        if action.startswith("start "):
            daemon = action.split()[1]
            if not __salt__["service.start"](daemon):
                raise CommandExecutionError(f"cannot start {daemon}")
        elif action == "reload keepalived":
            if not __salt__["service.reload"]("keepalived"):
                raise CommandExecutionError("cannot reload keepalived")
        elif action in ("primary", "backup"):
            res = __salt__["cmd.run_all"]([hook, action], python_shell=False, ignore_retcode=True)
            if res["retcode"] != 0:
                raise CommandExecutionError(f"the hook's {action} transition failed: "
                                            f"{(res.get('stderr') or res.get('stdout') or '').strip()[-300:]}")
        elif action == "resync-master":
            __salt__["conntrack.resync"]()
            __salt__["conntrack.bulk_send"]()
        elif action == "resync-backup":
            __salt__["conntrack.request_resync"]()
        if action.startswith("resync-"):
            with open(state_file + ".reconciled", "w") as fh:
                fh.write(f"{action} {time.time():.3f}\n")
        done.append(action)
    return done


def consistent(name, settle=10, hook=None, state_file=None):
    """
    conntrackd's side of this node matches its VRRP role; fix it if not.

    A transition in flight (keepalived just moved the VIPs, the hook is still
    committing) settles by itself: the state watches the role for up to
    ``settle`` seconds before it acts. Then: a master whose hook missed the
    primary transition, or whose gate is closed, runs the primary
    transition; a backup that still looks like a primary runs the backup
    transition; conntrackd restarted since the last transition gets a
    resync and bulk send (master) or asks the primary for its states
    (backup); a stopped conntrackd or keepalived is started. VIPs split
    between the nodes cannot be fixed from one node: the state fails and
    says so.

    name
        A label (the sync group's name reads well).
    """
    ret = _ret(name)
    hook = hook or __opts__.get("conntrack.hook", HOOK)
    state_file = state_file or __opts__.get("conntrack.hook_state_file", HOOK_STATE)
    try:
        lvs = _lvs()
        role, plan, settled = _judge(state_file, float(settle), lvs)
    except CommandExecutionError as exc:
        ret["result"], ret["comment"] = False, str(exc)
        return ret
    if role["group"] in ("SPLIT", "PARTIAL"):
        ret["result"] = False
        ret["comment"] = "; ".join(role["problems"]) + ": keepalived must settle the VIPs, not this state"
        return ret
    if settled:
        side = "IPVS (sync daemon, virtual services)" if lvs else "conntrackd's side"
        ret["comment"] = f"{role['group'].lower()}: {side} matches the role"
        return ret
    if not plan:
        ret["result"] = False
        ret["comment"] = "; ".join(role["problems"]) + " (nothing this state can run fixes it)"
        return ret
    ret["changes"] = {"role": role["group"], "actions": [a for a, _ in plan], "why": [w for _, w in plan]}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = "would " + "; would ".join(f"{a} ({w})" for a, w in plan)
        return ret
    try:
        _run_plan(plan, hook, state_file)
    except CommandExecutionError as exc:
        ret["result"] = False
        ret["comment"] = str(exc)
        return ret
    if ("start keepalived", "keepalived is not running") in plan:
        # the same grace as before: a keepalived that exits again right after its start is a failure
        after, _, _ = _judge(state_file, KEEPALIVED_STARTUP_S + 1, lvs)
        if not after["keepalived_running"]:
            ret["result"] = False
            ret["comment"] = "started keepalived, and it exited again within its first seconds"
            return ret
    elif lvs:
        # keepalived programs IPVS after re-reading its config: judge again for a few seconds
        after, left, _ = _judge(state_file, 5, lvs)
        after = {**after, "problems": after["problems"] + [w for _, w in left]}
        after["consistent"] = after["consistent"] and not left
    else:
        after = _role()
    ret["changes"]["problems_after"] = after["problems"]
    ret["result"] = bool(after["consistent"])
    ret["comment"] = "ran " + ", ".join(a for a, _ in plan) + (
        "" if after["consistent"] else "; still: " + "; ".join(after["problems"]))
    return ret


# ---------------------------------------------------------------------------
# master / backup: planned switchover and maintenance
# ---------------------------------------------------------------------------
def _peer(peer):
    peers = __salt__["hafw.peers"]()
    if peer:
        if peer not in peers:
            raise SaltInvocationError(f"peer: {peer} is not a peer of {__opts__['id']} (peers: {peers})")
        return peer
    if len(peers) != 1:
        raise SaltInvocationError(f"peer: this node has peers {peers}; name the one to hand over to or from")
    return peers[0]


def _publish(peer, fun, wait, **kwargs):
    """fun on the peer (its keyword arguments: kwargs), waiting at most `wait` seconds for the answer."""
    return hafw_peer.call(__salt__["publish.publish"], __opts__.get("id"), peer, fun, kwargs, wait)


def _facts(name, peer):
    """The state's return skeleton, the peer, this node's maintenance files and its role."""
    return _ret(name), _peer(peer), __salt__["vrrp_sync.maintenance"](), _role()


def _settled_master(role):
    return role["group"] == "MASTER" and role["consistent"]


def _wait(check, timeout, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except CommandExecutionError:
            pass
        time.sleep(step)
    return False


def _health_ok(ret, max_loss, call_timeout):
    try:
        health = __salt__["conntrack.sync_health"](timeout=call_timeout)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"not switching: cannot tell whether the peer holds the connections: {exc}"
        return None
    if health["would_lose"] > int(max_loss):
        ret["result"] = False
        ret["comment"] = f"not switching: {health['verdict']} (max_loss {max_loss})"
        return None
    return health


def master(name, peer=None, timeout=30, max_loss=0, persistent=False, call_timeout=30):
    """
    This node holds the master role, its peer stays backup (planned
    switchover: apply it on the node that must take over).

    If this node is backup: it is undemoted, ``conntrack.sync_health``
    must find at most ``max_loss`` connections missing from its replica,
    then the peer steps down (demoted: ``persistent`` across its reboots)
    and this node must become a settled master (VIPs held, primary
    transition done, gate open) within ``timeout`` seconds; otherwise the
    peer is undemoted again so that it takes the role back, and the state
    fails. Already master: only the demotion of this node is cleared.

    name
        A label (the sync group's name reads well).
    """
    ret, peer, mt, role = _facts(name, peer)
    if _settled_master(role) and not mt["demoted"]:
        ret["comment"] = f"{__opts__['id']} is master of {role.get('sync_group') or name}"
        return ret
    if role["group"] != "MASTER" and role["hook"] == "fault":
        ret["result"] = False
        ret["comment"] = f"{__opts__['id']} is in FAULT (its last transition): it cannot take over"
        return ret
    if role["group"] == "MASTER":
        ret["changes"] = {"undemoted": __opts__["id"]}
        if __opts__["test"]:
            ret["result"], ret["comment"] = None, f"would undemote {__opts__['id']} (already master)"
            return ret
        __salt__["vrrp_sync.undemote"]()
        ret["comment"] = f"{__opts__['id']} is master; its demotion is cleared"
        return ret
    health = _health_ok(ret, max_loss, call_timeout)
    if health is None:
        return ret
    ret["changes"] = {"master": {"old": peer, "new": __opts__["id"]}, "health": health["verdict"],
                      "peer_demoted": "persistent" if persistent else "until its reboot"}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"would hand the master role from {peer} to {__opts__['id']}: {health['verdict']}"
        return ret
    started = time.monotonic()
    __salt__["vrrp_sync.undemote"]()
    try:
        _publish(peer, "vrrp_sync.step_down", call_timeout, persistent=persistent, timeout=min(10, timeout))
        taken = _wait(lambda: _settled_master(_role()), timeout)
    except CommandExecutionError as exc:
        taken, why = False, str(exc)
    else:
        why = f"{__opts__['id']} was not a settled master {timeout}s after {peer} stepped down"
    if taken:
        ret["changes"]["seconds"] = round(time.monotonic() - started, 3)
        ret["comment"] = f"{__opts__['id']} is master (took {ret['changes']['seconds']}s); {peer} is a demoted backup"
        return ret
    ret["result"] = False
    try:
        _publish(peer, "vrrp_sync.undemote", call_timeout)
        back = _wait(lambda: _publish(peer, "conntrack.role", call_timeout)["group"] == "MASTER"
                     or _role()["group"] == "MASTER", timeout)
        ret["comment"] = f"{why}; rolled back: {peer} undemoted, " + ("a master holds the VIPs" if back else
                                                                     "NO MASTER SEEN yet: check the pair")
    except CommandExecutionError as exc:
        ret["comment"] = f"{why}; rollback failed: {exc}"
    ret["changes"]["rolled_back"] = True
    return ret


def backup(name, peer=None, timeout=30, max_loss=0, persistent=False, call_timeout=30):
    """
    This node stays out of the master role (maintenance mode): it is
    demoted (``persistent`` across reboots, or until the next one), and if
    it is master, the role moves to the peer first, with the checks and the
    rollback of ``master``. The node still takes over if its peer dies: the
    pair is never left without a master. ``vrrp_sync.master`` on this node,
    or ``vrrp_sync.undemote``, ends the maintenance.

    name
        A label (the sync group's name reads well).
    """
    ret, peer, mt, role = _facts(name, peer)
    wanted = {"demoted": True, "persistent": bool(persistent)}
    if role["group"] != "MASTER":
        if mt["demoted"] and (mt["persistent"] or not persistent):
            ret["comment"] = f"{__opts__['id']} is a demoted backup" + (" (persistent)" if mt["persistent"] else "")
            return ret
        ret["changes"] = {"maintenance": wanted}
        if __opts__["test"]:
            ret["result"], ret["comment"] = None, f"would demote {__opts__['id']}"
            return ret
        __salt__["vrrp_sync.demote"](persistent=persistent)
        ret["comment"] = f"{__opts__['id']} demoted: it stays backup while {peer} runs"
        return ret
    health = _health_ok(ret, max_loss, call_timeout)
    if health is None:
        return ret
    ret["changes"] = {"master": {"old": __opts__["id"], "new": peer}, "health": health["verdict"],
                      "maintenance": wanted}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"would hand the master role from {__opts__['id']} to {peer}: {health['verdict']}"
        return ret
    started = time.monotonic()
    try:
        _publish(peer, "vrrp_sync.undemote", call_timeout)
        __salt__["vrrp_sync.step_down"](persistent=persistent, timeout=min(10, timeout))
        taken = _wait(lambda: _settled_master(_publish(peer, "conntrack.role", call_timeout)), timeout, step=0.5)
        why = f"{peer} was not a settled master {timeout}s after {__opts__['id']} stepped down"
    except CommandExecutionError as exc:
        taken, why = False, str(exc)
    if taken:
        ret["changes"]["seconds"] = round(time.monotonic() - started, 3)
        ret["comment"] = f"{peer} is master (took {ret['changes']['seconds']}s); {__opts__['id']} is a demoted backup"
        return ret
    ret["result"] = False
    __salt__["vrrp_sync.undemote"]()
    back = _wait(lambda: _role()["group"] == "MASTER", timeout)
    ret["changes"]["rolled_back"] = True
    ret["comment"] = f"{why}; rolled back: {__opts__['id']} undemoted" + (
        " and master again" if back else ", NOT master yet: check the pair")
    return ret
