"""Unit tests of the sync comparison: _utils/hafw_syncdiff.py, and conntrack.sync_health with the peer mocked.

The live counterparts: test/functional/test_conntrack_table.py (the table
side against conntrackd's real cache) and
test/integration/test_operating_pair.py (two real nodes, a real shortfall).
"""

import importlib.util
import pathlib
from unittest.mock import patch

import hafw_syncdiff as sd
import pytest
from salt.exceptions import CommandExecutionError

REPO = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("conntrack_for_health", REPO / "_modules" / "conntrack.py")
conntrack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conntrack)

SEED_FILTER = (REPO / "test/fixtures/golden/Debian/fw-cent7i/etc/conntrackd/conntrackd.conf").read_text()


# -- conntrackd's filter --------------------------------------------------------
def test_the_seed_filter_replicates_tcp_udp_icmp_except_the_nodes_own_traffic():
    f = sd.SyncFilter.from_config(SEED_FILTER)
    assert f.protocols == {1, 6, 17} and f.addr_accept is False
    assert f.replicated(6, "192.168.0.10", "192.168.1.60")       # DNAT to the LB VIP: replicated
    assert not f.replicated(47, "192.168.0.10", "192.168.1.60")  # GRE is not accepted
    assert not f.replicated(6, "192.168.0.41", "192.168.0.10")   # from the node itself (orig src)
    assert not f.replicated(6, "192.168.0.10", "192.168.0.40")   # to a VIP (the reply's source)
    # the original destination is not tested (conntrack-tools src/filter.c: real endpoints only)
    assert f.replicated(6, "192.168.0.10", "192.168.1.60", "SYN_SENT")


def test_state_and_network_filters_on_one_line_blocks():
    f = sd.SyncFilter.from_config("General {\n Filter From Kernelspace {\n"
                                  "  State Accept { ESTABLISHED CLOSED TIME_WAIT CLOSE_WAIT for TCP }\n"
                                  "  Address Accept {\n   IPv4_address 10.0.0.0/8\n  }\n }\n}\n")
    assert f.tcp_states == {"ESTABLISHED", "CLOSED", "TIME_WAIT", "CLOSE_WAIT"} and f.protocols is None
    assert f.replicated(6, "10.1.1.1", "11.1.1.1", "ESTABLISHED")
    assert not f.replicated(6, "10.1.1.1", "11.1.1.1", "SYN_SENT")
    assert not f.replicated(17, "12.1.1.1", "11.1.1.1")          # neither endpoint accepted
    assert f.replicated(17, "12.1.1.1", "10.9.9.9")              # the reply's source is


def test_no_filter_replicates_everything():
    f = sd.SyncFilter.from_config("Sync {\n Mode FTFW {\n }\n}\n")
    assert f.replicated(132, "2001:db8::1", "2001:db8::2", None)


# -- keys: the kernel's entries and conntrackd's lines agree --------------------
@pytest.mark.parametrize("line,entry", [
    ("tcp      6 ESTABLISHED src=10.0.0.3 dst=10.0.0.9 sport=1000 dport=80 [UNREPLIED] src=10.0.0.9 "
     "dst=10.0.0.3 sport=80 dport=1000 mark=0 [active since 1s]",
     {"orig": {"proto": 6, "src": "10.0.0.3", "dst": "10.0.0.9", "sport": 1000, "dport": 80},
      "reply": {"src": "10.0.0.9"}}),
    ("udp      17 src=10.0.0.1 dst=10.0.0.3 sport=53 dport=5353 src=10.0.0.3 dst=10.0.0.1 sport=5353 dport=53 "
     "mark=7 [active since 4s]",
     {"orig": {"proto": 17, "src": "10.0.0.1", "dst": "10.0.0.3", "sport": 53, "dport": 5353}, "reply": {}}),
    ("icmp     1 src=10.0.0.1 dst=10.0.0.4 type=8 code=0 id=5 src=10.0.0.4 dst=10.0.0.1 type=0 code=0 id=5 "
     "mark=0 [active since 2s]",
     {"orig": {"proto": 1, "src": "10.0.0.1", "dst": "10.0.0.4", "icmp_type": 8, "icmp_code": 0, "icmp_id": 5},
      "reply": {}}),
])
def test_a_cache_line_and_the_kernel_entry_have_one_key(line, entry):
    parsed = sd.parse_cache_line(line)
    assert parsed[0] == sd.key_of_entry(entry)
    assert parsed[2] == entry["orig"]["src"]


def test_lines_that_are_not_entries_are_skipped():
    assert sd.parse_cache_line("") is None
    assert sd.parse_cache_line("cache internal:") is None
    assert sd.parse_cache_line("tcp 6 ESTABLISHED sport=1") is None


