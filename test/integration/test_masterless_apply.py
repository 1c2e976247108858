"""
A real masterless apply of the formula on namespaced lab hosts.

Each host has its own network, mount (own /etc, /var, /run), UTS and PID
namespaces, the reference deployment's interfaces and addresses, and runs the
project's salt-call with the repository as file_roots and pillar.example as
pillar, unchanged. Checks: everything applies, the daemons run, the ruleset
is live, the files are what `make render` shows, a second apply changes
nothing, and a bad pillar changes nothing at all.
"""

import json
import pathlib

import pytest

from lab import Lab
from lab import salt as labsalt
from lab.diagnose import vrrp_report
from lab.wait import wait_for
from tools.golden import render

REPO = pathlib.Path(__file__).resolve().parents[2]
PILLAR = labsalt.example_pillar()

pytestmark = pytest.mark.skipif(not pathlib.Path(labsalt.SALT_CALL).exists(), reason="run make setup first")


def apply(host):
    """state.apply (highstate from the repo's top.sls)."""
    return labsalt.salt_call(host, "state.apply")


def written_since_config(host):
    """Files under /etc and /var/lib newer than the minion config (Salt's cache aside)."""
    find = "find /etc /var/lib -newer /etc/salt/minion -type f | grep -v '^/var/cache/salt' | sort"
    return host.exec(["sh", "-c", find]).stdout


def wait_for_vips(host, vips, timeout=45):
    """Wait until every VIP is on the host: a lone node is master after 3 missed
    adverts (3 s each here), however slow the machine; on timeout say why."""
    def held():
        addrs = host.exec(["ip", "-o", "-4", "addr", "show"]).stdout
        return all(f" {vip}/24 " in addrs for vip in vips)
    return wait_for(held, timeout, f"{host.name} to hold {', '.join(vips)}", 0.5, lambda: vrrp_report(host))


def wait_for_role(host, role, timeout=30):
    """Wait until the transition hook has finished and recorded `role`."""
    def recorded():
        return host.exec(["cat", "/run/conntrackd/hafw-role"], check=False).stdout.startswith(role + " ")
    return wait_for(recorded, timeout, f"the hook on {host.name} to record {role}", 0.2,
                    lambda: host.exec(["cat", "/run/conntrackd/hafw-role"], check=False).stdout)


def cable(lab, name, pillar=PILLAR):
    """A host with the interfaces and addresses the pillar gives that node."""
    host = lab.add_host(name)
    for ifname, cidr in labsalt.node_interfaces(pillar, name).items():
        lab.connect(host, ifname.replace("enp0s", "net"), ifname, cidr)
    return host


@pytest.fixture
def lab():
    with Lab() as run:
        for switch in ("net3", "net8", "net9"):
            run.add_switch(switch)
        yield run


