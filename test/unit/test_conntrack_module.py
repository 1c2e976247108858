"""Unit tests of _modules/conntrack.py with loader mocks (configure_loader_modules).

The ctnetlink reader is replaced by a fake table, so these tests check what
the module asks the kernel to filter, what it filters itself, its argument
errors and its answers. test/functional/test_conntrack_table.py runs the
same code paths against a real table.
"""

import importlib.util
import pathlib
import socket
from unittest.mock import patch

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

REPO = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("conntrack", REPO / "_modules" / "conntrack.py")
conntrack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conntrack)


def entry(src, dst, proto=6, sport=1000, dport=80, state="ESTABLISHED", zone=0, status=0x4):
    e = {"orig": {"src": src, "dst": dst, "proto": proto, "sport": sport, "dport": dport},
         "reply": {"src": dst, "dst": src, "proto": proto, "sport": dport, "dport": sport},
         "status": status, "timeout": 300, "mark": 0}
    if proto == 6:
        e["tcp_state"] = state
    if zone:
        e["zone"] = zone
    return e


TABLE = [entry("10.0.0.1", "10.0.0.2"), entry("10.0.1.7", "10.0.0.2", dport=25),
         entry("10.0.0.1", "10.0.0.3", proto=17, sport=53, dport=5353, zone=3),
         entry("10.0.0.5", "10.0.0.2", state="TIME_WAIT", status=0x14)]


class FakeReader:
    """Records each dump request; returns TABLE (the kernel filter is not applied: we check the request)."""

    def __init__(self):
        self.requests = []

    def dump(self, family=socket.AF_UNSPEC, raw=False, **kernel):
        self.requests.append((family, kernel))
        return iter([dict(e) for e in TABLE])


@pytest.fixture
def configure_loader_modules():
    return {conntrack: {"__salt__": {}, "__opts__": {}}}


@pytest.fixture
def fake():
    reader = FakeReader()
    with patch.object(conntrack.hafw_ctnetlink, "dump", reader.dump):
        yield reader


def test_exact_address_and_port_go_to_the_kernel(fake):
    conntrack.list_(src="10.0.0.1", proto="tcp", dport=80)
    assert fake.requests == [(socket.AF_INET, {"src": "10.0.0.1", "proto": 6, "dport": 80})]


def test_networks_states_and_zones_are_filtered_while_streaming(fake):
    assert [e["orig"]["src"] for e in conntrack.list_(src="10.0.1.0/24")] == ["10.0.1.7"]
    assert fake.requests[-1] == (socket.AF_INET, {})
    assert [e["orig"]["src"] for e in conntrack.list_(state="time_wait")] == ["10.0.0.5"]
    assert [e["orig"]["dport"] for e in conntrack.list_(zone=3)] == [5353]
    # a protocol without a family is checked here, not by the kernel
    assert len(conntrack.list_(proto="udp")) == 1 and fake.requests[-1] == (socket.AF_UNSPEC, {})


def test_nat_snat_is_a_status_mask_and_any_is_streamed(fake):
    conntrack.list_(nat="snat")
    assert fake.requests[-1][1] == {"status": 0x10, "status_mask": 0x10}
    assert [e["flags"] for e in conntrack.list_(nat="any")] == [["ASSURED", "SNAT"]]


def test_limit(fake):
    assert len(conntrack.list_(limit=2)) == 2
    assert len(conntrack.list_(limit=0)) == len(TABLE)


@pytest.mark.parametrize("kwargs,message", [
    ({"proto": "bogus"}, "proto: 'bogus' is not one of"),
    ({"dport": 80}, "dport needs proto tcp"),
    ({"proto": "tcp", "sport": 70000}, "sport: 70000 is not a port number"),
    ({"src": "10.0.0.300"}, "src: '10.0.0.300' is not an address or a network"),
    ({"src": "10.0.0.1", "family": "ipv6"}, "src: 10.0.0.1 is not of family ipv6"),
    ({"state": "ESTABLISHED", "proto": "udp"}, "state is a TCP state"),
    ({"state": "OPEN"}, "state: 'OPEN' is not a TCP state"),
    ({"nat": "masquerade"}, "nat: 'masquerade' must be snat, dnat or any"),
    ({"limit": "many"}, "limit: 'many' is not a number"),
])
def test_bad_arguments_name_the_argument(fake, kwargs, message):
    with pytest.raises(SaltInvocationError, match=message):
        conntrack.list_(**kwargs)
    assert fake.requests == []  # nothing asked of the kernel


def test_delete_and_flush_need_an_explicit_choice():
    with pytest.raises(SaltInvocationError, match="delete needs a filter"):
        conntrack.delete()
    with pytest.raises(SaltInvocationError, match="pass all=True"):
        conntrack.flush()


def test_delete_streams_the_matches_to_the_deleter(fake):
    seen = []

    def deleter(entries):
        seen.extend(e["orig"]["dport"] for e in entries)
        return len(seen), 0

    with patch.object(conntrack.hafw_ctnetlink, "delete", deleter):
        assert conntrack.delete(src="10.0.0.0/24") == {"deleted": 3, "gone": 0}
    assert seen == [80, 5353, 80]  # 10.0.1.7 is outside the network


