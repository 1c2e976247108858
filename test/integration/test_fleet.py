"""
The reference deployment as a live Salt fleet (lab/topology.yaml, lab/fleet.py).

One fleet for the module: a salt-master in the `salt` lab host, a minion in
each formula host, the clients, servers and the load-balancer stand-in. The
tests run in order on it: converge through the master, idempotence, VRRP
roles, traffic through fw-cent7m's SNAT, the pair's DNAT and the stand-in's
DNAT, then a crash of the pair's master and its reboot.
"""

import pathlib
import subprocess
import time

import pytest

from lab import Lab
from lab.fleet import Fleet
from lab.saltmaster import VENV_BIN

FIREWALLS = {"fw-cent7i", "fw-cent7j", "fw-cent7m"}
TAKEOVER_LIMIT = 12.5  # advert_int 3: 3 missed adverts + skew (3 x (256-70)/256) = 11.2 s at most

pytestmark = pytest.mark.skipif(not (VENV_BIN / "salt-master").exists(), reason="run make setup first")

# A stand-in TCP service: greets with its name and the peer address it sees.
# Bounded: at most 20 connections, gone after 240 s.
SERVER = """
import socket, sys, time
name, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen()
s.settimeout(5)
end = time.monotonic() + 240
for _ in range(20):
    if time.monotonic() > end:
        break
    try:
        conn, peer = s.accept()
    except socket.timeout:
        continue
    conn.sendall(("220 %s you are %s\\r\\n" % (name, peer[0])).encode())
    conn.close()
"""
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    print(s.recv(200).decode().strip())
"""


def listen(host, port=25):
    """Start the stand-in service in a host, with its output under the host's /var/log."""
    host.exec(["sh", "-c", 'python3 -c "$1" "$2" "$3" </dev/null >>/var/log/tcp-stub.log 2>&1 &',
               "listen", SERVER, host.name, str(port)])
    for _ in range(50):
        if ":%d " % port in host.exec(["ss", "-Hltn"]).stdout:
            return
        time.sleep(0.1)
    raise AssertionError("no listener on %s:%d" % (host.name, port))


def connect(host, address, port=25):
    """The greeting a TCP client in host gets from address:port."""
    return host.exec(["python3", "-c", CLIENT, address, str(port)], timeout=20).stdout.strip()


@pytest.fixture(scope="module")
def fleet():
    with Lab() as lab:
        fleet = Fleet(lab).start()
        yield fleet
        print("\nfleet timings (s):", ", ".join("%s %s" % kv for kv in fleet.timings.items()))


def test_converge_through_the_master(fleet):
    start = time.monotonic()
    results = fleet.converge("*fw*")
    fleet.timings["first converge"] = round(time.monotonic() - start, 2)
    assert set(results) == FIREWALLS, results
    for minion, result in results.items():
        assert result["ok"], (minion, result["failed"])
        assert result["changed"], "%s: the first converge changed nothing" % minion


def test_second_converge_changes_nothing(fleet):
    start = time.monotonic()
    results = fleet.converge("*fw*")
    fleet.timings["second converge"] = round(time.monotonic() - start, 2)
    assert set(results) == FIREWALLS
    for minion, result in results.items():
        assert result["ok"] and result["changed"] == [], (minion, result)


def test_the_pair_has_one_master_holding_every_vip(fleet):
    fleet.timings["VRRP master elected"] = round(fleet.wait_vips("fw-cent7i", timeout=40), 2)
    fleet.wait_vips("fw-cent7j", 0, timeout=15)
    status = fleet.status()
    assert status["fw-cent7i"]["vrrp"] == "MASTER" and len(status["fw-cent7i"]["vips"]) == 4
    assert status["fw-cent7j"]["vrrp"] == "BACKUP" and status["fw-cent7j"]["vips"] == []
    for name in ("fw-cent7i", "fw-cent7j"):
        assert {"salt-minion", "keepalived", "conntrackd"} <= set(status[name]["daemons"]), status[name]
    assert "salt-master" in status["salt"]["daemons"]


def test_client_reaches_mail_server_through_snat_and_both_dnats(fleet):
    """client1 -> fw-cent7m (SNAT .201) -> 192.168.0.60:25 (pair DNAT -> 192.168.1.60)
    -> lb-standin (DNAT -> 192.168.2.61) -> mail-cent7a, and back."""
    listen(fleet["mail-cent7a"])
    assert connect(fleet["client1"], "192.168.0.60") == "220 mail-cent7a you are 192.168.0.201"
    # the master of the pair tracked it (NATed both ways)
    tracked = fleet["fw-cent7i"].exec(["conntrack", "-L", "-p", "tcp", "--dport", "25"], check=False).stdout
    assert "dst=192.168.0.60" in tracked and "src=192.168.1.60" in tracked, tracked


def test_mail_server_goes_out_through_the_pairs_snat(fleet):
    """mail-cent7a -> lb-standin -> 192.168.1.40 (pair) -> SNAT 192.168.0.60 -> internet."""
    listen(fleet["internet"])
    assert connect(fleet["mail-cent7a"], "192.168.0.100") == "220 internet you are 192.168.0.60"


def test_crash_moves_the_vips_to_the_backup(fleet):
    primary = fleet["fw-cent7i"]
    # an entry conntrackd does not replicate (its source is the node's own address)
    primary.exec(["conntrack", "-I", "-p", "udp", "-s", "192.168.3.41", "-d", "192.168.3.99",
                  "--sport", "4444", "--dport", "4444", "-t", "600"])
    start = time.monotonic()
    fleet.crash("fw-cent7i")
    assert not primary.running
    fleet.wait_vips("fw-cent7j", timeout=20)
    took = fleet.timings["crash -> fw-cent7j holds every VIP"] = round(time.monotonic() - start, 2)
    assert took <= TAKEOVER_LIMIT, "takeover took %.1f s" % took
    assert connect(fleet["client1"], "192.168.0.60") == "220 mail-cent7a you are 192.168.0.201"


def test_reboot_converges_the_host_by_itself(fleet):
    start = time.monotonic()
    result = fleet.reboot("fw-cent7i")
    fleet.timings["reboot -> startup highstate returned"] = round(time.monotonic() - start, 2)
    assert result["ok"], result["failed"]
    assert result["changed"], "a rebooted host starts with an empty ruleset: the highstate must change it"
    host = fleet["fw-cent7i"]
    assert set(fleet.status()["fw-cent7i"]["daemons"]) == {"salt-minion", "keepalived", "conntrackd"}
    assert ":FORWARD DROP" in host.exec(["iptables-save"]).stdout
    # the crashed kernel's conntrack table is gone
    assert "dport=4444" not in host.exec(["conntrack", "-L", "-p", "udp"], check=False).stdout
    # priority 80 preempts: fw-cent7i is the master again, and traffic flows
    fleet.wait_vips("fw-cent7i", timeout=40)
    fleet.timings["reboot -> fw-cent7i master again"] = round(time.monotonic() - start, 2)
    fleet.wait_vips("fw-cent7j", 0, timeout=15)
    assert connect(fleet["client1"], "192.168.0.60") == "220 mail-cent7a you are 192.168.0.201"


def test_nothing_of_the_lab_in_the_root_namespace(fleet):
    links = pathlib.Path("/proc/net/dev").read_text()
    assert fleet.lab.prefix not in links and "mgmt0" not in links
    root = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    assert "10.255.0." not in root and "192.168." not in root, root
