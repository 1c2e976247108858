"""The lab's hosts: isolated network, /etc, /var, /run, hostname, conntrack, processes.

Needs root, iproute2, util-linux, conntrack, keepalived and ping.  Every lab
made here is torn down by its fixture, also when a test fails.
"""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lab import Lab, clean, netns
from lab.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
PREFIXES = []  # every run prefix this module made; none may be left at the end


def lab_namespaces(prefix):
    return [ns for ns in netns.list_netns() if ns.startswith(prefix)]




def pids_in_pid_namespace(host):
    """Pids (as seen from here) of every process in the host's PID namespace."""
    target = os.readlink("/proc/%d/ns/pid" % host.init_pid)
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink("/proc/%s/ns/pid" % entry) == target:
                found.append(int(entry))
        except (FileNotFoundError, PermissionError):  # gone, or the machine's own init
            pass
    return found


@pytest.fixture(scope="module", autouse=True)
def no_leftovers():
    """After all tests of the module: no namespace or state dir of ours remains."""
    yield
    assert [ns for p in PREFIXES for ns in lab_namespaces(p)] == []
    assert [p for p in PREFIXES if (REPO / ".lab-run" / p.rstrip("-")).exists()] == []


@pytest.fixture(scope="module")
def lab():
    """Hosts a and b on switch lan (10.99.0.0/24)."""
    with Lab() as lab:
        PREFIXES.append(lab.prefix)
        lab.add_switch("lan")
        lab.connect(lab.add_host("a"), "lan", "enp0s3", "10.99.0.1/24")
        lab.connect(lab.add_host("b"), "lan", "enp0s3", "10.99.0.2/24")
        yield lab
    assert lab_namespaces(lab.prefix) == []


