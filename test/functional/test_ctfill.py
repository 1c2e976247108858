"""lab/ctfill.py fills a lab host's conntrack table over ctnetlink: the
entries it reports are the entries the kernel holds, with the state asked."""

import json
import pathlib

import pytest

from lab import Lab

REPO = pathlib.Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")


@pytest.fixture
def host():
    with Lab() as lab:
        yield lab.add_host("ctfill")


def fill(host, *args):
    out = host.exec(["sh", "-c", f'cd {REPO} && exec {PYTHON} -m lab.ctfill "$@"', "ctfill", *args])
    return json.loads(out.stdout)


def test_fill_creates_established_entries_in_the_host_only(host):
    result = fill(host, "3000")
    assert result["count"] == 3000 and result["errors"] == {}, result
    assert host.exec(["conntrack", "-C"]).stdout.strip() == "3000"
    sample = host.exec(["conntrack", "-L", "-p", "tcp", "--dport", "443", "-s", "10.99.0.1"]).stdout
    assert "ESTABLISHED" in sample and "ASSURED" in sample, sample


def test_fill_again_reports_the_clashes(host):
    """The same entries twice: the kernel refuses each duplicate (EEXIST), and says so."""
    fill(host, "500")
    result = fill(host, "500")
    assert result["errors"] == {"EEXIST": 500}, result
    assert fill(host, "500", "--start", "500")["errors"] == {}
    assert host.exec(["conntrack", "-C"]).stdout.strip() == "1000"
