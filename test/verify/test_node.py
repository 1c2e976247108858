"""A converged hafw node: kernel settings, ruleset, daemons, their files."""

import json

import pytest


def test_forwarding_is_on(host, node):
    assert host.sysctl("net.ipv4.ip_forward") == 1


def test_routes_are_installed(host, node):
    table = host.check_output("ip -4 route show")
    for route in node["routes"]:
        assert f"{route['to']} via {route['via']}" in table


@pytest.mark.component("iptables")
def test_ruleset_is_live(host, node):
    saved = host.check_output("iptables-save")
    for chain, spec in node["firewall"]["chains"].items():
        assert f":{chain.upper()} {spec['policy'].upper()}" in saved
    for line in node["firewall"]["iptables"].splitlines():
        if line.startswith("-A "):
            assert line in saved, f"missing live rule: {line}"


@pytest.mark.component("iptables")
def test_ruleset_persists(host, node):
    persisted = [f for f in ("/etc/iptables/rules.v4", "/etc/sysconfig/iptables") if host.file(f).exists]
    assert persisted, "no persistent ruleset file"
    assert host.file(persisted[0]).content_string == node["firewall"]["iptables"]


@pytest.mark.component("conntrackd")
def test_conntrackd_runs_and_answers(host, node):
    assert host.process.filter(comm="conntrackd"), "conntrackd is not running"
    conf = host.file("/etc/conntrackd/conntrackd.conf")
    assert conf.user == "root"
    assert f"IPv4_address {node['conntrackd']['own_address']}" in conf.content_string
    assert f"IPv4_Destination_Address {node['conntrackd']['peer_address']}" in conf.content_string
    # the daemon answers on its control socket
    host.check_output("conntrackd -C /etc/conntrackd/conntrackd.conf -s")


@pytest.mark.component("conntrackd")
def test_transition_hook_is_safe_for_keepalived(host, node):
    hook = host.file("/etc/conntrackd/primary-backup.sh")
    # keepalived's enable_script_security refuses scripts others could modify
    assert hook.user == "root" and hook.mode & 0o022 == 0 and hook.mode & 0o100


@pytest.mark.component("keepalived")
def test_keepalived_runs_with_a_valid_config(host, node):
    assert host.process.filter(comm="keepalived"), "keepalived is not running"
    conf = host.file("/etc/keepalived/keepalived.conf")
    assert conf.user == "root" and conf.mode == 0o640
    host.check_output("keepalived -t -f /etc/keepalived/keepalived.conf")
    for inst in node["vrrp"]["instances"]:
        assert f"vrrp_instance {inst['name']} {{" in conf.content_string


@pytest.mark.component("keepalived")
def test_vips_are_on_the_master_only(host, node):
    """Either every VIP of the sync group is here (master) or none is (backup)."""
    addrs = host.check_output("ip -o -4 addr show")
    present = [v["address"] for i in node["vrrp"]["instances"] for v in i["vips"]
               if f" {v['address']}/{v['prefixlen']} " in addrs]
    every = [v["address"] for i in node["vrrp"]["instances"] for v in i["vips"]]
    if node["vrrp"]["sync_group"]:
        assert present in ([], every), f"split sync group: only {present} of {every}"


@pytest.mark.component("keepalived")
def test_maintenance_files_are_declared_and_no_step_down_is_left(host, node):
    """The vrrp_sync states' files are tracked by keepalived; at rest no node is held in FAULT by them."""
    if not node["vrrp"].get("maintenance"):
        pytest.skip("vrrp:maintenance is off")
    conf = host.file("/etc/keepalived/keepalived.conf").content_string
    for name in ("hafw_demote", "hafw_demote_persistent", "hafw_step_down"):
        assert f"track_file {name} {{" in conf
    state = json.loads(host.check_output("salt-call --local --out json vrrp_sync.maintenance"))["local"]
    assert state["stepping_down"] is False, state


@pytest.mark.parametrize("key", ["net.ipv4.ip_forward"])
def test_sysctl_persisted(host, node, key):
    assert f"{key} = {node['kernel']['sysctl'][key]}" in host.file("/etc/sysctl.d/60-hafw.conf").content_string
