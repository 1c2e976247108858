"""
The load balancers' resync hold check (keepalived/files/hafw-ipvs-hold.sh),
run by /bin/sh against a made-up /proc (HAFW_PROC) as the child of a
made-up keepalived VRRP process (HAFW_PPID), with a stand-in `ip` first in
PATH: which keepalived it times, when it passes, and its marker.
"""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "keepalived" / "files" / "hafw-ipvs-hold.sh"
TICKS = os.sysconf("SC_CLK_TCK")
UPTIME = 5000.25  # seconds since boot, in the made-up /proc
VIPS = ("192.168.1.50", "192.168.1.60", "192.168.2.50")
MAIN, VRRP = 700, 702  # keepalived's main process and its VRRP child, which runs the check


class Host:
    """A made-up /proc and `ip`; run() runs the check against them."""

    def __init__(self, root):
        self.proc = root / "proc"
        self.bin = root / "bin"
        self.marker = root / "hold.marker"
        self.addrs = []
        self.proc.mkdir()
        (self.proc / "uptime").write_text(f"{UPTIME:.2f} 9000.00\n")
        self.bin.mkdir()
        ip = self.bin / "ip"
        ip.write_text(f'#!/bin/sh\ncat "{root}/addrs"\n')
        ip.chmod(0o755)
        self.process(1, "systemd", 0, UPTIME)

    def process(self, pid, comm, ppid, age_s):
        """A process started age_s seconds ago (stat: field 4 its parent, field 22 its start in clock ticks)."""
        d = self.proc / str(pid)
        d.mkdir()
        (d / "comm").write_text(comm + "\n")
        start = round((UPTIME - age_s) * TICKS)
        fields = ["S", str(ppid), str(pid), str(pid), "0", "-1", "4194560"] + ["0"] * 12 + [str(start), "0"]
        (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields) + "\n")
        return start

    def keepalived(self, age_s):
        """keepalived started age_s seconds ago: its main process and its VRRP child; returns the main one's start."""
        start = self.process(MAIN, "keepalived", 1, age_s)
        self.process(VRRP, "keepalived", MAIN, age_s - 0.01)
        return start

    def run(self, hold=12, vips=VIPS, args=None, ppid=VRRP):
        (self.proc.parent / "addrs").write_text("".join(
            f"2: enp0s3    inet {a}/24 brd 192.168.1.255 scope global enp0s3\n" for a in self.addrs))
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HAFW_PROC": str(self.proc), "HAFW_PPID": str(ppid)}
        argv = [str(hold), str(self.marker), *vips] if args is None else args
        return subprocess.run(["/bin/sh", str(SCRIPT), *argv], env=env, capture_output=True, text=True,
                              timeout=20)


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def test_holds_until_keepalived_is_hold_seconds_old(host):
    host.keepalived(5.0)
    proc = host.run()
    assert proc.returncode == 1
    assert "holding: keepalived (pid 700) started 5.0 s ago, hold 12 s" in proc.stdout
    assert not host.marker.exists()


def test_passes_once_keepalived_is_old_enough_and_leaves_a_marker(host):
    start = host.keepalived(12.5)
    proc = host.run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed: keepalived (pid 700) started 12.5 s ago" in proc.stdout
    assert host.marker.read_text() == f"700 {start}\n"


def test_times_the_keepalived_that_runs_it(host):
    """Its main process (the VRRP child's parent), not another keepalived
    (another node of a lab on one kernel) nor what started keepalived."""
    host.process(650, "keepalived", 1, 3600.0)  # another node's
    host.process(600, "keepalived", 1, 4000.0)
    host.process(690, "ip", 600, 3.1)  # `ip netns exec` started this node's keepalived
    host.process(MAIN, "keepalived", 690, 3.0)
    host.process(VRRP, "keepalived", MAIN, 2.9)
    proc = host.run()
    assert proc.returncode == 1
    assert "keepalived (pid 700) started 3.0 s ago" in proc.stdout


def test_not_run_by_keepalived_holds(host):
    host.keepalived(3600.0)
    host.process(900, "bash", 1, 10.0)
    proc = host.run(ppid=900)
    assert proc.returncode == 1
    assert "not run by keepalived" in proc.stdout


def test_the_marker_passes_until_keepalived_restarts(host):
    start = host.keepalived(1.0)
    host.marker.write_text(f"700 {start}\n")
    assert host.run().returncode == 0  # passed before: no wait, whatever the age
    # keepalived restarted (another start time): the hold begins again
    host.marker.write_text(f"700 {start - 500}\n")
    assert host.run().returncode == 1


def test_a_node_holding_its_vips_does_not_wait(host):
    start = host.keepalived(1.0)
    host.addrs = list(VIPS)
    proc = host.run()
    assert proc.returncode == 0
    assert "this node holds its VIPs" in proc.stdout
    assert host.marker.read_text() == f"700 {start}\n"


def test_some_vips_are_not_enough(host):
    host.keepalived(1.0)
    host.addrs = ["192.168.1.50", "192.168.1.600", "192.168.2.50"]  # 192.168.1.600 is not 192.168.1.60
    assert host.run().returncode == 1


def test_an_unwritable_marker_still_passes(host):
    host.keepalived(20.0)
    host.marker = host.proc / "no-such-dir" / "marker"
    proc = host.run()
    assert proc.returncode == 0 and proc.stderr == ""


@pytest.mark.parametrize("args", [[], ["12"], ["twelve", "/run/m"], ["-1", "/run/m"], ["", "/run/m"]],
                         ids=["nothing", "no marker", "not a number", "negative", "empty"])
def test_usage_errors(host, args):
    proc = host.run(args=args)
    assert proc.returncode == 2
    assert "usage: hafw-ipvs-hold.sh HOLD_SECONDS MARKER_FILE [VIP ...]" in proc.stderr
