"""Functional tests of the kernel tree: sysctls, modules and routes, for real.

``salt-call --local`` (the venv's) runs the formula's ``kernel`` states under
``ip netns exec NS``, NS a throwaway network namespace named ``hf<6 hex>``
holding a veth whose end is named as the node's interface. The scratch
minion config under tmp_path points file_roots at the repository (the
loader finds _states/hafw_sysctl.py through ``states_dirs``) and the pillar
is pillar.example plus ``hafw:lookup:kernel`` moving every file the tree
writes under tmp_path. Per-namespace sysctls and routes change in NS only;
the namespace is deleted by the fixture finalizer, also on failure.

On this lab kernel ``net.netfilter.nf_conntrack_max`` is global, hence
read-only inside a namespace, while ``net.ipv4.ip_forward`` is per
namespace: the tests check the state tolerates the first (the host's value
is large enough) and sets the second.

Needs root and iproute2; skipped otherwise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from test.support.scratch_minion import IP, SALT_CALL, ScratchMinion, changes, failed, ns_run

CT_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


def ns_sysctl(ns, key):
    return ns_run(ns, "sysctl", "-n", key).stdout.strip()


class Minion(ScratchMinion):
    """The scratch minion of the kernel tree: pillar.example, paths under tmp_path."""

    def __init__(self, tmp_path: Path, ns: str, node: str):
        out = tmp_path / "out"
        self.paths = {
            "sysctl_file": out / "etc/sysctl.d/60-hafw.conf",
            "modules_file": out / "etc/modules-load.d/hafw.conf",
            "routes_script": out / "etc/hafw/routes.sh",
            "hook": out / "etc/network/if-up.d/hafw-routes",
        }
        lookup = {k: str(v) for k, v in self.paths.items() if k != "hook"}
        lookup["route_hooks"] = [{"name": str(self.paths["hook"]),
                                  "source": "ifupdown-hook.sh.jinja"}]
        super().__init__(tmp_path, ns, node, lookup={"kernel": lookup}, default_sls="kernel")


@pytest.fixture
def netns():
    """A namespace with enp0s8 up (a veth: this kernel has no dummy links)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if not SALT_CALL.exists():
        pytest.skip(f"{SALT_CALL} not available")
    ns = f"hf{secrets.token_hex(3)}"
    subprocess.run([IP, "netns", "add", ns], check=True)
    try:
        for cmd in (["link", "add", "enp0s8", "type", "veth", "peer", "name", "p8"],
                    ["link", "set", "enp0s8", "up"], ["link", "set", "p8", "up"],
                    ["link", "set", "lo", "up"]):
            subprocess.run([IP, "-n", ns, *cmd], check=True)
        yield ns
    finally:
        subprocess.run([IP, "netns", "delete", ns], check=False)


def conntrack_max_read_only(ns):
    if not os.path.exists(CT_MAX):
        pytest.skip("no nf_conntrack in this kernel")
    proc = ns_run(ns, "sh", "-c", f"test -w {CT_MAX}", check=False)
    return proc.returncode != 0


# --------------------------------------------------------------------------


