"""
The conntrack execution module and its ctnetlink reader on a real table.

A throwaway network namespace (``hfct<hex>``) gets a table made with
``conntrack -I`` (TCP in several states, UDP with a mark and in a zone,
ICMP, IPv6) plus lab.ctfill's bulk entries; the reader's entries are
compared with what ``conntrack -L`` prints for the same table, filter by
filter, and the module's functions run through a scratch minion's
salt-call inside the namespace. Needs root, iproute2 and conntrack.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time

import pytest

from test.support.scratch_minion import IP, REPO, SALT_CALL, ScratchMinion, ns_run

sys.path.insert(0, str(REPO / "_utils"))
CONNTRACK = shutil.which("conntrack") or "/usr/sbin/conntrack"

HAND_MADE = [
    "-p tcp -s 10.0.0.1 -d 10.0.0.2 --sport 1000 --dport 80 --state ESTABLISHED -u ASSURED,SEEN_REPLY -t 300",
    "-p tcp -s 10.0.0.1 -d 10.0.0.2 --sport 1001 --dport 80 --state TIME_WAIT -t 100",
    "-p tcp -s 10.0.1.7 -d 10.0.0.2 --sport 1002 --dport 25 --state ESTABLISHED -t 300",
    "-p udp -s 10.0.0.1 -d 10.0.0.3 --sport 53 --dport 5353 -t 100 -m 7",
    "-p udp -s 10.0.0.9 -d 10.0.0.3 --sport 54 --dport 5353 -t 100 -w 3",
    "-p icmp -s 10.0.0.1 -d 10.0.0.4 --icmp-type 8 --icmp-code 0 --icmp-id 5 -t 30",
    "-p tcp -s 2001:db8::1 -d 2001:db8::2 --sport 1 --dport 2 --state ESTABLISHED -t 300",
]
BULK = 2000  # lab.ctfill: ESTABLISHED TCP from 10.99.0.0/24 to 172.31.0.1:443


@pytest.fixture(scope="module")
def table():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if not os.access(CONNTRACK, os.X_OK):
        pytest.skip("conntrack not available")
    ns = f"hfct{secrets.token_hex(3)}"
    subprocess.run([IP, "netns", "add", ns], check=True)
    try:
        fill(ns)
        yield ns
    finally:
        subprocess.run([IP, "netns", "delete", ns], check=False)


def fill(ns):
    for spec in HAND_MADE:
        ns_run(ns, CONNTRACK, "-I", *spec.split())
    ns_run(ns, "sh", "-c", f'cd "{REPO}" && exec "{sys.executable}" -m lab.ctfill {BULK}')


def cli(ns, *args):
    """conntrack -L ARGS as comparable keys: (proto, src, dst, sport, dport, state, mark, zone)."""
    out = ns_run(ns, CONNTRACK, "-L", *args).stdout
    return sorted(key_of_line(line) for line in out.splitlines() if line.strip())


def key_of_line(line):
    words = line.split()
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    orig = line[:line.index("src=", line.index("src=") + 1)]  # up to the reply tuple
    first = dict(re.findall(r"(src|dst|sport|dport)=(\S+)", orig))
    state = words[3] if words[3].isupper() and "=" not in words[3] else None
    return (int(words[1]), first["src"], first["dst"], int(first.get("sport", -1)), int(first.get("dport", -1)),
            state, int(fields.get("mark", 0)), int(fields.get("zone", 0)))


def key_of_entry(e):
    o = e["orig"]
    return (o["proto"], o["src"], o["dst"], o.get("sport", -1), o.get("dport", -1), e.get("tcp_state"),
            e.get("mark", 0), e.get("zone", 0))


def reader(ns, code):
    """Run python code using hafw_ctnetlink (as `c`) inside the namespace; its last line is printed."""
    prog = f"import sys, json, socket; sys.path.insert(0, {str(REPO / '_utils')!r}); import hafw_ctnetlink as c\n{code}"
    return ns_run(ns, sys.executable, "-c", prog).stdout


def dump_keys(ns, family="socket.AF_UNSPEC", **kw):
    """The reader's entries (dump with the kernel filter kw) as conntrack -L keys."""
    code = inspect.getsource(key_of_entry) + (
        f"print(json.dumps(sorted(key_of_entry(e) for e in c.dump({family}, **{kw!r}))))\n")
    return [tuple(x) for x in json.loads(reader(ns, code))]