def test_permission_errors_say_what_is_needed(fake):
    def denied(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    with patch.object(conntrack.hafw_ctnetlink, "dump", denied):
        with pytest.raises(CommandExecutionError, match="needs root or CAP_NET_ADMIN"):
            conntrack.list_()


def test_summary_refuses_filters_the_kernel_cannot_apply():
    with pytest.raises(SaltInvocationError, match="summary filters by what the kernel can match"):
        conntrack.summary(src="10.0.0.0/24")


# ---------------------------------------------------------------------------
# conntrackd: its output as conntrackd 1.4.7 printed it (test/fixtures/conntrackd)
# ---------------------------------------------------------------------------
FIXTURES = REPO / "test" / "fixtures" / "conntrackd"
CONF = """Sync {
\tMode FTFW {
\t\tStartupResync on
\t}
\tUDP {
\t\tIPv4_address 192.168.3.41
\t\tInterface enp0s9
\t}
}
General {
\tLockFile /var/lock/conntrackd.lock
\tUNIX {
\t\tPath /var/run/conntrackd.sock
\t}
}
"""


def test_parsers_read_the_daemons_output():
    import hafw_ctd_stats as st

    cache = st.caches((FIXTURES / "stats-cache.txt").read_text())
    assert cache["internal"] == {"active": 3, "created": 3, "create_failed": 0, "no_memory": 0, "no_space": 0,
                                 "updated": 0, "update_failed": 0, "deleted": 0, "delete_failed": 0}
    assert cache["external"]["active"] == 0
    net = st.network((FIXTURES / "stats-network.txt").read_text())
    assert net["recv"]["packets_lost"] == 0 and net["traffic"]["device"] == "veth0"
    assert net["traffic"]["transport"] == "udp" and net["traffic"]["packets_sent"] >= 1
    q = st.queues((FIXTURES / "stats-queue.txt").read_text())
    assert q["rsqueue"] == {"current": 3, "max": 131072, "no_space": 0}  # 3 unacknowledged: no peer
    rt = st.runtime((FIXTURES / "stats-runtime.txt").read_text())
    assert rt["uptime_min"] == 0 and rt["netlink"]["events_received"] >= 3
    assert st.read_config(CONF) == {"mode": "ftfw", "inject": False, "transport": "udp", "interface": "enp0s9",
                                    "socket": "/var/run/conntrackd.sock", "lock_file": "/var/lock/conntrackd.lock"}
    assert st.read_config(CONF.replace("StartupResync on", "DisableExternalCache on"))["inject"] is True
    log = ("2026-11-26T11:15:28.184+0000 hafw-conntrackd[305] info: primary: step=commit rc=0 ms=7 ok (x)\n"
           "2026-11-26T11:16:00.000+0000 hafw-conntrackd[399] err: primary: step=commit rc=124 ms=10002 FAILED: x\n")
    assert st.last_step(log, "primary", "commit") == {"at": "2026-11-26T11:16:00.000+0000", "rc": 124, "ms": 10002}


class FakeConntrackd:
    """cmd.run_all playing conntrackd from the fixtures; `down` plays a daemon that is not running."""

    def __init__(self, down=False):
        self.down, self.calls = down, []

    def __call__(self, cmd, python_shell=True, ignore_retcode=False):
        assert python_shell is False and isinstance(cmd, list)
        self.calls.append(cmd[3:])
        if self.down:
            return {"retcode": 1, "stdout": "", "stderr": "[ERROR] can't connect: is conntrackd running? "
                                                          "appropriate permissions?"}
        name = {"cache": "stats-cache", "network": "stats-network", "runtime": "stats-runtime",
                "queue": "stats-queue"}.get(cmd[-1], None)
        if cmd[3:4] == ["-i"]:
            name = "internal-dump"
        text = (FIXTURES / f"{name}.txt").read_text() if name else ""
        return {"retcode": 0, "stdout": text, "stderr": ""}


@pytest.fixture
def conntrackd(tmp_path):
    conf = tmp_path / "conntrackd.conf"
    conf.write_text(CONF.replace("/var/run/conntrackd.sock", str(tmp_path / "ctd.sock")))
    binary = tmp_path / "conntrackd"
    binary.write_text("")

    def install(fake):
        opts = {"conntrack.conntrackd_bin": str(binary), "conntrack.conntrackd_config": str(conf),
                "conntrack.hook_log": str(tmp_path / "hook.log")}
        return patch.multiple(conntrack, create=True, __salt__={"cmd.run_all": fake}, __opts__=opts)
    return install


def test_sync_status_from_a_running_daemon(conntrackd):
    fake = FakeConntrackd()
    with conntrackd(fake):
        status = conntrack.sync_status()
    assert status["running"] is True and status["mode"] == "ftfw" and status["inject"] is False
    assert (status["internal"], status["external"]) == (3, 0)
    assert status["resend_queue"]["max"] == 131072 and status["errors"]["lost"] == 0
    assert status["last_commit"] is None  # no hook log
    assert fake.calls == [["-s", "cache"], ["-s", "network"], ["-s", "runtime"], ["-s", "queue"]]


def test_a_daemon_that_is_down_is_reported_not_raised(conntrackd):
    with conntrackd(FakeConntrackd(down=True)):
        status = conntrack.sync_status()
        assert status["running"] is False and "is not running (its socket" in status["reason"]
        with pytest.raises(CommandExecutionError, match="cannot commit the external cache.*is not running"):
            conntrack.commit()


def test_actions_run_conntrackds_flags(conntrackd):
    fake = FakeConntrackd()
    with conntrackd(fake):
        for fun, flag in ((conntrack.commit, "-c"), (conntrack.flush_caches, "-f"), (conntrack.resync, "-R"),
                          (conntrack.request_resync, "-n"), (conntrack.bulk_send, "-B"),
                          (conntrack.shorten_timers, "-t")):
            assert fun()["result"] is True
            assert fake.calls[-1] == [flag]
        dumped = conntrack.caches(dump=True, limit=2)
    assert len(dumped["internal"]["entries"]) == 2 and dumped["internal"]["active"] == 3