def test_firewall_kernel_states(tmp_path, netns):
    subprocess.run([IP, "-n", netns, "addr", "add", "192.168.1.41/24", "dev", "enp0s8"],
                   check=True)
    read_only = conntrack_max_read_only(netns)
    host_max = int(Path(CT_MAX).read_text())
    if read_only and host_max < 65536:
        pytest.skip(f"the host's nf_conntrack_max ({host_max}) is below the pillar's 65536")
    minion = Minion(tmp_path, netns, "fw-cent7i")
    assert ns_sysctl(netns, "net.ipv4.ip_forward") == "0"

    dry = minion.apply(test=True)
    assert dry["hafw-kernel-sysctl-net.ipv4.ip_forward"]["result"] is None
    assert ns_sysctl(netns, "net.ipv4.ip_forward") == "0"

    first = minion.apply()
    assert not failed(first), failed(first)
    assert ns_sysctl(netns, "net.ipv4.ip_forward") == "1"
    ctmax = first["hafw-kernel-sysctl-net.netfilter.nf_conntrack_max"]
    assert ctmax["result"] is True and ctmax["changes"] == {}
    if read_only:
        assert "read-only here" in ctmax["comment"]
        assert f"{host_max} already satisfies the requested 65536" in ctmax["comment"]
    assert Path(CT_MAX).read_text().strip() == str(host_max)  # the host's value untouched

    # persisted files, as the pillar says
    sysctl_conf = minion.paths["sysctl_file"].read_text()
    assert "\nnet.ipv4.ip_forward = 1\n" in sysctl_conf
    assert "\nnet.netfilter.nf_conntrack_max = 65536\n" in sysctl_conf
    assert "net.ipv4.vs." not in sysctl_conf  # the IPVS sync sysctls are the load balancers'
    assert minion.paths["modules_file"].read_text().splitlines()[-1] == "nf_conntrack"

    # the seed's route: 192.168.2.0/24 via the load balancers' VIP
    route = ns_run(netns, "ip", "-4", "route", "show", "exact", "192.168.2.0/24").stdout
    assert route.startswith("192.168.2.0/24 via 192.168.1.50 dev enp0s8")
    assert os.access(minion.paths["hook"], os.X_OK)

    again = minion.apply()
    assert not failed(again) and changes(again) == {}, changes(again)

    # drift: another gateway, ip_forward off; test mode reports, a run repairs
    ns_run(netns, "ip", "route", "replace", "192.168.2.0/24", "via", "192.168.1.99")
    ns_run(netns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    script = minion.paths["routes_script"]
    assert ns_run(netns, script, "--check", check=False).returncode == 1
    dry = minion.apply(test=True)
    assert dry["hafw-kernel-routes-installed"]["result"] is None
    assert "would install: 192.168.2.0/24" in dry["hafw-kernel-routes-installed"]["comment"]
    fixed = minion.apply()
    assert set(changes(fixed)) == {"hafw-kernel-sysctl-net.ipv4.ip_forward",
                                   "hafw-kernel-routes-installed"}
    route = ns_run(netns, "ip", "-4", "route", "show", "exact", "192.168.2.0/24").stdout
    assert route.startswith("192.168.2.0/24 via 192.168.1.50 ")
    assert ns_run(netns, script, "--check").returncode == 0
    assert changes(minion.apply()) == {}


def test_read_only_sysctl_below_request_fails(tmp_path, netns):
    if not conntrack_max_read_only(netns):
        pytest.skip("nf_conntrack_max is writable in a namespace on this kernel")
    minion = Minion(tmp_path, netns, "fw-cent7i")
    host_max = int(Path(CT_MAX).read_text())
    ret = minion.single("hafw_sysctl.present", name="net.netfilter.nf_conntrack_max",
                        value=host_max * 2)
    assert ret["result"] is False
    assert "read-only here" in ret["comment"]
    assert f"set it to at least {host_max * 2} on the host" in ret["comment"]


def test_unknown_sysctl_fails_clearly(tmp_path, netns):
    minion = Minion(tmp_path, netns, "fw-cent7i")
    ret = minion.single("hafw_sysctl.present", name="net.ipv4.no_such_knob", value=1)
    assert ret["result"] is False and "does not exist" in ret["comment"]


def test_load_balancer_modules_skip_without_a_module_tree(tmp_path, netns):
    """ip_vs cannot be loaded here: persisted, reported, not failed, no changes
    (but ip_forward, which needs no module)."""
    release = os.uname().release
    if Path("/lib/modules", release).is_dir() and shutil.which("modprobe"):
        pytest.skip("this kernel can load modules: the test would load ip_vs on the host")
    if Path("/sys/module/ip_vs").exists():
        pytest.skip("ip_vs is already in this kernel")
    subprocess.run([IP, "-n", netns, "addr", "add", "192.168.1.51/24", "dev", "enp0s8"],
                   check=True)
    minion = Minion(tmp_path, netns, "lb-cent7g")
    first = minion.apply()
    assert not failed(first), failed(first)
    loaded = first["hafw-kernel-modules-loaded"]
    assert loaded["result"] is True and loaded["changes"] == {}
    assert "cannot be loaded here" in loaded["comment"]
    assert "ip_vs, ip_vs_lc" in loaded["comment"]
    lines = minion.paths["modules_file"].read_text().splitlines()
    assert lines[-2:] == ["ip_vs", "ip_vs_lc"]
    # the IPVS sync sysctls exist once ip_vs is loaded: persisted for the
    # boot (after the modules), said and not failed now
    sysctl_conf = minion.paths["sysctl_file"].read_text()
    assert "\nnet.ipv4.vs.sync_refresh_period = 10\nnet.ipv4.vs.sync_threshold = 0 1\n" in sysctl_conf
    for key in ("net.ipv4.vs.sync_refresh_period", "net.ipv4.vs.sync_threshold"):
        ret = first[f"hafw-kernel-sysctl-{key}"]
        assert ret["result"] is True and ret["changes"] == {}
        assert f"{key} is not set now: it exists once kernel module ip_vs is loaded" in ret["comment"]
    assert first["hafw-kernel-sysctl-net.ipv4.ip_forward"]["changes"] == {"old": "0", "new": "1"}
    # the load balancers' route to the outside, via the firewalls' inside VIP
    route = ns_run(netns, "ip", "-4", "route", "show", "exact", "192.168.0.0/24").stdout
    assert route.startswith("192.168.0.0/24 via 192.168.1.40 dev enp0s8")
    assert changes(minion.apply()) == {}


def test_unreachable_gateway_fails_with_ip_s_message(tmp_path, netns):
    """enp0s8 has no address yet: 192.168.1.50 is no next hop; say so, change nothing."""
    minion = Minion(tmp_path, netns, "fw-cent7i")
    states = minion.apply("kernel.routes")
    installed = states["hafw-kernel-routes-installed"]
    assert installed["result"] is False
    assert "could not install: 192.168.2.0/24 via 192.168.1.50 (" in installed["comment"]
    assert "gateway" in installed["comment"].lower()  # ip's own words
    assert ns_run(netns, "ip", "-4", "route", "show", "exact", "192.168.2.0/24").stdout == ""
