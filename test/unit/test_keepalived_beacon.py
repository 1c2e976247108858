"""Unit tests of _beacons/keepalived.py: a real FIFO held open the way keepalived holds it, the role mocked.

keepalived opens its notify FIFO read-write and non-blocking; the test does
the same (the writer here), so lines written between two beacon runs wait in
the pipe exactly as they do on a node. The live counterpart is the lab test
of issue 5 (a real keepalived, a real minion and master).
"""

import importlib.util
import os
import pathlib
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("keepalived_beacon", REPO / "_beacons" / "keepalived.py")
beacon = importlib.util.module_from_spec(spec)
spec.loader.exec_module(beacon)


def role(group="MASTER", held=True):
    vi = {"role": "MASTER" if held else "BACKUP", "held": ["192.168.0.40"] if held else []}
    return {"group": group, "sync_group": "G1", "instances": {"VI_1": vi}}


@pytest.fixture
def node(tmp_path):
    """A FIFO as keepalived holds it; the beacon's cachedir; a settable role."""
    fifo = tmp_path / "notify.fifo"
    os.mkfifo(fifo)
    holder = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    current = {"role": role(group="BACKUP", held=False)}
    beacon.__opts__ = {"cachedir": str(tmp_path / "cache"), "id": "fw-cent7j"}
    beacon.__salt__ = {"conntrack.vips": lambda: current["role"],
                       "conntrack.sync_status": lambda: {"running": True, "external": 42}}

    class Node:
        # reader: false: the FIFO is read by the runs (the reader thread has a test of its own)
        config = [{"fifo": str(fifo)}, {"reader": False}]

        def write(self, text):
            os.write(holder, text.encode())

        def set_role(self, r):
            current["role"] = r
    yield Node()
    os.close(holder)


def test_transitions_become_events_with_previous_state_vips_and_sync_status(node):
    node.write('GROUP "G1" BACKUP\nINSTANCE "VI_1" BACKUP 70\n')
    first = beacon.beacon(node.config)
    assert [(e["tag"], e["previous"], e["source"]) for e in first] == [
        ("G1/BACKUP", None, "fifo"), ("VI_1/BACKUP", None, "fifo")]
    node.set_role(role())
    node.write('INSTANCE "VI_1" MASTER 70\nGROUP "G1" MASTER\n')
    second = beacon.beacon(node.config)
    assert [(e["tag"], e["previous"], e["priority"]) for e in second] == [
        ("VI_1/MASTER", "BACKUP", 70), ("G1/MASTER", "BACKUP", None)]
    assert second[0]["vips"] == ["192.168.0.40"] and second[0]["sync_status"] == {"running": True, "external": 42}
    assert beacon.beacon(node.config) == []  # nothing new


def test_last_seen_state_survives_a_module_reload(node):
    node.write('GROUP "G1" BACKUP\n')
    beacon.beacon(node.config)
    reloaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reloaded)  # globals reset, as on a sync or pillar refresh
    reloaded.__opts__, reloaded.__salt__ = beacon.__opts__, beacon.__salt__
    node.write('GROUP "G1" BACKUP\n')  # said again (e.g. a reload): not a change
    assert reloaded.beacon(node.config) == []


def test_malformed_lines_are_skipped_and_a_partial_line_waits(node, caplog):
    fifo_only = [*node.config, {"vips": False}]
    node.write('garbage\nGROUP G1 MASTER\nGROUP "G1" BAC')
    assert beacon.beacon(fifo_only) == []
    assert "malformed line" in caplog.text
    node.write('KUP\n')
    assert [e["tag"] for e in beacon.beacon(fifo_only)] == ["G1/BACKUP"]


def test_a_silent_fifo_falls_back_to_the_vips_after_the_grace(node):
    config = [*node.config, {"vips_grace": 0.3}]
    node.write('GROUP "G1" BACKUP\nINSTANCE "VI_1" BACKUP 70\n')
    beacon.beacon(config)
    node.set_role(role())  # the VIPs arrived, the FIFO said nothing
    assert beacon.beacon(config) == []  # not yet: the FIFO line may be on its way
    time.sleep(0.35)
    events = beacon.beacon(config)
    assert [(e["tag"], e["source"], e["previous"]) for e in events] == [
        ("G1/MASTER", "vips", "BACKUP"), ("VI_1/MASTER", "vips", "BACKUP")]
    node.write('INSTANCE "VI_1" MASTER 70\nGROUP "G1" MASTER\n')  # the FIFO catches up: no duplicate
    assert beacon.beacon(config) == []


