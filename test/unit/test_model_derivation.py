"""What each node of pillar.example gets from the model."""

import json

import hafw_model
import pytest


@pytest.fixture(scope="module")
def nodes(example_pillar):
    ids = ("fw-cent7i", "fw-cent7j", "lb-cent7g", "lb-cent7h", "fw-cent7m")
    return {i: hafw_model.node(example_pillar, i) for i in ids}


def test_components_follow_the_role(nodes):
    pair = ["kernel", "selinux", "iptables", "conntrackd", "keepalived"]
    assert nodes["fw-cent7i"]["components"] == pair
    assert nodes["fw-cent7m"]["components"] == ["kernel", "iptables"]
    assert nodes["lb-cent7g"]["components"] == ["kernel", "selinux", "keepalived"]


def test_minion_in_no_cluster_gets_nothing(example_pillar):
    out = hafw_model.node(example_pillar, "mail-cent7a")
    assert out == {"id": "mail-cent7a", "cluster": None, "role": None, "components": []}


def test_conntrackd_addresses_are_swapped_between_the_pair(nodes):
    i, j = nodes["fw-cent7i"]["conntrackd"], nodes["fw-cent7j"]["conntrackd"]
    assert (i["own_address"], i["peer_address"]) == ("192.168.3.41", "192.168.3.42")
    assert (j["own_address"], j["peer_address"]) == ("192.168.3.42", "192.168.3.41")
    # the seed's files differ only in those and in the ignore list
    same = {k: v for k, v in i.items() if k not in ("own_address", "peer_address", "ignore")}
    assert same == {k: v for k, v in j.items() if k not in ("own_address", "peer_address", "ignore")}


def test_ignore_list_is_loopback_own_addresses_and_vips(nodes):
    seed_i = ["127.0.0.1", "192.168.0.41", "192.168.1.41", "192.168.3.41"]
    vips = ["192.168.0.40", "192.168.0.60", "192.168.0.88", "192.168.1.40"]
    assert nodes["fw-cent7i"]["conntrackd"]["ignore"] == seed_i + vips


def test_hash_limit_defaults_to_twice_the_table(pillar):
    del pillar["clusters"]["fw-pair"]["conntrackd"]["hash_limit"]
    pillar["clusters"]["fw-pair"]["kernel"]["nf_conntrack_max"] = 100000
    assert hafw_model.node(pillar, "fw-cent7i")["conntrackd"]["hash_limit"] == 200000


def test_priorities_and_states(nodes):
    i, j = nodes["fw-cent7i"]["vrrp"], nodes["fw-cent7j"]["vrrp"]
    assert (i["state"], i["priority"]) == ("MASTER", 80)
    assert (j["state"], j["priority"]) == ("BACKUP", 70)
    for lb in ("lb-cent7g", "lb-cent7h"):
        inst = nodes[lb]["vrrp"]["instances"]
        assert {(x["state"], x["priority"], x["preempt"]) for x in inst} == {("BACKUP", 100, False)}


def test_node_state_and_priority_override(pillar):
    pillar["clusters"]["fw-pair"]["nodes"]["fw-cent7j"].update(priority=90, state="MASTER")
    out = hafw_model.node(pillar, "fw-cent7j")["vrrp"]
    assert (out["state"], out["priority"]) == ("MASTER", 90)


def test_vips_carry_broadcast_and_device(nodes):
    vi1 = nodes["fw-cent7i"]["vrrp"]["instances"][0]
    assert vi1["vips"][0] == {"address": "192.168.0.40", "prefixlen": 24, "brd": "192.168.0.255", "dev": "enp0s3"}


def test_garp_refresh_every_10_s_unless_turned_off(nodes, pillar):
    assert {i["garp_master_refresh"] for n in ("fw-cent7i", "lb-cent7h")
            for i in nodes[n]["vrrp"]["instances"]} == {10}
    pillar["clusters"]["fw-pair"]["vrrp"]["garp_master_refresh"] = 0
    assert [i["garp_master_refresh"] for i in hafw_model.node(pillar, "fw-cent7i")["vrrp"]["instances"]] == [0, 0]


