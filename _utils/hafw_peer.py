"""
A function run on the pair's peer through the salt-master's peer publishing
(``publish.publish``), for conntrack.sync_health, ipvs.sync_health and the
vrrp_sync switchover states. The master must allow it (``peer:``,
docs/operating.md); salt-ssh has no minion to publish from.
"""

from salt.exceptions import CommandExecutionError


def call(publish, me, peer, fun, kwargs, timeout):
    """
    fun(**kwargs) on peer, waiting at most timeout seconds; the peer's answer
    (a dict), or CommandExecutionError saying why there is none.
    publish: the loader's ``publish.publish``; me: this minion's id.
    """
    answers = publish(peer, fun, arg=[f"{k}={v}" for k, v in kwargs.items()], timeout=timeout)
    answer = answers.get(peer) if isinstance(answers, dict) else None
    if answer is None:
        raise CommandExecutionError(
            f"no answer from {peer} to {fun} within {timeout}s: the peer is down, or the salt-master's 'peer:' "
            f"config does not allow {me} to publish {fun} (docs/operating.md)")
    if not isinstance(answer, dict):  # the peer's error, as text
        lines = str(answer).strip().splitlines() or ["an empty answer"]
        raise CommandExecutionError(f"{peer} answered {fun} with an error: {lines[-1]}")
    return answer
