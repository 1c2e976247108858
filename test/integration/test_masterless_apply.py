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
import subprocess
import sys
import time

import pytest
import yaml

from lab import Lab

REPO = pathlib.Path(__file__).resolve().parents[2]
SALT_CALL = str(REPO / ".venv" / "bin" / "salt-call")
PILLAR = yaml.safe_load((REPO / "pillar.example").read_text())

pytestmark = pytest.mark.skipif(not pathlib.Path(SALT_CALL).exists(), reason="run make setup first")


def minion_config(minion_id):
    return yaml.safe_dump({
        "id": minion_id,
        "file_client": "local",
        "file_roots": {"base": [str(REPO)]},
        "pillar_roots": {"base": ["/etc/salt/pillar"]},
        # the real error, not "see master log", when a pillar is bad
        "pillar_safe_render_error": False,
        "log_level_logfile": "info",
    })


def install_salt_config(host, minion_id, pillar):
    host.exec(["mkdir", "-p", "/etc/salt/pillar"])
    host.exec(["tee", "/etc/salt/minion"], input=minion_config(minion_id))
    host.exec(["tee", "/etc/salt/pillar/top.sls"], input="base:\n  '*':\n    - hafw\n")
    host.exec(["tee", "/etc/salt/pillar/hafw.sls"], input=yaml.safe_dump(pillar))


def apply(host, timeout=300):
    """state.apply (highstate from the repo's top.sls); returns (retcode, result)."""
    proc = host.exec([SALT_CALL, "--local", "--out", "json", "--retcode-passthrough", "state.apply"],
                     check=False, timeout=timeout)
    try:
        out = json.loads(proc.stdout)["local"]
    except (ValueError, KeyError):
        pytest.fail(f"salt-call printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, out


def failures(result):
    return {k: v.get("comment") for k, v in result.items() if v.get("result") is not True}


def changed(result):
    return {v.get("__id__", k): v["changes"] for k, v in result.items() if v.get("changes")}


def cable(lab, name):
    """Give a host the interfaces and addresses pillar.example lists for it."""
    for cluster in PILLAR["hafw"]["clusters"].values():
        if name in cluster["nodes"]:
            host = lab.add_host(name)
            for ifname, cidr in cluster["nodes"][name]["interfaces"].items():
                lab.connect(host, ifname.replace("enp0s", "net"), ifname, cidr)
            return host
    raise KeyError(name)


@pytest.fixture
def lab():
    with Lab() as run:
        for switch in ("net3", "net8", "net9"):
            run.add_switch(switch)
        yield run


def render(node, out):
    subprocess.run([sys.executable, "-m", "tools.render", "--node", node, "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, text=True)


def test_firewall_pair_node_converges_and_is_idempotent(lab, tmp_path):
    host = cable(lab, "fw-cent7i")
    install_salt_config(host, "fw-cent7i", PILLAR)

    rc, first = apply(host)
    assert rc == 0 and not failures(first), failures(first)

    # the daemons run, in this host only
    for daemon in ("keepalived", "conntrackd"):
        assert host.exec(["pgrep", "-x", daemon], check=False).returncode == 0, f"{daemon} is not running"
    # alone on its links, fw-cent7i becomes master (after 3 missed adverts of
    # 3 s each): the sync group holds every VIP
    vips = ("192.168.0.40", "192.168.0.60", "192.168.0.88", "192.168.1.40")
    deadline = time.monotonic() + 20
    while True:
        addrs = host.exec(["ip", "-o", "-4", "addr", "show"]).stdout
        if all(f" {vip}/24 " in addrs for vip in vips) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for vip in vips:
        assert f" {vip}/24 " in addrs, addrs
    assert "primary" in host.exec(["cat", "/run/conntrackd/hafw-role"], check=False).stdout
    # the ruleset is live and forwarding is on
    saved = host.exec(["iptables-save"]).stdout
    assert "-A PREROUTING -d 192.168.0.60/32 -i enp0s3 -p tcp -m tcp --dport 25 -j DNAT" in saved
    assert ":FORWARD DROP" in saved
    assert host.exec(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    assert "192.168.2.0/24 via 192.168.1.50" in host.exec(["ip", "route"]).stdout

    # what make render shows is what the host got, byte for byte
    render("fw-cent7i", tmp_path / "rendered")
    for path in (tmp_path / "rendered").rglob("*"):
        # /var/log files are created empty by the formula and then written by the daemons
        if path.is_file() and "var/log" not in str(path):
            live = host.exec(["cat", "/" + str(path.relative_to(tmp_path / "rendered"))]).stdout
            assert live == path.read_text(), f"{path} differs from the host's copy"

    rc, second = apply(host)
    assert rc == 0 and not failures(second), failures(second)
    assert changed(second) == {}, "the second apply must change nothing"


def test_standalone_firewall_converges(lab):
    host = cable(lab, "fw-cent7m")
    install_salt_config(host, "fw-cent7m", PILLAR)
    rc, first = apply(host)
    assert rc == 0 and not failures(first), failures(first)
    assert host.exec(["pgrep", "-x", "keepalived"], check=False).returncode != 0
    assert host.exec(["pgrep", "-x", "conntrackd"], check=False).returncode != 0
    saved = host.exec(["iptables-save"]).stdout
    assert "-j SNAT --to-source 192.168.0.201" in saved
    rc, second = apply(host)
    assert rc == 0 and changed(second) == {}


def test_bad_pillar_changes_nothing(lab):
    host = cable(lab, "fw-cent7i")
    bad = json.loads(json.dumps(PILLAR))
    bad["hafw"]["clusters"]["fw-pair"]["nodes"]["fw-cent7i"]["state"] = "SLAVE"
    install_salt_config(host, "fw-cent7i", bad)
    before = host.exec(["sh", "-c", "find /etc /var/lib -newer /etc/salt/minion -type f | grep -v '^/var/cache/salt' | sort"]).stdout

    rc, result = apply(host)
    assert rc != 0
    text = json.dumps(result)
    assert "hafw:clusters:fw-pair:nodes:fw-cent7i:state" in text and "SLAVE" in text, text[:2000]
    # nothing was written and nothing started
    after = host.exec(["sh", "-c", "find /etc /var/lib -newer /etc/salt/minion -type f | grep -v '^/var/cache/salt' | sort"]).stdout
    assert after == before
    assert host.exec(["iptables-save"]).stdout.count("-A ") == 0
    for daemon in ("keepalived", "conntrackd"):
        assert host.exec(["pgrep", "-x", daemon], check=False).returncode != 0