def test_every_entry_matches_conntrack_L(table):
    assert dump_keys(table) == cli(table)
    assert len(cli(table)) == len(HAND_MADE) + BULK


@pytest.mark.parametrize("kernel_filter,cli_args", [
    ({"mark": 7}, ["-m", "7"]),
    ({"src": "10.0.0.1"}, ["-s", "10.0.0.1"]),
    ({"dst": "10.0.0.3"}, ["-d", "10.0.0.3"]),
    ({"proto": 6, "dport": 80}, ["-p", "tcp", "--dport", "80"]),
    ({"proto": 17, "sport": 54}, ["-p", "udp", "--sport", "54"]),
], ids=["mark", "src", "dst", "tcp-dport", "udp-sport"])
def test_kernel_filters_match_conntrack_L(table, kernel_filter, cli_args):
    family = "socket.AF_INET" if {"src", "dst", "proto"} & set(kernel_filter) else "socket.AF_UNSPEC"
    got = dump_keys(table, family, **kernel_filter)
    want = cli(table, "-f", "ipv4", *cli_args) if family == "socket.AF_INET" else cli(table, *cli_args)
    assert got == want
    assert got  # the filter matched something


def test_summary_counts_the_table(table):
    s = json.loads(reader(table, "print(json.dumps(c.summary(top=2)))"))
    assert s["entries"] == len(HAND_MADE) + BULK
    assert s["by_protocol"] == {"tcp": BULK + 4, "udp": 2, "icmp": 1}
    assert s["tcp_states"] == {"ESTABLISHED": BULK + 3, "TIME_WAIT": 1}
    assert s["top_destinations"][0] == {"address": "172.31.0.1", "entries": BULK}


# --------------------------------------------------------------------------
# the execution module, through salt-call in the namespace


@pytest.fixture(scope="module")
def minion(table, tmp_path_factory):
    if not SALT_CALL.exists():
        pytest.skip(f"{SALT_CALL} not available")
    return ScratchMinion(tmp_path_factory.mktemp("ctmod"), table, "fw-cent7i", lookup={})


def test_count_and_stats(minion, table):
    total = len(HAND_MADE) + BULK
    assert minion.call("conntrack.count") == total
    stats = minion.call("conntrack.stats")
    assert stats["count"] == total and stats["max"] > 0 and stats["buckets"] > 0
    assert len(stats["cpus"]) == os.cpu_count() and "insert_failed" in stats["total"]


def test_list_with_python_side_filters(minion, table):
    assert [e["orig"]["sport"] for e in minion.call("conntrack.list", "src=10.0.1.0/24")] == [1002]
    assert [e["orig"]["sport"] for e in minion.call("conntrack.list", "state=TIME_WAIT")] == [1001]
    assert [e["orig"]["sport"] for e in minion.call("conntrack.list", "zone=3")] == [54]
    entries = minion.call("conntrack.list", "proto=tcp", "dport=443", "limit=5")
    assert len(entries) == 5 and all(e["proto"] == "tcp" and "ASSURED" in e["flags"] for e in entries)
    assert len(minion.call("conntrack.list", "proto=tcp", "dport=443", "limit=0")) == BULK


@pytest.mark.parametrize("args,message", [
    (["conntrack.list", "proto=bogus"], "proto: 'bogus' is not one of"),
    (["conntrack.list", "dport=80"], "dport needs proto tcp"),
    (["conntrack.list", "src=10.0.0.300"], "src: '10.0.0.300' is not an address or a network"),
    (["conntrack.list", "state=ESTABLISHED", "proto=udp"], "state is a TCP state"),
    (["conntrack.delete"], "delete needs a filter"),
    (["conntrack.flush"], "pass all=True to confirm"),
])
def test_bad_arguments_name_the_argument(minion, args, message):
    with pytest.raises(AssertionError) as failed:  # salt-call exits 1 with the message
        minion.call(*args)
    assert message in str(failed.value)


def test_delete_and_flush(minion, table):
    before = minion.call("conntrack.count")
    assert minion.call("conntrack.delete", "proto=udp") == {"deleted": 2, "gone": 0}
    assert minion.call("conntrack.delete", "src=10.99.0.0/24", "proto=tcp") == {"deleted": BULK, "gone": 0}
    assert minion.call("conntrack.count") == before - 2 - BULK
    assert cli(table, "-p", "udp") == []
    flushed = minion.call("conntrack.flush", "all=True")
    assert flushed == {"flushed": before - 2 - BULK, "left": 0}
    fill(table)  # the module fixture's table, for whoever runs after