def test_a_fifo_line_within_the_grace_wins_over_the_vips(node):
    """keepalived adds the group's VIPs, then writes its line: a run in between must not report the VIPs."""
    node.write('GROUP "G1" BACKUP\nINSTANCE "VI_1" BACKUP 70\n')
    beacon.beacon(node.config)
    node.set_role(role())
    assert beacon.beacon(node.config) == []
    node.write('INSTANCE "VI_1" MASTER 70\nGROUP "G1" MASTER\n')
    assert [(e["tag"], e["source"]) for e in beacon.beacon(node.config)] == [
        ("VI_1/MASTER", "fifo"), ("G1/MASTER", "fifo")]
    assert beacon.beacon([*node.config, {"vips_grace": 0}]) == []


def test_fault_without_vips_is_not_contradicted_by_the_fallback(node):
    node.write('GROUP "G1" FAULT\nINSTANCE "VI_1" FAULT 70\n')
    assert len(beacon.beacon(node.config)) == 2
    assert beacon.beacon(node.config) == []


def test_no_fifo_means_no_events_and_no_error(node, tmp_path):
    assert beacon.beacon([{"fifo": str(tmp_path / "absent")}, {"vips": False}, {"reader": False}]) == []


@pytest.mark.parametrize("config,message", [
    ({"fifo": "/x"}, "must be a list"),
    ([{"fifo": "relative"}], "must be an absolute path"),
    ([{"vips": "yes"}], "vips: 'yes' must be true or false"),
    ([{"vips_grace": -1}], "vips_grace: -1 must be a number of seconds from 0 to 60"),
    ([{"fiffo": "/x"}], "unknown keys ['fiffo']"),
])
def test_validate_names_the_bad_key(config, message):
    ok, why = beacon.validate(config)
    assert ok is False and message in why


def test_validate_accepts_the_documented_config():
    assert beacon.validate([{"interval": 1}, {"fifo": "/run/keepalived/notify.fifo"}, {"vips": True},
                            {"sync_status": False}]) == (True, "valid")


def test_the_reader_thread_fires_a_transition_at_once(node):
    fired = []
    stop = threading.Event()
    cfg = beacon._config(node.config)
    reader = threading.Thread(target=beacon._reader,
                              args=(cfg, beacon.__opts__, lambda: beacon.__salt__, fired.extend, stop, 0.05))
    reader.start()
    try:
        node.set_role(role())
        written = time.monotonic()
        node.write('GROUP "G1" MASTER\n')
        while not fired and time.monotonic() - written < 2:
            time.sleep(0.005)
        latency = time.monotonic() - written
        assert [e["tag"] for e in fired] == ["G1/MASTER"] and fired[0]["source"] == "fifo"
        assert latency < 0.5, latency  # not the beacon's once-a-second run
        # the runs' fallback sees the same last state: no duplicate from the VIPs
        assert [e["tag"] for e in beacon.beacon(node.config) if e["name"] == "G1"] == []
    finally:
        stop.set()
        reader.join(2)
    assert not reader.is_alive()


def test_the_reader_follows_a_restarted_keepalived(node, tmp_path):
    """keepalived removes its FIFO at exit and makes a new one at start: the reader reopens it."""
    fifo = tmp_path / "notify.fifo"
    fired = []
    stop = threading.Event()
    cfg = beacon._config([{"fifo": str(fifo)}, {"vips": False}])
    reader = threading.Thread(target=beacon._reader,
                              args=(cfg, beacon.__opts__, lambda: beacon.__salt__, fired.extend, stop, 0.05))
    reader.start()
    try:
        node.write('GROUP "G1" BACKUP\n')
        deadline = time.monotonic() + 3
        while not fired and time.monotonic() < deadline:  # the reader has the first FIFO open
            time.sleep(0.01)
        fifo.unlink()  # keepalived exits (the fixture's writer end stays open on the old inode)
        time.sleep(0.2)
        os.mkfifo(fifo)
        writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # the new keepalived
        os.write(writer, b'GROUP "G1" MASTER\n')
        deadline = time.monotonic() + 3
        while len(fired) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.close(writer)
        assert [e["tag"] for e in fired] == ["G1/BACKUP", "G1/MASTER"]
    finally:
        stop.set()
        reader.join(2)