def test_notify_hook_only_where_conntrackd_runs(nodes):
    assert nodes["fw-cent7i"]["vrrp"]["notify_hook"] is True
    assert nodes["lb-cent7g"]["vrrp"]["notify_hook"] is False


def test_unicast_peers(pillar):
    pillar["clusters"]["fw-pair"]["vrrp"]["unicast"] = True
    inst = hafw_model.node(pillar, "fw-cent7j")["vrrp"]["instances"]
    assert [(x["unicast_src_ip"], x["unicast_peers"]) for x in inst] == [
        ("192.168.0.42", ["192.168.0.41"]), ("192.168.1.42", ["192.168.1.41"])]
    rules = hafw_model.node(pillar, "fw-cent7j")["firewall"]["iptables"]
    # unicast adverts are addressed to the node, not to 224.0.0.18
    assert "-A INPUT -s 192.168.0.41/32 -i enp0s3 -p vrrp" in rules


def test_peer_only_openings(nodes):
    rules = nodes["fw-cent7i"]["firewall"]["iptables"].splitlines()
    assert ('-A INPUT -s 192.168.3.42/32 -i enp0s9 -p udp -m udp --dport 3780 '
            '-m comment --comment "hafw: conntrackd sync from peer" -j ACCEPT') in rules
    vrrp = [r for r in rules if "-p vrrp" in r and r.startswith("-A INPUT")]
    assert [r.split(" -m comment")[0] for r in vrrp] == [
        "-A INPUT -s 192.168.0.42/32 -d 224.0.0.18/32 -i enp0s3 -p vrrp",
        "-A INPUT -s 192.168.1.42/32 -d 224.0.0.18/32 -i enp0s8 -p vrrp",
    ]
    # a standalone firewall opens nothing for peers
    assert "INPUT -s" not in nodes["fw-cent7m"]["firewall"]["iptables"]


def test_sysctls_and_modules(nodes):
    assert nodes["fw-cent7i"]["kernel"]["sysctl"] == {
        "net.ipv4.ip_forward": 1, "net.netfilter.nf_conntrack_max": 65536,
        "net.netfilter.nf_conntrack_tcp_loose": 0}
    assert nodes["fw-cent7m"]["kernel"]["sysctl"] == {
        "net.ipv4.ip_forward": 1, "net.netfilter.nf_conntrack_max": 65536}
    # the load balancers re-send every active connection to the backup every
    # 10 s (the formula's default lvs:sync_daemon:refresh_period)
    for lb in ("lb-cent7g", "lb-cent7h"):
        assert nodes[lb]["kernel"]["sysctl"] == {
            "net.ipv4.ip_forward": 1, "net.ipv4.vs.sync_threshold": "0 1", "net.ipv4.vs.sync_refresh_period": 10}
    assert nodes["lb-cent7g"]["kernel"]["modules"] == ["ip_vs", "ip_vs_lc"]
    # no IPVS sysctl on a firewall
    for fw in ("fw-cent7i", "fw-cent7j", "fw-cent7m"):
        assert not [k for k in nodes[fw]["kernel"]["sysctl"] if k.startswith("net.ipv4.vs.")]


def test_selinux_needs(nodes):
    assert nodes["fw-cent7i"]["selinux"] == {"module": True, "booleans": {}, "scripts": ["hook"]}
    # pillar.example's LB pair is nopreempt: no hold check for keepalived to run (test_lvs_view)
    assert nodes["lb-cent7g"]["selinux"] == {"module": False, "booleans": {"domain_kernel_load_modules": True},
                                             "scripts": []}
    assert nodes["fw-cent7m"]["selinux"]["scripts"] == []