# --------------------------------------------------------------------------
# conntrackd, a real daemon in the namespace

CTD_CONF = """Sync {{
\tMode FTFW {{
\t}}
\tUDP {{
\t\tIPv4_address 192.168.77.1
\t\tIPv4_Destination_Address 192.168.77.2
\t\tPort 3780
\t\tInterface ctsync0
\t}}
}}
General {{
\tHashSize 32768
\tHashLimit 131072
\tLogFile off
\tSyslog off
\tLockFile {dir}/lock
\tUNIX {{
\t\tPath {dir}/sock
\t}}
\tFilter From Userspace {{
\t\tProtocol Accept {{
\t\t\tTCP
\t\t\tUDP
\t\t}}
\t}}
}}
"""


@pytest.fixture
def daemon(table, minion, tmp_path):
    """conntrackd in the table's namespace, and the minion pointed at its config; stopped after."""
    if not os.access("/usr/sbin/conntrackd", os.X_OK):
        pytest.skip("conntrackd not available")
    conf = tmp_path / "conntrackd.conf"
    conf.write_text(CTD_CONF.format(dir=tmp_path))
    ns_run(table, IP, "link", "add", "ctsync0", "type", "veth", "peer", "name", "ctsync1", check=False)
    ns_run(table, IP, "addr", "replace", "192.168.77.1/24", "dev", "ctsync0")
    ns_run(table, IP, "link", "set", "ctsync0", "up")
    opts = minion.root / "minion"
    saved = opts.read_text()
    opts.write_text(saved + f"conntrack.conntrackd_config: {conf}\nconntrack.hook_log: {tmp_path / 'hook.log'}\n")
    try:
        yield conf
    finally:
        ns_run(table, "/usr/sbin/conntrackd", "-C", conf, "-k", check=False)
        opts.write_text(saved)


def test_conntrackd_down_then_up(minion, table, daemon, tmp_path):
    down = minion.call("conntrack.sync_status")
    assert down["running"] is False and "is not running (its socket" in down["reason"]
    ns_run(table, "/usr/sbin/conntrackd", "-C", daemon, "-d")
    # conntrackd dumps the kernel table into its internal cache at start
    deadline = time.monotonic() + 20
    while True:
        status = minion.call("conntrack.sync_status")
        if status.get("running") and status["internal"] and status["internal"] >= BULK:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["mode"] == "ftfw" and status["inject"] is False and status["external"] == 0
    assert status["traffic"]["device"] == "ctsync0"
    for fun in ("conntrack.request_resync", "conntrack.bulk_send", "conntrack.resync",
                "conntrack.commit", "conntrack.flush_caches"):
        assert minion.call(fun)["result"] is True, fun
    assert minion.call("conntrack.caches")["internal"]["active"] == 0  # flushed


def test_sync_digest_of_the_table_matches_conntrackd_internal_cache(minion, table, daemon):
    """The table side (kernel entries after conntrackd's filter) and conntrackd's own cache hold the same keys."""
    ns_run(table, "/usr/sbin/conntrackd", "-C", daemon, "-d")
    deadline = time.monotonic() + 20
    while (minion.call("conntrack.sync_status").get("internal") or 0) < BULK:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    table_digest = minion.call("conntrack.sync_digest", "side=table", "buckets=64")
    internal = minion.call("conntrack.sync_digest", "side=internal", "buckets=64")
    # the filter accepts TCP and UDP: the ICMP entry is neither replicated nor counted
    assert table_digest["total"] == len(HAND_MADE) - 1 + BULK
    assert table_digest["digest"] == internal["digest"] and internal["total"] == table_digest["total"]
    # the keys of two buckets, from both sides: the same, and in conntrackd's form
    some = ",".join(sorted(table_digest["digest"], key=int)[:2])
    keys = minion.call("conntrack.sync_keys", "side=table", f"indexes={some}", "buckets=64")["keys"]
    cached = minion.call("conntrack.sync_keys", "side=internal", f"indexes={some}", "buckets=64")["keys"]
    assert keys and sorted(keys) == sorted(cached)
    assert all(re.fullmatch(r"(6|17) \S+ \S+ \d+ \d+", k) for k in keys), keys
    # emptied caches: every bucket differs
    minion.call("conntrack.flush_caches")
    emptied = minion.call("conntrack.sync_digest", "side=internal", "buckets=64")
    assert emptied["total"] == 0 and emptied["digest"] == {}
