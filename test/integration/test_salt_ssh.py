"""
The formula agentless: the lab fleet with sshd in each formula host and
salt-ssh from the salt host (lab/saltssh.py), reading the repository's
Saltfile and a roster shaped as roster.example. No salt-minion runs and no
salt-master daemon: no beacon, no reactor.

- `salt-ssh '*fw*' state.apply` converges a clean lab; every file it wrote
  is byte for byte what `make render` shows, which test_masterless_apply
  proves is what a minion apply writes; a second apply changes nothing.
- The custom execution modules ship with salt-ssh: conntrack.sync_status
  answers from a firewall.
- The pair then passes R1: the primary crashes under 250 flows, none lost.
"""

import pytest

from lab import Lab
from lab.fleet import Fleet
from lab.saltmaster import VENV_BIN, summary
from test.support.failover import r1_crash
from tools.golden import render

TAKEOVER_S = 20  # as test_failover: advert_int 3, plus room for a busy machine
PAIR = ("fw-cent7i", "fw-cent7j")

pytestmark = pytest.mark.skipif(not (VENV_BIN / "salt-ssh").exists(), reason="run make setup first")


@pytest.fixture(scope="module")
def fleet():
    with Lab() as lab:
        fleet = Fleet(lab, agentless=True)
        fleet.up()  # salt-ssh '*fw*' state.apply; raises if a state failed
        yield fleet


def test_no_minion_runs(fleet):
    for name in fleet.minions:
        ps = fleet[name].exec(["ps", "-eo", "args="]).stdout
        assert "salt-minion" not in ps and "/usr/sbin/sshd" in ps, ps


@pytest.mark.parametrize("node", PAIR + ("fw-cent7m",))
def test_files_are_what_a_minion_apply_writes(fleet, node, tmp_path):
    render(node, "Debian", tmp_path)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "var/log" not in str(p)]
    assert len(files) > 3, files
    for path in files:
        live = fleet[node].exec(["cat", "/" + str(path.relative_to(tmp_path))], check=False)
        assert live.returncode == 0 and live.stdout == path.read_text(), f"{node}: {path} differs"


def test_second_apply_changes_nothing(fleet):
    result = {m: summary(r) for m, r in fleet.salt("*fw*", "state.apply").items()}
    assert set(result) == set(fleet.minions), result
    assert all(s["ok"] and not s["changed"] for s in result.values()), result


def test_custom_execution_module_answers(fleet):
    status = fleet.salt("fw-cent7i", "conntrack.sync_status")["fw-cent7i"]
    assert status["running"] is True and status["mode"] == "ftfw", status
    # the pair replicates: the backup's external cache holds the primary's states
    assert status["traffic"] and status["errors"]["malformed"] == 0, status


def test_r1_after_an_agentless_apply(fleet, tmp_path):
    r1_crash(fleet, tmp_path, "salt-ssh-r1", TAKEOVER_S)