def test_digests_differ_exactly_in_the_buckets_of_the_differing_keys():
    keys = [sd.key(6, "10.0.0.1", "10.0.0.2", p, 80) for p in range(1000, 1500)]
    a, b = sd.Digest(64), sd.Digest(64)
    for k in keys:
        a.add(k)
    for k in reversed(keys[:-3]):  # order does not matter; three keys missing
        b.add(k)
    da, db = a.as_data(), b.as_data()
    differ = sd.differing_buckets(da, db)
    assert set(differ) == {sd.bucket_of(k, 64) for k in keys[-3:]}
    assert sd.bucket_counts(da, differ) - sd.bucket_counts(db, differ) == 3
    with pytest.raises(ValueError, match="64 and 32 buckets"):
        sd.differing_buckets(da, sd.Digest(32).as_data())


# -- conntrack.sync_health, the peer mocked -------------------------------------
TABLE_KEYS = [sd.key(6, "192.168.0.10", "192.168.0.60", p, 25) for p in range(2000, 2300)]


class Pair:
    """This node's side and the peer's, as key lists; publish.publish answers from the peer's."""

    def __init__(self, mine, theirs, my_group="MASTER"):
        self.keys = {"mine": list(mine), "theirs": list(theirs)}
        self.group = my_group
        self.calls = []

    def side_keys(self, side, config):
        return iter(self.keys["mine"])

    def publish(self, tgt, fun, arg, timeout):
        self.calls.append(fun)
        kwargs = dict(a.split("=", 1) for a in arg)
        with patch.object(conntrack, "_side_keys", lambda side, config: iter(self.keys["theirs"])):
            if fun == "conntrack.sync_digest":
                return {tgt: conntrack.sync_digest(kwargs["side"], kwargs["buckets"])}
            return {tgt: conntrack.sync_keys(kwargs["side"], kwargs["indexes"], kwargs["buckets"], kwargs["limit"])}


@pytest.fixture
def pair_of(request):
    def make(mine, theirs, my_group="MASTER"):
        pair = Pair(mine, theirs, my_group)
        conntrack.__salt__ = {"publish.publish": pair.publish, "hafw.peers": lambda: ["fw-cent7j"]}
        conntrack.__opts__ = {"id": "fw-cent7i"}
        patches = [patch.object(conntrack, "_side_keys", pair.side_keys),
                   patch.object(conntrack, "role", lambda config=None: {"group": pair.group}),
                   patch.object(conntrack.time, "sleep", lambda s: None)]
        for p in patches:
            p.start()
            request.addfinalizer(p.stop)
        return pair
    return make


def test_a_complete_replica_would_lose_nothing(pair_of):
    pair = pair_of(TABLE_KEYS, reversed(TABLE_KEYS))
    h = conntrack.sync_health()
    assert h["healthy"] and h["would_lose"] == 0 and h["differing_buckets"] == 0 and h["exact"]
    assert (h["master"], h["backup"], h["table"], h["replica"]) == ("fw-cent7i", "fw-cent7j", 300, 300)
    assert pair.calls == ["conntrack.sync_digest"]  # equal digests: no key crossed the bus
    assert "loses none" in h["verdict"]


def test_missing_and_stale_entries_are_counted_from_the_backup_too(pair_of):
    replica = TABLE_KEYS[:-7] + [sd.key(17, "10.9.9.9", "10.8.8.8", 1, 2)]
    pair_of(replica, TABLE_KEYS, my_group="BACKUP")  # asked on the backup: its side is the replica
    h = conntrack.sync_health(sample=3)
    assert not h["healthy"] and h["would_lose"] == 7 and h["stale"] == 1 and h["exact"]
    assert (h["master"], h["backup"]) == ("fw-cent7j", "fw-cent7i")
    assert len(h["sample"]) == 3 and set(h["sample"]) < set(TABLE_KEYS[-7:])
    assert h["verdict"].startswith("a failover now would lose 7 of the 300")


def test_too_many_differences_are_extrapolated(pair_of):
    pair_of(TABLE_KEYS, [])
    h = conntrack.sync_health(buckets=64, max_keys=50)
    assert not h["exact"] and 200 <= h["would_lose"] <= 400, h
    assert "about" in h["verdict"]


def test_no_answer_from_the_peer_says_why(pair_of):
    pair_of(TABLE_KEYS, TABLE_KEYS)
    conntrack.__salt__["publish.publish"] = lambda *a, **k: {}
    with pytest.raises(CommandExecutionError, match="salt-master's 'peer:' config does not allow fw-cent7i to publish"):
        conntrack.sync_health(timeout=1)


def test_a_node_holding_half_the_vips_has_nothing_to_compare(pair_of):
    pair_of(TABLE_KEYS, TABLE_KEYS, my_group="SPLIT")
    with pytest.raises(CommandExecutionError, match="role is SPLIT"):
        conntrack.sync_health()
