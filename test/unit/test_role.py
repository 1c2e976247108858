"""Unit tests of the role judgement (_utils/hafw_role.py) and conntrack.role with loader mocks."""

import importlib.util
import pathlib
from unittest.mock import patch

import hafw_model
import hafw_role
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("conntrack_role", REPO / "_modules" / "conntrack.py")
conntrack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conntrack)

IP_MASTER = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: enp0s3@if26    inet 192.168.0.41/24 brd 192.168.0.255 scope global enp0s3\\       valid_lft forever
2: enp0s3@if26    inet 192.168.0.40/24 brd 192.168.0.255 scope global secondary enp0s3\\       valid_lft forever
2: enp0s3@if26    inet 192.168.0.60/24 brd 192.168.0.255 scope global secondary enp0s3\\       valid_lft forever
2: enp0s3@if26    inet 192.168.0.88/24 brd 192.168.0.255 scope global secondary enp0s3\\       valid_lft forever
3: enp0s8@if27    inet 192.168.1.41/24 brd 192.168.1.255 scope global enp0s8\\       valid_lft forever
3: enp0s8@if27    inet 192.168.1.40/24 brd 192.168.1.255 scope global secondary enp0s8\\       valid_lft forever
"""
IP_BACKUP = "\n".join(line for line in IP_MASTER.splitlines() if "secondary" not in line) + "\n"
IP_SPLIT = "\n".join(line for line in IP_MASTER.splitlines() if "192.168.1.40" not in line) + "\n"


@pytest.fixture
def node(example_pillar):
    return hafw_model.node(example_pillar, "fw-cent7i")


def roles(node, ip_text):
    return hafw_role.instance_roles(node["vrrp"]["instances"], hafw_role.parse_ip_addr(ip_text))


def test_instances_from_the_vips_held(node):
    assert {n: i["role"] for n, i in roles(node, IP_MASTER).items()} == {"VI_1": "MASTER", "VI_2": "MASTER"}
    assert {n: i["role"] for n, i in roles(node, IP_BACKUP).items()} == {"VI_1": "BACKUP", "VI_2": "BACKUP"}
    split = roles(node, IP_SPLIT)
    assert split["VI_2"]["role"] == "BACKUP" and split["VI_1"]["held"] == ["192.168.0.40", "192.168.0.60",
                                                                              "192.168.0.88"]


@pytest.mark.parametrize("ip_text,hook,gate,ctd,ka,group,problem", [
    (IP_MASTER, "primary", False, True, True, "MASTER", None),
    (IP_BACKUP, "backup", True, True, True, "BACKUP", None),
    (IP_MASTER, "backup", False, True, True, "MASTER", "hook's last transition was 'backup'"),
    (IP_MASTER, "primary", True, True, True, "MASTER", "gate closed: new connections are dropped"),
    (IP_BACKUP, "backup", False, True, True, "BACKUP", "gate is open on a backup"),
    (IP_BACKUP, "primary", True, True, True, "BACKUP", "a missed backup notify"),
    (IP_SPLIT, "primary", False, True, True, "SPLIT", "the VIPs are split: VI_1 MASTER (3/3), VI_2 BACKUP (0/1)"),
    (IP_BACKUP, "backup", True, False, True, "BACKUP", "conntrackd is not running"),
    (IP_MASTER, "primary", False, True, False, "MASTER", "keepalived is not running: this node holds VIPs"),
])
def test_judge(node, ip_text, hook, gate, ctd, ka, group, problem):
    out = hafw_role.judge(roles(node, ip_text), hook, gate, ctd, ka)
    assert out["group"] == group
    if problem is None:
        assert out["consistent"] and out["problems"] == []
    else:
        assert not out["consistent"] and any(problem in p for p in out["problems"]), out["problems"]


def test_role_gathers_the_facts(node, tmp_path):
    state = tmp_path / "hafw-role"
    state.write_text("primary 1795697590355\n")
    calls = []

    def run_all(cmd, python_shell=True, ignore_retcode=False):
        assert python_shell is False
        calls.append(cmd)
        if cmd[:2] == ["ip", "-o"]:
            return {"retcode": 0, "stdout": IP_MASTER, "stderr": ""}
        if cmd[0] == "iptables":  # -C: the jump is not there, the gate is open
            return {"retcode": 1, "stdout": "", "stderr": ""}
        return {"retcode": 0, "stdout": "", "stderr": ""}  # pidof keepalived

    dunders = {"__salt__": {"hafw.node": lambda: node, "cmd.run_all": run_all},
               "__opts__": {"conntrack.hook_state_file": str(state)}}
    with patch.multiple(conntrack, create=True, **dunders), \
            patch.object(conntrack, "sync_status", lambda config=None: {"running": True}):
        out = conntrack.role()
    assert out["group"] == "MASTER" and out["consistent"] and out["gate"] == "open" and out["hook"] == "primary"
    assert ["iptables", "-w", "5", "-t", "mangle", "-C", "PREROUTING", "-j", "HAFW_GATE"] in calls
    assert out["sync_group"] == "G1"