@pytest.fixture
def leaked_prefix():
    """A run whose owner process was SIGKILLed mid-run: hosts left behind."""
    script = ("import os, signal\nfrom lab import Lab\nlab = Lab().__enter__()\n"
              "lab.add_switch('lan')\nlab.connect(lab.add_host('x'), 'lan', 'eth0', '10.98.0.1/24')\n"
              "print(lab.prefix, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    prefix = out.stdout.strip()
    assert prefix, out.stderr
    PREFIXES.append(prefix)
    yield prefix
    clean.clean_run(prefix, force=True)


def test_hosts_on_one_bridge_ping_each_other(lab):
    lab["a"].exec(["ping", "-c", "1", "-W", "2", "10.99.0.2"])
    lab["b"].exec(["ping", "-c", "1", "-W", "2", "10.99.0.1"])


def test_lab_interfaces_stay_out_of_the_root_namespace(lab):
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert lab.prefix not in root_links
    assert "10.99.0." not in subprocess.run(["ip", "-o", "addr"], capture_output=True,
                                            text=True).stdout


def test_etc_write_is_private_to_the_host(lab):
    name = "/etc/lab-test-%s" % lab.prefix
    lab["a"].exec("echo from-a > %s" % name)
    assert lab["a"].exec(["cat", name]).stdout == "from-a\n"
    assert lab["b"].exec(["test", "-e", name], check=False).returncode == 1
    assert not os.path.exists(name)


def test_run_and_var_lock_are_per_host(lab):
    lab["a"].exec("touch /run/lab-test-a /var/lock/lab-test-lock")
    assert lab["a"].exec(["test", "-e", "/run/lock/lab-test-lock"]).returncode == 0
    for path in ("/run/lab-test-a", "/run/lock/lab-test-lock"):
        assert lab["b"].exec(["test", "-e", path], check=False).returncode == 1
    assert not os.path.exists("/run/lab-test-a")
    assert not os.path.exists("/run/lock/lab-test-lock")


def test_hostname_is_per_host(lab):
    real = socket.gethostname()
    assert lab["a"].exec(["hostname"]).stdout.strip() == "a"
    assert lab["b"].exec(["hostname"]).stdout.strip() == "b"
    assert socket.gethostname() == real


def test_conntrack_table_is_per_host(lab):
    a, b = lab["a"], lab["b"]
    count = {h.name: int(h.exec(["conntrack", "-C"]).stdout) for h in (a, b)}
    flow = ["-p", "udp", "-s", "10.123.45.67", "-d", "10.123.45.68",
            "--sport", "1111", "--dport", "2222"]
    a.exec(["conntrack", "-I", *flow, "-t", "120"])
    assert int(a.exec(["conntrack", "-C"]).stdout) == count["a"] + 1
    assert int(b.exec(["conntrack", "-C"]).stdout) == count["b"]
    assert "10.123.45.67" in a.exec(["conntrack", "-L", *flow]).stdout
    assert "10.123.45.67" not in b.exec(["conntrack", "-L", *flow], check=False).stdout
    a.exec(["conntrack", "-D", *flow])


def test_kill_all_kills_every_process_of_the_host(lab):
    host = lab.add_host("crash")
    sleeper = host.popen(["sleep", "1000"])
    # Also one that left its parent, as daemons do: its parent is now the host's init.
    host.exec("setsid sleep 1001 >/dev/null 2>&1 &")
    wait_for(lambda: len(host.pids()) >= 3, 10, "both sleeps")
    doomed = pids_in_pid_namespace(host)
    assert len(doomed) >= 3
    host.kill_all()
    assert sleeper.wait(10) != 0
    assert not host.running
    assert [p for p in doomed if os.path.exists("/proc/%d" % p)] == []


def test_reboot_keeps_etc_and_gives_fresh_run_and_conntrack(lab):
    host = lab["b"]
    host.exec("echo kept > /etc/lab-test-reboot; touch /run/lab-test-gone")
    host.exec(["conntrack", "-I", "-p", "udp", "-s", "10.1.2.3", "-d", "10.1.2.4",
               "--sport", "1", "--dport", "2", "-t", "120"])
    old_init = host.init_pid
    host.reboot()
    assert host.running and host.init_pid != old_init
    assert host.exec(["cat", "/etc/lab-test-reboot"]).stdout == "kept\n"
    assert host.exec(["test", "-e", "/run/lab-test-gone"], check=False).returncode == 1
    assert host.exec(["conntrack", "-C"]).stdout.strip() == "0"
    lab["a"].exec(["ping", "-c", "1", "-W", "2", "10.99.0.2"])


def test_exec_timeout_kills_the_command(lab):
    with pytest.raises(subprocess.TimeoutExpired):
        lab["a"].exec("sleep 100; true", timeout=0.5)
    wait_for(lambda: lab["a"].pids() == [1], timeout=5, what="sleep to be gone")


KEEPALIVED_CONF = """
vrrp_instance LABTEST {
    state BACKUP
    interface enp0s3
    virtual_router_id 51
    priority 100
    advert_int 1
    virtual_ipaddress {
        10.99.0.100/24
    }
}
"""


def test_keepalived_init_script_starts_and_stops_in_a_host(lab):
    a, b = lab["a"], lab["b"]
    a.exec("mkdir -p /etc/keepalived && cat > /etc/keepalived/keepalived.conf",
           input=KEEPALIVED_CONF)
    try:
        a.exec(["/etc/init.d/keepalived", "start"])
        wait_for(lambda: "10.99.0.100/24" in a.exec(["ip", "-o", "addr", "show", "enp0s3"]).stdout,
                 timeout=15, what="keepalived to take the VIP")
        pid = a.exec(["cat", "/run/keepalived.pid"]).stdout.strip()
        assert a.exec(["kill", "-0", pid]).returncode == 0
        assert b.exec(["test", "-e", "/run/keepalived.pid"], check=False).returncode == 1
        assert b.exec(["test", "-e", "/etc/keepalived/keepalived.conf"], check=False).returncode == 1
        b.exec(["ping", "-c", "1", "-W", "2", "10.99.0.100"])
    finally:
        a.exec(["/etc/init.d/keepalived", "stop"], check=False)
    wait_for(lambda: a.exec(["pgrep", "-x", "keepalived"], check=False).returncode == 1,
             10, "keepalived to stop")


def test_clean_skips_a_live_run(lab):
    assert clean.clean(prefix=lab.prefix) == ["%s: live (lock held), skipped" % lab.prefix]
    assert lab["a"].running and lab_namespaces(lab.prefix)


def test_clean_removes_a_leaked_run(leaked_prefix):
    state_dir = REPO / ".lab-run" / leaked_prefix.rstrip("-")
    recorded = [pid for pid, _ in clean.read_pids(state_dir)]
    assert lab_namespaces(leaked_prefix) and recorded
    assert all(os.path.exists("/proc/%d" % p) for p in recorded)
    clean.clean(prefix=leaked_prefix)
    assert lab_namespaces(leaked_prefix) == []
    assert not state_dir.exists()
    assert [p for p in recorded if os.path.exists("/proc/%d" % p)] == []


def test_exception_in_with_block_tears_down():
    with pytest.raises(RuntimeError):
        with Lab() as lab:
            PREFIXES.append(lab.prefix)
            lab.add_host("a")
            raise RuntimeError("boom")
    assert lab_namespaces(lab.prefix) == []


def test_ctrl_c_tears_down():
    script = ("import time\nfrom lab import Lab\nwith Lab() as lab:\n"
              "    lab.add_switch('lan'); lab.connect(lab.add_host('a'), 'lan', 'eth0')\n"
              "    print(lab.prefix, flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    prefix = None
    try:
        prefix = proc.stdout.readline().strip()
        assert prefix, proc.stderr.read()
        PREFIXES.append(prefix)
        assert lab_namespaces(prefix)
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        assert lab_namespaces(prefix) == []
    finally:
        proc.kill()
        proc.wait()
        if prefix:
            clean.clean_run(prefix, force=True)
