"""Functional tests of the iptables tree: the real ruleset, in real netfilter.

Salt itself runs the formula: ``salt-call --local`` (the venv's) under
``ip netns exec NS``, NS a throwaway network namespace named ``hf<6 hex>``,
with a scratch minion config under tmp_path:

* file_roots = an overlay, then the repository. The overlay's only file is
  ``iptables/install.sls``, a stub with the real state ID (packages are not
  installed from a test); config.sls, the ruleset template and
  _states/netfilter_ruleset.py are the repository's, found by the loader
  through ``states_dirs`` as after ``saltutil.sync_all``;
* the pillar is pillar.example plus ``hafw:lookup:iptables`` moving every
  path the tree writes under tmp_path.

So every write lands under tmp_path and every netfilter change in NS; the
namespace is deleted by the fixture finalizer, also on failure. Needs root,
iproute2, iptables (nf_tables) and nft; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test.support.scratch_minion import IP, REPO, SALT_CALL, ScratchMinion, changes, failed, ns_run

PARAMS = yaml.safe_load((REPO / "iptables" / "parameters" / "defaults.yaml").read_text())

sys.path.insert(0, str(REPO / "_utils"))
import hafw_model  # noqa: E402  (plain-Python model, from _utils)

# overlaid on iptables/install.sls: the real state ID, nothing installed
INSTALL_STUB = ("# test stub: packages are not installed from a test\n"
                "hafw-iptables-installed:\n  test.nop: []\n")

# --------------------------------------------------------------------------
# helpers


def example_pillar():
    return yaml.safe_load((REPO / "pillar.example").read_text())


def model_firewall(pillar, node):
    return hafw_model.node(pillar["hafw"], node)["firewall"]


def tables(text):
    """{table: lines} of iptables-save/-restore text, comments and counters dropped."""
    out, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = out.setdefault(line[1:], [])
        if line.startswith(":"):
            line = line.rsplit(" ", 1)[0]
        current.append(line)
    return out


def live_tables(ns, names=("nat", "filter")):
    """The live tables named (a pair's ruleset also has mangle: the takeover gate)."""
    return {t: tables(ns_run(ns, "iptables-save", "-t", t).stdout)[t] for t in names}


class Minion(ScratchMinion):
    """The scratch minion of the iptables tree: install.sls stubbed, paths under tmp_path."""

    def __init__(self, tmp_path: Path, ns: str, node: str, pillar: dict):
        self.out = tmp_path / "out"  # stands for / : every managed file lands below
        self.paths = {
            "iptables": {"rules_file": str(self.out / "etc/iptables/rules.v4")},
            "nftables": {"rules_file": str(self.out / "etc/hafw/hafw.nft"),
                         "main_conf": str(self.out / "etc/nftables.conf")},
        }
        super().__init__(tmp_path, ns, node, pillar=pillar, lookup={"iptables": self.paths},
                         overlay={"iptables/install.sls": INSTALL_STUB})


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for tool in ("iptables-restore", "iptables-save", "nft"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not available")
    if not SALT_CALL.exists():
        pytest.skip(f"{SALT_CALL} not available")
    ns = f"hf{secrets.token_hex(3)}"
    subprocess.run([IP, "netns", "add", ns], check=True)
    try:
        yield ns
    finally:
        subprocess.run([IP, "netns", "delete", ns], check=False)


# --------------------------------------------------------------------------
# iptables backend


@pytest.mark.parametrize("node", ["fw-cent7i", "fw-cent7m"])
def test_iptables_ruleset_applied_idempotent_and_repaired(tmp_path, netns, node):
    pillar = example_pillar()
    wanted = model_firewall(pillar, node)["iptables"]
    minion = Minion(tmp_path, netns, node, pillar)
    rules = Path(minion.paths["iptables"]["rules_file"])

    first = minion.apply("iptables.config")
    assert not failed(first), failed(first)
    assert set(changes(first)) == {"hafw-iptables-rules-file", "hafw-iptables-ruleset-applied"}
    assert rules.read_text() == wanted  # byte for byte the model's text
    # iptables-save gives the file back, table by table
    assert live_tables(netns, tables(wanted)) == tables(wanted)

    again = minion.apply("iptables.config")
    assert not failed(again) and changes(again) == {}
    assert "already match" in again["hafw-iptables-ruleset-applied"]["comment"]

    # an out-of-band rule is drift: test mode shows it and leaves it ...
    ns_run(netns, "iptables", "-I", "FORWARD", "-j", "ACCEPT")
    dry = minion.apply("iptables.config", test=True)
    applied = dry["hafw-iptables-ruleset-applied"]
    assert applied["result"] is None
    assert "\n--A FORWARD -j ACCEPT" in applied["changes"]["diff"]
    assert "-A FORWARD -j ACCEPT" in ns_run(netns, "iptables-save", "-t", "filter").stdout

    # ... a real run removes it, in one restore
    fixed = minion.apply("iptables.config")
    assert set(changes(fixed)) == {"hafw-iptables-ruleset-applied"}
    assert live_tables(netns, tables(wanted)) == tables(wanted)
    assert changes(minion.apply("iptables.config")) == {}


def test_bad_iptables_ruleset_changes_nothing(tmp_path, netns):
    pillar = example_pillar()
    minion = Minion(tmp_path, netns, "fw-cent7m", pillar)
    assert not failed(minion.apply("iptables.config"))
    rules = Path(minion.paths["iptables"]["rules_file"])
    good, before = rules.read_text(), live_tables(netns)
    bad = good.replace("-j SNAT --to-source 192.168.0.201", "-j SNAT --to-source bogus")

    # config.sls's check_cmd refuses it: the file keeps the good ruleset
    ret = minion.single("file.managed", name=rules, contents=json.dumps(bad),
                        check_cmd=json.dumps(PARAMS["iptables"]["check_cmd"]))
    assert ret["result"] is False
    assert "check_cmd execution failed" in ret["comment"]
    assert rules.read_text() == good

    # and were it in the file, the restore fails whole, with the tool's words
    broken = tmp_path / "broken.v4"
    broken.write_text(bad)
    ret = minion.single("netfilter_ruleset.applied", name=broken, backend="iptables")
    assert ret["result"] is False
    assert ret["changes"] == {}
    assert "iptables-restore" in ret["comment"] and "bogus" in ret["comment"]
    assert live_tables(netns) == before


def test_iptables_clean_empties_nat_and_filter(tmp_path, netns):
    minion = Minion(tmp_path, netns, "fw-cent7i", example_pillar())
    assert not failed(minion.apply("iptables.config"))
    cleaned = minion.apply("iptables.clean")
    assert not failed(cleaned)
    assert not Path(minion.paths["iptables"]["rules_file"]).exists()
    live = live_tables(netns)
    assert live["filter"] == ["*filter", ":INPUT ACCEPT", ":FORWARD ACCEPT", ":OUTPUT ACCEPT",
                              "COMMIT"]
    assert changes(minion.apply("iptables.clean")) == {}


# --------------------------------------------------------------------------
# nftables backend


def nft_pillar():
    pillar = example_pillar()
    pillar["hafw"]["clusters"]["fw-pair"]["firewall"]["backend"] = "nftables"
    return pillar


def nft_table(ns):
    proc = ns_run(ns, "nft", "-s", "list", "table", "ip", "hafw", check=False)
    return proc.stdout if proc.returncode == 0 else None


def test_nftables_ruleset_applied_idempotent_and_repaired(tmp_path, netns):
    pillar = nft_pillar()
    wanted = model_firewall(pillar, "fw-cent7i")["nftables"]
    minion = Minion(tmp_path, netns, "fw-cent7i", pillar)
    script = Path(minion.paths["nftables"]["rules_file"])
    main_conf = Path(minion.paths["nftables"]["main_conf"])
    main_conf.parent.mkdir(parents=True)
    main_conf.write_text("#!/usr/sbin/nft -f\nflush ruleset\n")  # as Debian ships it
    ns_run(netns, "nft", "add", "table", "ip", "other")  # not ours: must survive

    first = minion.apply("iptables.config")
    assert not failed(first), failed(first)
    assert script.read_text() == wanted
    assert main_conf.read_text().endswith(f'include "{script}"\n')
    listing = nft_table(netns)
    assert listing is not None and 'log prefix "DROPPED " level info' in listing
    assert nft_table(netns) is not None
    assert "table ip other" in ns_run(netns, "nft", "list", "tables").stdout
    # the script is what nftables.service would load at boot: it checks
    ns_run(netns, "nft", "-c", "-f", main_conf)

    again = minion.apply("iptables.config")
    assert changes(again) == {}, changes(again)

    # the takeover gate's jump belongs to the transition hook: not drift
    assert "chain gate_hook {" in listing and "jump gate" not in listing
    ns_run(netns, "nft", "add", "rule", "ip", "hafw", "gate_hook", "jump", "gate")
    assert changes(minion.apply("iptables.config")) == {}
    ns_run(netns, "nft", "flush", "chain", "ip", "hafw", "gate_hook")

    ns_run(netns, "nft", "insert", "rule", "ip", "hafw", "forward", "accept")
    fixed = minion.apply("iptables.config")
    applied = fixed["hafw-iptables-ruleset-applied"]
    assert set(changes(fixed)) == {"hafw-iptables-ruleset-applied"}
    assert "changed outside Salt" in applied["comment"]
    assert nft_table(netns) == listing
    assert changes(minion.apply("iptables.config")) == {}

    cleaned = minion.apply("iptables.clean")
    assert not failed(cleaned)
    assert nft_table(netns) is None
    assert "table ip other" in ns_run(netns, "nft", "list", "tables").stdout
    assert "include" not in main_conf.read_text()
    assert not script.exists()


def test_bad_nft_script_changes_nothing(tmp_path, netns):
    pillar = nft_pillar()
    minion = Minion(tmp_path, netns, "fw-cent7i", pillar)
    Path(minion.paths["nftables"]["main_conf"]).parent.mkdir(parents=True)
    assert not failed(minion.apply("iptables.config"))
    script = Path(minion.paths["nftables"]["rules_file"])
    good, before = script.read_text(), nft_table(netns)
    bad = good.replace("policy drop;", "policy dorp;")

    ret = minion.single("file.managed", name=script, contents=json.dumps(bad),
                        check_cmd=json.dumps(PARAMS["nftables"]["check_cmd"]))
    assert ret["result"] is False and "check_cmd execution failed" in ret["comment"]
    assert script.read_text() == good

    broken = tmp_path / "broken.nft"
    broken.write_text(bad)
    ret = minion.single("netfilter_ruleset.applied", name=broken, backend="nftables")
    assert ret["result"] is False and "Error" in ret["comment"]
    assert nft_table(netns) == before