def test_lvs_view(nodes):
    lvs = nodes["lb-cent7h"]["lvs"]
    # the seed's pair is nopreempt: the time-based re-sync, and no hold (it only delays a takeover there)
    assert lvs["sync_daemon"] == {"interface": "enp0s8", "instance": "instance52", "id": None,
                                  "refresh_period": 10, "resync_hold": False}
    assert lvs["ipvs_hold"] is None
    assert lvs["groups"] == {"SMTP": [{"address": "192.168.1.60", "port": 25}]}
    reals = lvs["virtual_servers"][0]["real_servers"]
    assert [(r["address"], r["port"], r["check"]["type"]) for r in reals] == [
        ("192.168.2.61", 25, "SMTP_CHECK"), ("192.168.2.62", 25, "SMTP_CHECK")]


def sync_daemon(pillar):
    return pillar["clusters"]["lb-pair"]["lvs"]["sync_daemon"]


def test_a_preempting_pair_gets_the_hold(pillar):
    pillar["clusters"]["lb-pair"]["vrrp"]["preempt"] = True
    lvs = hafw_model.node(pillar, "lb-cent7h")["lvs"]
    assert lvs["sync_daemon"]["resync_hold"] is True
    # keepalived's hold check: the period plus the sync thread's 2 s flush, and the pair's VIPs
    assert lvs["ipvs_hold"] == {"hold_s": 12, "vips": ["192.168.1.50", "192.168.1.60", "192.168.2.50"]}
    assert hafw_model.node(pillar, "lb-cent7g")["selinux"]["scripts"] == ["ipvs-hold"]


def test_refresh_period_sets_the_sysctl_and_the_hold(pillar):
    sync_daemon(pillar)["refresh_period"] = 30
    sync_daemon(pillar)["resync_hold"] = True
    node = hafw_model.node(pillar, "lb-cent7h")
    assert node["kernel"]["sysctl"]["net.ipv4.vs.sync_refresh_period"] == 30
    assert node["kernel"]["sysctl"]["net.ipv4.vs.sync_threshold"] == "0 1"
    assert node["lvs"]["ipvs_hold"]["hold_s"] == 32


def test_refresh_period_0_is_the_seed_behaviour(pillar):
    """The kernel's packet-count rule: no sysctl, no hold, nothing in keepalived."""
    sync_daemon(pillar)["refresh_period"] = 0
    node = hafw_model.node(pillar, "lb-cent7g")
    assert node["kernel"]["sysctl"] == {"net.ipv4.ip_forward": 1}
    assert node["lvs"]["sync_daemon"]["resync_hold"] is False
    assert node["lvs"]["ipvs_hold"] is None


def test_resync_hold_can_be_turned_off(pillar):
    sync_daemon(pillar)["resync_hold"] = False
    node = hafw_model.node(pillar, "lb-cent7g")
    assert node["lvs"]["ipvs_hold"] is None
    assert node["selinux"]["scripts"] == []
    assert node["kernel"]["sysctl"]["net.ipv4.vs.sync_refresh_period"] == 10  # the re-sync stays


def test_kernel_sysctl_overrides_the_ipvs_sysctls(pillar):
    pillar["clusters"]["lb-pair"]["kernel"] = {"sysctl": {"net.ipv4.vs.sync_threshold": "3 50"}}
    sysctl = hafw_model.node(pillar, "lb-cent7g")["kernel"]["sysctl"]
    assert sysctl["net.ipv4.vs.sync_threshold"] == "3 50"


def test_no_sync_daemon_no_ipvs_sysctl(pillar):
    del pillar["clusters"]["lb-pair"]["lvs"]["sync_daemon"]
    node = hafw_model.node(pillar, "lb-cent7g")
    assert node["kernel"]["sysctl"] == {"net.ipv4.ip_forward": 1}
    assert node["lvs"]["ipvs_hold"] is None


def test_override_applies_to_one_node_only(pillar):
    pillar["clusters"]["fw-pair"]["nodes"]["fw-cent7j"]["override"] = {"conntrackd": {"nice": 0}}
    assert hafw_model.node(pillar, "fw-cent7j")["conntrackd"]["nice"] == 0
    assert hafw_model.node(pillar, "fw-cent7i")["conntrackd"]["nice"] == -20


