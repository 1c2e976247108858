"""
The reactor SLS files rendered by Salt's own reactor (salt.utils.reactor),
with master opts that carry the documented snippet
(reactor/master.d/hafw-reactor.conf): which events lead to which
reactions, and which are refused. The live reaction (a real master, beacon
and minions) is the lab's test of issue 5.
"""

import pathlib

import pytest
import salt.config
import salt.utils.reactor
import yaml

from lab.salt import formula_root

REPO = pathlib.Path(__file__).resolve().parents[2]
SNIPPET = REPO / "reactor" / "master.d" / "hafw-reactor.conf"


@pytest.fixture(scope="module")
def reactor(tmp_path_factory):
    root = tmp_path_factory.mktemp("master")
    conf = yaml.safe_load(SNIPPET.read_text())
    conf.update({"root_dir": str(root), "file_roots": {"base": [str(formula_root())]}})
    (root / "master").write_text(yaml.safe_dump(conf))
    return salt.utils.reactor.Reactor(salt.config.master_config(str(root / "master")))


def react(reactor, tag, **data):
    """The reactions the snippet's reactor list gives for (tag, data), by state id."""
    out = {}
    for sls in reactor.list_reactors(tag):
        path = REPO / sls.replace("salt://", "")
        out.update(reactor.render_reaction(str(path), tag, data))
    return out


def event(node="fw-cent7j", name="G1", state="MASTER", kind="GROUP", **extra):
    data = {"id": node, "kind": kind, "name": name, "state": state, "previous": "BACKUP", "source": "fifo",
            "at": 1795700000.5, "sync_group": "G1", "sync_status": {"running": True, "external": 12}, **extra}
    return f"salt/beacon/{node}/keepalived/{name}/{state}", data


def test_a_new_master_gets_the_consistency_state_its_peer_a_resync_and_a_log_line(reactor):
    tag, data = event()
    out = react(reactor, tag, **data)
    assert sorted(out) == ["hafw-consistent-on-fw-cent7j", "hafw-record-fw-cent7j-master",
                           "hafw-resync-on-fw-cent7i"]
    local = out["hafw-consistent-on-fw-cent7j"]["local"]
    assert local[-1] == "state.single" and {"tgt": "fw-cent7j"} in local
    assert {"args": [{"fun": "vrrp_sync.consistent"}, {"name": "G1"}, {"settle": 1}, {"queue": True}]} in local
    assert out["hafw-resync-on-fw-cent7i"]["local"] == [{"tgt": "fw-cent7i"}, "conntrack.request_resync"]
    record = out["hafw-record-fw-cent7j-master"]["runner"]
    assert record[-1] == "hafw.record"
    assert record[0]["args"] == [{"node": "fw-cent7j"}, {"state": "MASTER"}, {"name": "G1"}, {"kind": "GROUP"},
                                 {"previous": "BACKUP"}, {"source": "fifo"}, {"at": 1795700000.5}]


@pytest.mark.parametrize("why,tag_node,data_changes", [
    ("a node outside the pairs", "fw-cent7x", {"id": "fw-cent7x"}),
    ("the tag names another minion than the sender", "fw-cent7i", {}),
    ("an instance of a node that has a sync group (the group's event reacts)", "fw-cent7j",
     {"kind": "INSTANCE", "name": "VI_1"}),
])
def test_events_it_must_not_act_on(reactor, why, tag_node, data_changes):
    tag, data = event()
    data.update(data_changes)
    tag = f"salt/beacon/{tag_node}/keepalived/{data['name']}/MASTER"
    assert react(reactor, tag, **data) == {}, why


def test_an_instance_without_a_group_reacts(reactor):
    tag, data = event(name="VI_1", kind="INSTANCE", sync_group=None)
    assert "hafw-consistent-on-fw-cent7j" in react(reactor, tag, **data)


def test_a_fault_raises_an_alert_with_the_sync_status(reactor):
    tag, data = event(node="fw-cent7i", state="FAULT")
    out = react(reactor, tag, **data)
    assert sorted(out) == ["hafw-alert-fw-cent7i-fault", "hafw-record-fw-cent7i-fault"]
    args = out["hafw-alert-fw-cent7i-fault"]["runner"][0]["args"]
    assert {"tag": "hafw/alert/fw-cent7i/fault"} in args
    sent = next(a["data"] for a in args if "data" in a)
    assert sent["sync_status"] == {"running": True, "external": 12} and sent["peer"] == "fw-cent7j"


def test_backup_events_have_no_reaction(reactor):
    tag, data = event(state="BACKUP")
    assert reactor.list_reactors(tag) == []


def test_the_runner_records_and_lists_transitions(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("hafw_runner", REPO / "_runners" / "hafw.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    runner.__opts__ = {"hafw_reactor": {"log": str(tmp_path / "sub" / "transitions.log")}}
    runner.record("fw-cent7j", "MASTER", name="G1", kind="GROUP", previous="BACKUP", source="fifo", at=1.0)
    runner.record("fw-cent7i", "FAULT", name="G1", kind="GROUP")
    assert [t["node"] for t in runner.transitions()] == ["fw-cent7j", "fw-cent7i"]
    assert runner.transitions(node="fw-cent7j")[0]["previous"] == "BACKUP"
    assert runner.transitions(last=1)[0]["state"] == "FAULT"
