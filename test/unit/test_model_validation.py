"""
Bad pillars: each case breaks pillar.example in one way and checks that
validation names the pillar key and says what is wrong.
"""

import hafw_model
import pytest
from hafw_check import ModelError

FW = ("clusters", "fw-pair")
LB = ("clusters", "lb-pair")
CM = ("clusters", "fw-client")


def at(tree, *path):
    for key in path:
        tree = tree[key]
    return tree


def vi(p, name="VI_1"):
    return at(p, *FW, "vrrp", "instances", name)


def lbvs(p):
    return at(p, *LB, "lvs", "virtual_servers", 0)


# (id, mutation, expected pillar key, expected words in the message)
CASES = [
    ("seed SLAVE state", lambda p: at(p, *FW, "nodes", "fw-cent7i").update(state="SLAVE"),
     "hafw:clusters:fw-pair:nodes:fw-cent7i:state", "'SLAVE' is not a valid VRRP state"),
    ("vrid 0", lambda p: vi(p).update(virtual_router_id=0),
     "hafw:clusters:fw-pair:vrrp:instances:VI_1:virtual_router_id", "outside 1-255"),
    ("vrid 256", lambda p: vi(p).update(virtual_router_id=256),
     "hafw:clusters:fw-pair:vrrp:instances:VI_1:virtual_router_id", "outside 1-255"),
    ("vrid duplicated on a link", lambda p: vi(p, "VI_2").update(interface="enp0s3", virtual_router_id=61,
                                                                  vips=["192.168.0.99/24"]),
     "hafw:clusters:fw-pair:vrrp:instances:VI_2:virtual_router_id", "already used on enp0s3"),
    ("vrid shared by two clusters on one subnet",
     lambda p: at(p, *LB, "vrrp", "instances", "instance51").update(virtual_router_id=62),
     "hafw:clusters:lb-pair:vrrp:instances:instance51:virtual_router_id", "cluster fw-pair"),
    ("priority 255", lambda p: at(p, *FW, "vrrp").update(priority=255),
     "hafw:clusters:fw-pair:vrrp:priority", "outside 1-254"),
    ("node priority 0", lambda p: at(p, *FW, "nodes", "fw-cent7j").update(priority=0),
     "hafw:clusters:fw-pair:nodes:fw-cent7j:priority", "outside 1-254"),
    ("derived priority below 1", lambda p: at(p, *FW, "vrrp").update(priority=5, priority_step=10),
     "hafw:clusters:fw-pair:nodes:fw-cent7j:priority", "derived priority -5"),
    ("VIP outside the interface's subnet", lambda p: vi(p)["vips"].append("10.0.0.40/24"),
     "hafw:clusters:fw-pair:vrrp:instances:VI_1:vips:3", "outside every subnet of fw-cent7i's enp0s3"),
    ("VIP is a node address", lambda p: vi(p)["vips"].append("192.168.0.41/24"),
     "hafw:clusters:fw-pair:vrrp:instances:VI_1:vips:3", "fw-cent7i's own address"),
    ("VIP without its prefix", lambda p: vi(p)["vips"].append("192.168.0.99"),
     "hafw:clusters:fw-pair:vrrp:instances:VI_1:vips:3", "with its subnet's prefix"),
    ("tracked interface unknown", lambda p: vi(p).update(track_interfaces=["enp0s10"]),
     "hafw:clusters:fw-pair:vrrp:instances:VI_1:track_interfaces:0", "not an interface of fw-cent7i, fw-cent7j"),
    ("VIP twice", lambda p: vi(p, "VI_2")["vips"].append("192.168.1.40/24"),
     "hafw:clusters:fw-pair:vrrp:instances:VI_2:vips:1", "already a VIP of instance VI_2"),
    ("node lacks a VRRP interface", lambda p: at(p, *FW, "nodes", "fw-cent7j", "interfaces").pop("enp0s8"),
     "hafw:clusters:fw-pair:nodes:fw-cent7j:interfaces:enp0s8", "is missing: VRRP instance VI_2"),
    ("node lacks the sync interface", lambda p: at(p, *FW, "nodes", "fw-cent7j", "interfaces").pop("enp0s9"),
     "hafw:clusters:fw-pair:nodes:fw-cent7j:interfaces:enp0s9", "conntrackd syncs over enp0s9"),
    ("pair with one node", lambda p: at(p, *FW, "nodes").pop("fw-cent7j"),
     "hafw:clusters:fw-pair:nodes", "needs at least two nodes, it has 1"),
    ("two nodes and no vrrp", lambda p: at(p, *LB).pop("vrrp"),
     "hafw:clusters:lb-pair:vrrp", "nothing moves a VIP"),
    ("sync link also carries VRRP", lambda p: at(p, *FW, "conntrackd").update(interface="enp0s8"),
     "hafw:clusters:fw-pair:conntrackd:interface", "also carries VRRP"),
    ("bad CIDR", lambda p: at(p, *FW, "nodes", "fw-cent7i", "interfaces").update(enp0s3="192.168.0.300/24"),
     "hafw:clusters:fw-pair:nodes:fw-cent7i:interfaces:enp0s3", "bad CIDR"),
    ("address without prefix", lambda p: at(p, *FW, "nodes", "fw-cent7i", "interfaces").update(enp0s3="192.168.0.41"),
     "hafw:clusters:fw-pair:nodes:fw-cent7i:interfaces:enp0s3", "with a prefix length"),
    ("nodes on different subnets",
     lambda p: at(p, *FW, "nodes", "fw-cent7j", "interfaces").update(enp0s9="192.168.4.42/24"),
     "hafw:clusters:fw-pair:nodes:fw-cent7j:interfaces:enp0s9", "share each link"),
    ("sync port 0", lambda p: at(p, *FW, "conntrackd").update(port=0),
     "hafw:clusters:fw-pair:conntrackd:port", "outside 1-65535"),
    ("rule port 70000", lambda p: at(p, *FW, "firewall", "forward", "rules", 0).update(dport=70000),
     "hafw:clusters:fw-pair:firewall:forward:rules:0:dport", "outside 1-65535"),
    ("port without tcp/udp", lambda p: at(p, *FW, "firewall", "forward", "rules", 2).update(dport=22),
     "hafw:clusters:fw-pair:firewall:forward:rules:2:dport", "ports need proto tcp or udp"),
    ("unknown NAT type", lambda p: at(p, *FW, "firewall", "nat", 0).update(type="xnat"),
     "hafw:clusters:fw-pair:firewall:nat:0:type", "'xnat' is not a valid NAT type"),
    ("DNAT target unreachable", lambda p: at(p, *FW, "firewall", "nat", 1).update(to="10.9.9.9"),
     "hafw:clusters:fw-pair:firewall:nat:1:to", "no route reaches it"),
    ("SNAT to a node address in a pair", lambda p: at(p, *FW, "firewall", "nat", 4).update(to="192.168.0.41"),
     "hafw:clusters:fw-pair:firewall:nat:4:to", "must be a VIP"),
    ("SNAT to a foreign address", lambda p: at(p, *CM, "firewall", "nat", 2).update(to="192.168.0.99"),
     "hafw:clusters:fw-client:firewall:nat:2:to", "neither a VIP nor an address"),
    ("rule on an unknown interface", lambda p: at(p, *FW, "firewall", "forward", "rules", 0).update({"in": "eth7"}),
     "hafw:clusters:fw-pair:firewall:forward:rules:0:in", "not an interface of any node"),
    ("real server outside the back network", lambda p: lbvs(p)["real_servers"][1].update(address="192.168.7.62"),
     "hafw:clusters:lb-pair:lvs:virtual_servers:0:real_servers:1:address", "outside the load balancers' networks"),
    ("virtual server group member not a VIP",
     lambda p: at(p, *LB, "lvs", "virtual_server_groups").update(SMTP=["192.168.1.70:25"]),
     "hafw:clusters:lb-pair:lvs:virtual_server_groups:SMTP:0", "not a VIP"),
    ("unknown lb_algo", lambda p: lbvs(p).update(lb_algo="fastest"),
     "hafw:clusters:lb-pair:lvs:virtual_servers:0:lb_algo", "'fastest' is not a valid lb_algo"),
    ("unknown health check", lambda p: lbvs(p)["real_servers"][0]["check"].update(type="PING_CHECK"),
     "hafw:clusters:lb-pair:lvs:virtual_servers:0:real_servers:0:check:type", "not a valid health check"),
    ("sync daemon on unknown instance", lambda p: at(p, *LB, "lvs", "sync_daemon").update(instance="instance99"),
     "hafw:clusters:lb-pair:lvs:sync_daemon:instance", "not a VRRP instance"),
    ("sync refresh period not a number", lambda p: at(p, *LB, "lvs", "sync_daemon").update(refresh_period="10s"),
     "hafw:clusters:lb-pair:lvs:sync_daemon:refresh_period", "must be an integer"),
    ("sync refresh period too long", lambda p: at(p, *LB, "lvs", "sync_daemon").update(refresh_period=600),
     "hafw:clusters:lb-pair:lvs:sync_daemon:refresh_period", "600 is outside 0-120"),
    ("sync refresh period negative", lambda p: at(p, *LB, "lvs", "sync_daemon").update(refresh_period=-1),
     "hafw:clusters:lb-pair:lvs:sync_daemon:refresh_period", "outside 0-120"),
    ("LB resync hold not a boolean", lambda p: at(p, *LB, "lvs", "sync_daemon").update(resync_hold="yes"),
     "hafw:clusters:lb-pair:lvs:sync_daemon:resync_hold", "must be true or false"),
    ("LB resync hold without refresh", lambda p: at(p, *LB, "lvs", "sync_daemon").update(
        refresh_period=0, resync_hold=True),
     "hafw:clusters:lb-pair:lvs:sync_daemon:resync_hold", "needs refresh_period above 0"),
    ("unknown sync daemon key", lambda p: at(p, *LB, "lvs", "sync_daemon").update(refresh=10),
     "hafw:clusters:lb-pair:lvs:sync_daemon:refresh", "unknown key"),
    ("HashLimit too small", lambda p: at(p, *FW, "conntrackd").update(hash_limit=65536),
     "hafw:clusters:fw-pair:conntrackd:hash_limit", "less than 2 x kernel:nf_conntrack_max"),
    ("unicast sync with three nodes", lambda p: at(p, *FW, "nodes").update({"fw-cent7k": {"interfaces": {
        "enp0s3": "192.168.0.43/24", "enp0s8": "192.168.1.43/24", "enp0s9": "192.168.3.43/24"}}}),
     "hafw:clusters:fw-pair:conntrackd:transport", "exactly two nodes"),
    ("multicast group not multicast",
     lambda p: at(p, *FW, "conntrackd").update(transport="multicast", multicast_group="10.0.0.1"),
     "hafw:clusters:fw-pair:conntrackd:multicast_group", "not a multicast address"),
    ("HashSize that breaks flushes", lambda p: at(p, *FW, "conntrackd").update(hash_size=8192),
     "hafw:clusters:fw-pair:conntrackd:hash_size", "ignores cache flushes"),
    ("sync link named in hex digits", lambda p: [at(p, *FW, "nodes", n, "interfaces").update(
        {"d0": at(p, *FW, "nodes", n, "interfaces").pop("enp0s9")}) for n in ("fw-cent7i", "fw-cent7j")]
     and at(p, *FW, "conntrackd").update(interface="d0"),
     "hafw:clusters:fw-pair:conntrackd:interface", "hex digits only"),
    ("track script weight in a sync group",
     lambda p: at(p, *FW, "vrrp").update(track_scripts={"chk": {"script": "/bin/true", "weight": -20}}),
     "hafw:clusters:fw-pair:vrrp:track_scripts:chk:weight", "ignored by keepalived in a sync group"),
    ("fractional garp delay", lambda p: at(p, *FW, "vrrp").update(garp_master_delay=1.5),
     "hafw:clusters:fw-pair:vrrp:garp_master_delay", "must be an integer"),
    ("negative garp refresh", lambda p: at(p, *FW, "vrrp").update(garp_master_refresh=-1),
     "hafw:clusters:fw-pair:vrrp:garp_master_refresh", "-1 is outside 0-3600"),
    ("external cache off in alarm mode",
     lambda p: at(p, *FW, "conntrackd").update(mode="alarm", disable_external_cache=True),
     "hafw:clusters:fw-pair:conntrackd:disable_external_cache", "not available in mode alarm"),
    ("inject refresh too often", lambda p: at(p, *FW, "conntrackd").update(inject_refresh_s=1),
     "hafw:clusters:fw-pair:conntrackd:inject_refresh_s", "1 is outside 5-3600"),
    ("unknown syslog facility", lambda p: at(p, *FW, "conntrackd").update(syslog="mail"),
     "hafw:clusters:fw-pair:conntrackd:syslog", "syslog facility"),
    ("UDP and Multicast mixed", lambda p: at(p, *FW, "conntrackd").update(
        options={"sync": {"Multicast": {"IPv4_address": "225.0.0.50"}}}),
     "hafw:clusters:fw-pair:conntrackd:options:sync:Multicast", "mixes transports"),
    ("unknown conntrackd mode", lambda p: at(p, *FW, "conntrackd").update(mode="fast"),
     "hafw:clusters:fw-pair:conntrackd:mode", "not a valid conntrackd sync mode"),
    ("unknown sync protocol", lambda p: at(p, *FW, "conntrackd")["protocols"].append("QUIC"),
     "hafw:clusters:fw-pair:conntrackd:protocols:3", "not a valid protocol"),
    ("sub-second advert with VRRPv2", lambda p: at(p, *FW, "vrrp").update(advert_int=0.5),
     "hafw:clusters:fw-pair:vrrp:advert_int", "version 2 only allows whole seconds"),
    ("MASTER with nopreempt", lambda p: at(p, *LB, "nodes", "lb-cent7g").update(state="MASTER"),
     "hafw:clusters:lb-pair:nodes:lb-cent7g:state", "nopreempt needs state BACKUP"),
    ("typo in a cluster key", lambda p: at(p, *FW).update(conntrack={}),
     "hafw:clusters:fw-pair:conntrack", "unknown key"),
    ("unknown role", lambda p: at(p, *CM).update(role="router"),
     "hafw:clusters:fw-client:role", "'router' is not a valid role"),
    ("minion in two clusters",
     lambda p: at(p, *CM, "nodes").update({"fw-cent7i": {"interfaces": {"enp0s3": "192.168.0.203/24"}}}),
     "hafw:clusters:fw-client:nodes:fw-cent7i", "already a node of cluster fw-pair"),
    ("interface name too long", lambda p: at(p, *CM, "nodes", "fw-cent7m", "interfaces").update(
        {"a-very-long-interface0": "10.1.0.1/24"}),
     "hafw:clusters:fw-client:nodes:fw-cent7m:interfaces:a-very-long-interface0", "not a valid interface name"),
    ("route gateway not on a link", lambda p: at(p, *FW, "routes", 0).update(via="10.0.0.1"),
     "hafw:clusters:fw-pair:routes:0:via", "in no subnet of fw-cent7i"),
    ("conntrackd on a standalone firewall", lambda p: at(p, *CM).update(conntrackd={"interface": "enp0s8"}),
     "hafw:clusters:fw-client:conntrackd", "only a firewall pair"),
    ("bad override", lambda p: at(p, *FW, "nodes", "fw-cent7j").update(override={"conntrackd": {"port": 99999}}),
     "hafw:clusters:fw-pair:nodes:fw-cent7j:override", "conntrackd:port: 99999 is outside 1-65535"),
]