def test_sync_group_is_named_when_the_pillar_does_not(pillar):
    del pillar["clusters"]["fw-pair"]["vrrp"]["sync_group"]
    assert hafw_model.node(pillar, "fw-cent7i")["vrrp"]["sync_group"] == "VG_FW_PAIR"


def test_output_is_plain_data(nodes):
    """Salt ships the result over msgpack/json: no ipaddress objects may leak."""
    for out in nodes.values():
        assert json.loads(json.dumps(out)) == out


def test_takeover_gate_on_pairs_with_conntrackd(nodes):
    """The gate chain exists; its jump is the hook's (never in the file)."""
    fw = nodes["fw-cent7i"]["firewall"]
    assert fw["gate"] and fw["gate_chain"] == "HAFW_GATE"
    assert nodes["fw-cent7i"]["conntrackd"]["gate_chain"] == "HAFW_GATE"
    mangle = fw["iptables"].split("*mangle\n")[1].split("COMMIT")[0].splitlines()
    assert ":HAFW_GATE - [0:0]" in mangle
    assert "-A PREROUTING -j HAFW_GATE" not in fw["iptables"]
    drops = [r for r in mangle if r.endswith("-j DROP")]
    assert [r.split(" -m conntrack")[0] for r in drops] == ["-A HAFW_GATE -i enp0s3", "-A HAFW_GATE -i enp0s8"]
    assert "-A HAFW_GATE -d 192.168.0.41/32 -i enp0s3" in fw["iptables"]  # own address, not gated
    assert "enp0s9" not in "\n".join(mangle)  # the sync link is never gated
    assert not nodes["fw-cent7m"]["firewall"]["gate"] and "*mangle" not in nodes["fw-cent7m"]["firewall"]["iptables"]


def test_takeover_gate_can_be_turned_off(pillar):
    pillar["clusters"]["fw-pair"]["conntrackd"]["takeover_gate"] = False
    node = hafw_model.node(pillar, "fw-cent7i")
    assert node["conntrackd"]["gate_chain"] == "" and "*mangle" not in node["firewall"]["iptables"]


def test_nftables_backend_gate(pillar):
    """The same gate in table ip hafw: a regular chain, and an empty base chain
    at priority mangle where the hook adds the jump (docs/takeover.md)."""
    pillar["clusters"]["fw-pair"]["firewall"]["backend"] = "nftables"
    node = hafw_model.node(pillar, "fw-cent7i")
    ctd, fw = node["conntrackd"], node["firewall"]
    assert (ctd["gate_chain"], ctd["gate_table"], ctd["gate_backend"]) == ("gate", "ip hafw", "nftables")
    assert fw["gate_jump"] == "jump gate"
    script = fw["nftables"]
    gate = script.split("\tchain gate {\n")[1].split("\t}")[0].splitlines()
    assert [r.strip().split(" comment")[0] for r in gate if " drop" in r] == [
        'iifname "enp0s3" ct state invalid,new drop', 'iifname "enp0s8" ct state invalid,new drop']
    assert '\t\tiifname "enp0s3" ip daddr 192.168.0.41 return comment "hafw: own address"' in gate
    hook = script.split("\tchain gate_hook {\n")[1].split("\t}")[0].strip()
    assert hook == "type filter hook prerouting priority mangle; policy accept;"


def test_seed_pair_gate_is_iptables(pillar):
    ctd = hafw_model.node(pillar, "fw-cent7i")["conntrackd"]
    assert (ctd["gate_table"], ctd["gate_backend"]) == ("mangle", "iptables")


def test_hook_timeout_follows_the_table(pillar):
    assert hafw_model.node(pillar, "fw-cent7i")["conntrackd"]["hook_timeout_s"] == 10
    pillar["clusters"]["fw-pair"]["kernel"]["nf_conntrack_max"] = 1048576
    pillar["clusters"]["fw-pair"]["conntrackd"]["hash_limit"] = 2097152
    assert hafw_model.node(pillar, "fw-cent7i")["conntrackd"]["hook_timeout_s"] == 32