def verify(host):
    """The testinfra verifier tests (test/verify), run inside the host."""
    script = f"cd {REPO} && PATH={REPO}/.venv/bin:$PATH python -m pytest -q -p no:cacheprovider " \
             "--hosts=local:// test/verify"
    proc = host.exec(["sh", "-c", script], check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_firewall_pair_node_converges_and_is_idempotent(lab, tmp_path):
    host = cable(lab, "fw-cent7i")
    labsalt.configure_masterless(host, "fw-cent7i", PILLAR)

    rc, first = apply(host)
    assert rc == 0 and not labsalt.state_failures(first), labsalt.state_failures(first)

    # the daemons run, in this host only
    for daemon in ("keepalived", "conntrackd"):
        assert host.exec(["pgrep", "-x", daemon], check=False).returncode == 0, f"{daemon} is not running"
    # alone on its links, fw-cent7i becomes master (after 3 missed adverts of
    # 3 s each): the sync group holds every VIP
    vips = ("192.168.0.40", "192.168.0.60", "192.168.0.88", "192.168.1.40")
    wait_for_vips(host, vips)
    # the VIPs come up while the hook still commits the external cache
    wait_for_role(host, "primary")
    # the ruleset is live and forwarding is on
    saved = host.exec(["iptables-save"]).stdout
    assert "-A PREROUTING -d 192.168.0.60/32 -i enp0s3 -p tcp -m tcp --dport 25 -j DNAT" in saved
    assert ":FORWARD DROP" in saved
    assert host.exec(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    assert "192.168.2.0/24 via 192.168.1.50" in host.exec(["ip", "route"]).stdout

    checked = verify(host)
    assert "10 passed" in checked and "skipped" not in checked, checked  # every check applies to a pair node
    # what make render shows is what the host got, byte for byte
    render("fw-cent7i", "Debian", tmp_path / "rendered")
    for path in (tmp_path / "rendered").rglob("*"):
        # /var/log files are created empty by the formula and then written by the daemons
        if path.is_file() and "var/log" not in str(path):
            live = host.exec(["cat", "/" + str(path.relative_to(tmp_path / "rendered"))]).stdout
            assert live == path.read_text(), f"{path} differs from the host's copy"

    rc, second = apply(host)
    assert rc == 0 and not labsalt.state_failures(second), labsalt.state_failures(second)
    assert labsalt.state_changes(second) == {}, "the second apply must change nothing"

    # a daemon that died is started again by the next apply, which says so
    host.exec(["pkill", "-x", "conntrackd"])
    host.exec(["sh", "-c", "while pgrep -x conntrackd >/dev/null; do sleep 0.1; done"], timeout=10)
    rc, third = apply(host)
    assert rc == 0 and "hafw-conntrackd-service-running" in labsalt.state_changes(third)
    assert host.exec(["pgrep", "-x", "conntrackd"], check=False).returncode == 0


def test_standalone_firewall_converges(lab):
    host = cable(lab, "fw-cent7m")
    labsalt.configure_masterless(host, "fw-cent7m", PILLAR)
    rc, first = apply(host)
    assert rc == 0 and not labsalt.state_failures(first), labsalt.state_failures(first)
    assert host.exec(["pgrep", "-x", "keepalived"], check=False).returncode != 0
    assert host.exec(["pgrep", "-x", "conntrackd"], check=False).returncode != 0
    saved = host.exec(["iptables-save"]).stdout
    assert "-j SNAT --to-source 192.168.0.201" in saved
    assert "skipped" in verify(host)  # the pair's checks do not apply here
    rc, second = apply(host)
    assert rc == 0 and labsalt.state_changes(second) == {}


def test_bad_pillar_changes_nothing(lab):
    host = cable(lab, "fw-cent7i")
    bad = json.loads(json.dumps(PILLAR))
    bad["hafw"]["clusters"]["fw-pair"]["nodes"]["fw-cent7i"]["state"] = "SLAVE"
    labsalt.configure_masterless(host, "fw-cent7i", bad)
    before = written_since_config(host)

    rc, result = apply(host)
    assert rc != 0
    text = json.dumps(result)
    assert "hafw:clusters:fw-pair:nodes:fw-cent7i:state" in text and "SLAVE" in text, text[:2000]
    # nothing was written and nothing started
    after = written_since_config(host)
    assert after == before
    assert host.exec(["iptables-save"]).stdout.count("-A ") == 0
    for daemon in ("keepalived", "conntrackd"):
        assert host.exec(["pgrep", "-x", daemon], check=False).returncode != 0


def test_config_changes_reload_keepalived_and_restart_conntrackd(lab):
    """A keepalived change is a SIGHUP (same pid, VIPs kept); conntrackd restarts."""
    host = cable(lab, "fw-cent7i")
    labsalt.configure_masterless(host, "fw-cent7i", PILLAR)
    rc, first = apply(host)
    assert rc == 0 and not labsalt.state_failures(first), labsalt.state_failures(first)
    vips = ("192.168.0.40", "192.168.0.60", "192.168.0.88", "192.168.1.40")
    wait_for_vips(host, vips)

    def pid(name):
        return host.exec(["pgrep", "-o", "-x", name]).stdout.strip()

    keepalived, conntrackd = pid("keepalived"), pid("conntrackd")
    changed = json.loads(json.dumps(PILLAR))
    pair = changed["hafw"]["clusters"]["fw-pair"]
    pair["vrrp"]["garp_master_delay"] = 2
    pair["conntrackd"]["nice"] = -10
    labsalt.configure_masterless(host, "fw-cent7i", changed)

    rc, second = apply(host)
    assert rc == 0 and not labsalt.state_failures(second), labsalt.state_failures(second)
    assert {"hafw-keepalived-config", "hafw-conntrackd-config"} <= set(labsalt.state_changes(second))
    assert pid("keepalived") == keepalived, "keepalived was restarted, not reloaded"
    assert pid("conntrackd") != conntrackd, "conntrackd kept its old configuration"
    assert "garp_master_delay 2" in host.exec(["cat", "/etc/keepalived/keepalived.conf"]).stdout
    addrs = host.exec(["ip", "-o", "-4", "addr", "show"]).stdout
    assert all(f" {vip}/24 " in addrs for vip in vips), "the reload dropped VIPs"