@pytest.mark.parametrize("mutate,key,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_pillar_names_key_and_problem(pillar, mutate, key, words):
    mutate(pillar)
    with pytest.raises(ModelError) as err:
        hafw_model.validate(pillar)
    at_key = [msg for k, msg in err.value.problems if k == key]
    assert at_key, f"expected a problem at {key}, got: {err.value}"
    assert any(words in msg for msg in at_key), at_key
    # the message an operator sees carries both
    assert f"{key}: " in str(err.value)


def test_enough_bad_cases():
    assert len(CASES) >= 25


def test_every_problem_is_reported_at_once(pillar):
    vi(pillar).update(virtual_router_id=300)
    at(pillar, *FW, "conntrackd").update(port=0)
    at(pillar, *LB, "lvs", "virtual_servers", 0).update(lb_kind="ROUTE")
    with pytest.raises(ModelError) as err:
        hafw_model.validate(pillar)
    keys = {k for k, _ in err.value.problems}
    assert {"hafw:clusters:fw-pair:vrrp:instances:VI_1:virtual_router_id",
            "hafw:clusters:fw-pair:conntrackd:port",
            "hafw:clusters:lb-pair:lvs:virtual_servers:0:lb_kind"} <= keys


def test_a_bad_cluster_fails_every_node(pillar):
    """Validation is global: one bad cluster stops every node, not only its own."""
    at(pillar, *LB, "lvs", "virtual_servers", 0).update(lb_algo="fastest")
    with pytest.raises(ModelError):
        hafw_model.node(pillar, "fw-cent7m")


def test_empty_pillar():
    with pytest.raises(ModelError) as err:
        hafw_model.validate({})
    assert dict(err.value.problems)["hafw:clusters"] == "no cluster is defined"


def test_non_mapping_cluster(pillar):
    pillar["clusters"]["fw-pair"] = ["not", "a", "mapping"]
    with pytest.raises(ModelError) as err:
        hafw_model.validate(pillar)
    assert "must be a mapping, got list" in dict(err.value.problems)["hafw:clusters:fw-pair"]
