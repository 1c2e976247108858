"""Functional tests of the conntrackd transition hook (keepalived notify script).

The template conntrackd/files/primary-backup.sh.jinja is rendered with Jinja2
into tmp_path and run:

* against a real conntrackd (Debian's /usr/sbin/conntrackd) started in
  throwaway network namespaces named ``hfhk<4 hex>`` -- one namespace, or two
  joined by a veth pair on the sync link 192.168.3.0/24 for the tests that
  need a peer.  Nothing is created in the root namespace.  Every namespace
  and every conntrackd started here (directly, or by the hook) is removed by
  the fixture finalizer, also on failure;
* against a fake conntrackd (a shell script) for the paths that need no
  kernel: argument handling, serialisation, signals.

syslog is observed through a stub ``logger`` put first in PATH (the lab has
no /dev/log); the hook's own log file is read directly.

Needs root, iproute2, conntrackd and conntrack; skipped otherwise.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import jinja2
import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "conntrackd" / "files" / "primary-backup.sh.jinja"
CONNTRACKD = "/usr/sbin/conntrackd"
CONNTRACK = shutil.which("conntrack") or "/usr/sbin/conntrack"
IP = shutil.which("ip") or "/usr/sbin/ip"

PRIMARY_STEPS = ("commit", "flush", "resync", "bulk")


# --------------------------------------------------------------------------
# helpers


def render_hook(tmp_path: Path, name: str = "hook.sh", **overrides) -> Path:
    """Render the template with exactly the variables Salt passes."""
    values = {
        "conntrackd_bin": CONNTRACKD,
        "config_path": str(tmp_path / "conntrackd.conf"),
        "log_file": str(tmp_path / "log" / "hook.log"),
        "state_file": str(tmp_path / "run" / "hafw-role"),
        "timeout_s": 5,
        "start_if_down": "yes",  # upstream's behaviour; the formula renders no
    }
    values.update(overrides)
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    text = env.from_string(TEMPLATE.read_text()).render(**values)
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def hook_paths(hook_dir: Path) -> tuple[Path, Path]:
    return hook_dir / "log" / "hook.log", hook_dir / "run" / "hafw-role"


def ns_exec(ns: str | None, *cmd) -> list[str]:
    cmd = [str(c) for c in cmd]
    return [IP, "netns", "exec", ns, *cmd] if ns else cmd


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def syslog_stub(tmp_path):
    """A `logger` first in PATH that records its arguments, one call a line."""
    bindir = tmp_path / "stub-bin"
    bindir.mkdir()
    out = tmp_path / "syslog.txt"
    stub = bindir / "logger"
    stub.write_text('#!/bin/sh\nprintf \'%s\\n\' "$*" >>"$HAFW_TEST_SYSLOG"\n')
    stub.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    env["HAFW_TEST_SYSLOG"] = str(out)
    for k in [k for k in env if k.startswith("HAFW_HOOK_")]:
        del env[k]
    return env, out


def run_hook(hook: Path, *args, ns: str | None = None, env=None, timeout=90):
    start = time.monotonic()
    proc = subprocess.run(
        ns_exec(ns, hook, *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    proc.elapsed = time.monotonic() - start
    return proc


def step_lines(log: str, transition: str) -> dict[str, re.Match]:
    rx = re.compile(
        rf"{transition}: step=(?P<step>[\w-]+) rc=(?P<rc>\d+) ms=(?P<ms>\d+) (?P<res>ok|FAILED)"
    )
    return {m["step"]: m for m in rx.finditer(log)}


def read_state(state_file: Path) -> tuple[str, int]:
    role, ms = state_file.read_text().split()
    return role, int(ms)


# --------------------------------------------------------------------------
# namespaces and real conntrackd


def _require_lab():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for tool in (IP, CONNTRACKD, CONNTRACK):
        if not os.access(tool, os.X_OK):
            pytest.skip(f"{tool} not available")


CONF = """\
Sync {{
  Mode FTFW {{
  }}
  UDP {{
    IPv4_address {own}
    IPv4_Destination_Address {peer}
    Port 3780
    Interface sync0
    Checksum on
  }}
}}
General {{
  HashSize {hashsize}
  HashLimit 131072
  LogFile {dir}/conntrackd.log
  Syslog off
  LockFile {dir}/conntrackd.lock
  UNIX {{
    Path {sock}
  }}
  Filter From Userspace {{
    Protocol Accept {{
      TCP
      UDP
      ICMP
    }}
    Address Ignore {{
      IPv4_address 127.0.0.1
      IPv4_address {own}
    }}
  }}
}}
"""


class Node:
    """One firewall: a namespace, its conntrackd config, maybe a daemon."""

    def __init__(self, ns: str, directory: Path, own: str, peer: str, hashsize: int, sock: Path):
        self.ns = ns
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "conntrackd.conf"
        self.conf.write_text(
            CONF.format(own=own, peer=peer, dir=self.dir, hashsize=hashsize, sock=sock)
        )
        self.lock = self.dir / "conntrackd.lock"
        self.daemon_log = self.dir / "conntrackd.log"
        self.proc: subprocess.Popen | None = None

    def ctl(self, *args, timeout=15) -> subprocess.CompletedProcess:
        return subprocess.run(
            ns_exec(self.ns, CONNTRACKD, "-C", self.conf, *args),
            capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self):
        """conntrackd in the foreground: `ip netns exec` execs it, so the
        Popen pid is conntrackd's own pid."""
        out = open(self.dir / "conntrackd.stdout", "ab")
        self.proc = subprocess.Popen(
            ns_exec(self.ns, CONNTRACKD, "-C", self.conf),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        self.wait_ready()
        assert "conntrackd" in cmdline(self.proc.pid)
        return self

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ctl("-s").returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(
            f"conntrackd in {self.ns} not answering; log:\n"
            + (self.daemon_log.read_text() if self.daemon_log.exists() else "")
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def our_pids(self) -> list[int]:
        """Processes in our namespace that run our configuration: the
        conntrackd started here and any the hook started."""
        res = subprocess.run([IP, "netns", "pids", self.ns], capture_output=True, text=True)
        pids = [int(p) for p in res.stdout.split()]
        return [p for p in pids if str(self.conf) in cmdline(p)]

    def kernel_table(self) -> str:
        return subprocess.run(
            ns_exec(self.ns, CONNTRACK, "-L"), capture_output=True, text=True, timeout=15
        ).stdout

    def inject(self, sport: int, dst="10.2.2.2", dport=25):
        res = subprocess.run(
            ns_exec(self.ns, CONNTRACK, "-I", "-p", "tcp", "-s", "10.1.1.1", "-d", dst,
                    "--sport", sport, "--dport", dport, "--state", "ESTABLISHED",
                    "-t", "600", "-u", "ASSURED"),
            capture_output=True, text=True, timeout=15,
        )
        assert res.returncode == 0, res.stderr


@pytest.fixture
def lab(tmp_path, sock_dir):
    """Factory of namespaces/nodes; tears everything down on any outcome."""
    _require_lab()
    namespaces: list[str] = []
    nodes: list[Node] = []

    def new_ns() -> str:
        for _ in range(20):
            name = f"hfhk{secrets.token_hex(2)}"
            res = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True)
            if res.returncode == 0:
                namespaces.append(name)
                subprocess.run([IP, "-n", name, "link", "set", "lo", "up"], check=True)
                return name
            if "File exists" not in res.stderr:
                pytest.skip(f"cannot create a network namespace: {res.stderr.strip()}")
        raise RuntimeError("no free hfhk namespace name")

    def single(hashsize=32768) -> Node:
        ns = new_ns()
        # The sync link needs a device: a veth pair inside the namespace
        # (dummy devices are not built into the lab kernel).
        subprocess.run([IP, "-n", ns, "link", "add", "sync0", "type", "veth",
                        "peer", "name", "sync1"], check=True)
        subprocess.run([IP, "-n", ns, "addr", "add", "192.168.3.41/24", "dev", "sync0"], check=True)
        subprocess.run([IP, "-n", ns, "addr", "add", "192.168.3.42/24", "dev", "sync1"], check=True)
        for dev in ("sync0", "sync1"):
            subprocess.run([IP, "-n", ns, "link", "set", dev, "up"], check=True)
        node = Node(ns, tmp_path / "a", "192.168.3.41", "192.168.3.42", hashsize, sock_dir / "a.ctl")
        nodes.append(node)
        return node

    def pair(hashsize_b=32768) -> tuple[Node, Node]:
        ns_a, ns_b = new_ns(), new_ns()
        subprocess.run([IP, "-n", ns_a, "link", "add", "sync0", "type", "veth",
                        "peer", "name", "sync0", "netns", ns_b], check=True)
        for ns, addr in ((ns_a, "192.168.3.41/24"), (ns_b, "192.168.3.42/24")):
            subprocess.run([IP, "-n", ns, "addr", "add", addr, "dev", "sync0"], check=True)
        for ns in (ns_a, ns_b):
            subprocess.run([IP, "-n", ns, "link", "set", "sync0", "up"], check=True)
        a = Node(ns_a, tmp_path / "a", "192.168.3.41", "192.168.3.42", 32768, sock_dir / "a.ctl")
        b = Node(ns_b, tmp_path / "b", "192.168.3.42", "192.168.3.41", hashsize_b, sock_dir / "b.ctl")
        nodes.extend([a, b])
        return a, b

    class Lab:
        pass

    lab = Lab()
    lab.single = single
    lab.pair = pair
    try:
        yield lab
    finally:
        for node in nodes:
            pids = set(node.our_pids())
            if node.proc is not None:
                pids.add(node.proc.pid)
            for pid in pids:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
                time.sleep(0.05)
            for pid in pids:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for ns in namespaces:
            subprocess.run([IP, "netns", "del", ns], capture_output=True)
        left = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
        assert not any(ns in left for ns in namespaces), left


# --------------------------------------------------------------------------
# tests against a real conntrackd


def test_primary_commits_the_peers_state(lab, tmp_path, syslog_stub):
    """A connection known by the old primary (A) is in B's external cache;
    `HOOK primary` on B puts it into B's kernel table and empties the cache."""
    env, syslog = syslog_stub
    a, b = lab.pair()
    a.start()
    b.start()
    a.inject(sport=40000)

    deadline = time.monotonic() + 10
    while "sport=40000" not in b.ctl("-e").stdout:
        assert time.monotonic() < deadline, "entry never reached B's external cache"
        time.sleep(0.1)
    assert "sport=40000" not in b.kernel_table()

    hook = render_hook(tmp_path, config_path=str(b.conf))
    log_file, state_file = hook_paths(tmp_path)
    before = now_ms()
    res = run_hook(hook, "primary", ns=b.ns, env=env)
    after = now_ms()

    assert res.returncode == 0, res.stderr
    log = log_file.read_text()
    steps = step_lines(log, "primary")
    for step in PRIMARY_STEPS:
        assert step in steps, log
        assert steps[step]["rc"] == "0" and steps[step]["res"] == "ok", log
    assert "check-flush" in steps and "still holds" not in log, log
    assert "done: " in log and "FAILURES" not in log

    # the connection is now known by B's kernel
    assert "sport=40000" in b.kernel_table()
    assert "sport=40000" not in b.ctl("-e").stdout
    assert "Committed 1 new entries" in b.daemon_log.read_text()

    role, ms = read_state(state_file)
    assert role == "primary" and before <= ms <= after

    calls = syslog.read_text().splitlines()
    for step in PRIMARY_STEPS:
        assert any(c.startswith("-t hafw-conntrackd -p daemon.info -- primary: step="
                                f"{step} rc=0") for c in calls), calls


def test_primary_with_empty_external_cache(lab, tmp_path, syslog_stub):
    env, _ = syslog_stub
    node = lab.single().start()
    hook = render_hook(tmp_path, config_path=str(node.conf))
    log_file, state_file = hook_paths(tmp_path)

    res = run_hook(hook, "primary", ns=node.ns, env=env)

    assert res.returncode == 0
    steps = step_lines(log_file.read_text(), "primary")
    assert all(steps[s]["rc"] == "0" for s in PRIMARY_STEPS), log_file.read_text()
    assert "Committed 0 new entries" in node.daemon_log.read_text()
    assert read_state(state_file)[0] == "primary"


def test_flush_ignored_by_conntrackd_is_reported(lab, tmp_path, syslog_stub):
    """conntrackd 1.4.7 with HashSize <= 8192 ends its commit in one step and
    then ignores every flush ("commit still in progress") while answering
    success.  The hook must not stay silent about it."""
    env, _ = syslog_stub
    a, b = lab.pair(hashsize_b=8192)
    a.start()
    b.start()
    a.inject(sport=40002)
    deadline = time.monotonic() + 10
    while "sport=40002" not in b.ctl("-e").stdout:
        assert time.monotonic() < deadline, "entry never reached B's external cache"
        time.sleep(0.1)

    hook = render_hook(tmp_path, config_path=str(b.conf))
    log_file, _ = hook_paths(tmp_path)
    res = run_hook(hook, "primary", ns=b.ns, env=env)

    assert res.returncode == 0
    log = log_file.read_text()
    assert "sport=40002" in b.kernel_table()
    ignored = "ignoring flush command" in b.daemon_log.read_text()
    warned = "external cache still holds 1 entries after flush" in log
    still_cached = "sport=40002" in b.ctl("-e").stdout
    # Either conntrackd flushed (a fixed version), or the hook said it did not.
    assert ignored == warned == still_cached, (ignored, warned, still_cached, log)


def test_backup_fault_stop_with_running_daemon(lab, tmp_path, syslog_stub):
    env, _ = syslog_stub
    node = lab.single().start()
    hook = render_hook(tmp_path, config_path=str(node.conf))
    log_file, state_file = hook_paths(tmp_path)

    res = run_hook(hook, "backup", ns=node.ns, env=env)
    assert res.returncode == 0
    steps = step_lines(log_file.read_text(), "backup")
    assert [s for s in steps] == ["probe", "purge-timers", "request-resync"]
    assert all(m["rc"] == "0" for m in steps.values())
    assert read_state(state_file)[0] == "backup"
    assert "flushing conntrack table in 60 secs" in node.daemon_log.read_text()
    assert "resync requested" in node.daemon_log.read_text()

    res = run_hook(hook, "fault", ns=node.ns, env=env)
    assert res.returncode == 0
    assert list(step_lines(log_file.read_text(), "fault")) == ["purge-timers"]
    assert read_state(state_file)[0] == "fault"

    res = run_hook(hook, "stop", ns=node.ns, env=env)
    assert res.returncode == 0
    assert list(step_lines(log_file.read_text(), "stop")) == [
        "probe", "purge-timers", "request-resync"]
    assert read_state(state_file)[0] == "stop"
    assert node.our_pids() == [node.pid], "no second conntrackd may appear"


def test_conntrackd_not_running(lab, tmp_path, syslog_stub):
    """Every step fails fast and clearly; the hook still exits 0."""
    env, syslog = syslog_stub
    node = lab.single()                      # configured, never started
    hook = render_hook(tmp_path, config_path=str(node.conf), timeout_s=5)
    log_file, state_file = hook_paths(tmp_path)

    res = run_hook(hook, "primary", ns=node.ns, env=env)

    assert res.returncode == 0
    assert res.elapsed < 5, "a refused connection must not wait for the timeout"
    log = log_file.read_text()
    steps = step_lines(log, "primary")
    for step in PRIMARY_STEPS:
        assert steps[step]["res"] == "FAILED" and steps[step]["rc"] == "1", log
    assert "can't connect: is conntrackd running?" in log
    assert "done with FAILURES: commit flush resync bulk" in log
    assert "NOT committed" in log
    assert read_state(state_file)[0] == "primary"
    errs = [c for c in syslog.read_text().splitlines() if "-p daemon.err" in c]
    assert any("step=commit rc=1" in c for c in errs), errs

    # backup with the upstream auto-start disabled: clear failure, exit 0,
    # nothing started
    env_no = dict(env, HAFW_HOOK_START_IF_DOWN="no")
    res = run_hook(hook, "backup", ns=node.ns, env=env_no)
    assert res.returncode == 0
    log = log_file.read_text()
    assert "not running and HAFW_HOOK_START_IF_DOWN=no" in log
    assert "done with FAILURES: probe purge-timers request-resync" in log
    assert node.our_pids() == []

    res = run_hook(hook, "fault", ns=node.ns, env=env)
    assert res.returncode == 0
    assert step_lines(log_file.read_text(), "fault")["purge-timers"]["rc"] == "1"

    # stop never starts conntrackd
    res = run_hook(hook, "stop", ns=node.ns, env=env)
    assert res.returncode == 0
    assert "nothing else to do on stop" in log_file.read_text()
    assert node.our_pids() == []


def test_backup_restarts_a_crashed_daemon(lab, tmp_path, syslog_stub):
    """Upstream's backup branch: stale lock removed, conntrackd started."""
    env, _ = syslog_stub
    node = lab.single().start()
    os.kill(node.pid, signal.SIGKILL)
    node.proc.wait(timeout=5)
    assert node.lock.exists(), "a killed conntrackd leaves its lock file"

    hook = render_hook(tmp_path, config_path=str(node.conf))
    log_file, _ = hook_paths(tmp_path)
    res = run_hook(hook, "backup", ns=node.ns, env=env)

    assert res.returncode == 0
    log = log_file.read_text()
    assert "was not stopped cleanly" in log and "removing the stale lock" in log
    steps = step_lines(log, "backup")
    assert steps["probe"]["res"] == "FAILED"
    assert steps["start"]["rc"] == "0"
    assert steps["purge-timers"]["rc"] == "0" and steps["request-resync"]["rc"] == "0"
    assert "FAILURES" not in log, log
    assert len(node.our_pids()) == 1           # the hook's conntrackd
    assert node.ctl("-s").returncode == 0


def test_hung_daemon_is_bounded_by_the_timeout(lab, tmp_path, syslog_stub):
    env, _ = syslog_stub
    node = lab.single().start()
    hook = render_hook(tmp_path, config_path=str(node.conf), timeout_s=1)
    log_file, state_file = hook_paths(tmp_path)
    os.kill(node.pid, signal.SIGSTOP)
    try:
        res = run_hook(hook, "primary", ns=node.ns, env=env)
        assert res.returncode == 0
        # 4 steps x (1 s + at most 2 s kill grace) + slack
        assert res.elapsed < 4 * 3 + 3, res.elapsed
        steps = step_lines(log_file.read_text(), "primary")
        for step in PRIMARY_STEPS:
            assert steps[step]["rc"] in ("124", "137"), log_file.read_text()
        assert "timed out after 1s" in log_file.read_text()
        assert read_state(state_file)[0] == "primary"

        # a hung daemon is not "not running": no lock removal, no 2nd daemon
        res = run_hook(hook, "backup", ns=node.ns, env=env)
        assert res.returncode == 0
        assert "may be hung; not starting a second instance" in log_file.read_text()
        assert node.lock.exists()
        assert node.our_pids() == [node.pid]
    finally:
        os.kill(node.pid, signal.SIGCONT)


# --------------------------------------------------------------------------
# tests with a fake conntrackd (no kernel needed)


FAKE = """#!/bin/sh
printf '%s\\n' "$*" >>"{calls}"
case "$*" in
  *"-s cache"*) printf 'cache:internal\\tactive objects:\\t0\\n'
                printf 'cache:external\\tactive objects:\\t0\\n' ;;
esac
if [ -n "$FAKE_SLEEP" ]; then echo $$ >"{calls}.pid"; exec sleep "$FAKE_SLEEP"; fi
exit 0
"""


@pytest.fixture
def fake(tmp_path, syslog_stub):
    calls = tmp_path / "calls.txt"
    fake_bin = tmp_path / "fake-conntrackd"
    fake_bin.write_text(FAKE.format(calls=calls))
    fake_bin.chmod(0o755)
    (tmp_path / "conntrackd.conf").write_text("General {\n  LockFile /nonexistent/lock\n}\n")
    hook = render_hook(tmp_path, conntrackd_bin=str(fake_bin))
    env, syslog = syslog_stub
    return hook, calls, env


def calls_of(calls: Path) -> list[str]:
    if not calls.exists():
        return []
    return [" ".join(line.split()[2:]) for line in calls.read_text().splitlines()]


@pytest.mark.parametrize("argv,expected", [
    (["primary"], ["-c", "-f", "-s cache", "-R", "-B"]),
    (["master"], ["-c", "-f", "-s cache", "-R", "-B"]),
    (["MASTER", "extra", "args"], ["-c", "-f", "-s cache", "-R", "-B"]),
    (["GROUP", "G1", "MASTER", "100"], ["-c", "-f", "-s cache", "-R", "-B"]),
    (["backup"], ["-s", "-t", "-n"]),
    (["INSTANCE", "VI_1", "BACKUP", "80"], ["-s", "-t", "-n"]),
    (["fault"], ["-t"]),
    (["stop"], ["-s", "-t", "-n"]),
])
def test_transitions_run_upstreams_commands(fake, tmp_path, argv, expected):
    hook, calls, env = fake
    res = run_hook(hook, *argv, env=env)
    assert res.returncode == 0, res.stderr
    assert calls_of(calls) == expected
    conf = str(tmp_path / "conntrackd.conf")
    assert all(line.split()[:2] == ["-C", conf] for line in calls.read_text().splitlines())


@pytest.mark.parametrize("argv", [[], ["bogus"], ["--frob", "primary"], ["GROUP", "G1"],
                                  ["deleted"], ["--timeout"]])
def test_usage_errors_exit_2(fake, tmp_path, argv):
    hook, calls, env = fake
    res = run_hook(hook, *argv, env=env)
    assert res.returncode == 2
    assert "usage:" in res.stderr
    assert calls_of(calls) == []
    assert not (tmp_path / "run" / "hafw-role").exists()


def test_help_exits_0(fake):
    hook, calls, env = fake
    res = run_hook(hook, "--help", env=env)
    assert res.returncode == 0 and "usage:" in res.stdout


def test_missing_binary_is_logged_and_ignored(tmp_path, syslog_stub):
    env, _ = syslog_stub
    hook = render_hook(tmp_path, conntrackd_bin=str(tmp_path / "no-such-conntrackd"))
    log_file, state_file = hook_paths(tmp_path)
    res = run_hook(hook, "primary", env=env)
    assert res.returncode == 0
    steps = step_lines(log_file.read_text(), "primary")
    assert all(steps[s]["rc"] == "127" for s in PRIMARY_STEPS)
    assert "command not found or not executable" in log_file.read_text()
    assert read_state(state_file)[0] == "primary"


def test_options_and_env_override_the_template(fake, tmp_path):
    hook, calls, env = fake
    other_log = tmp_path / "elsewhere" / "x.log"
    other_state = tmp_path / "elsewhere" / "role"
    res = run_hook(hook, "--log-file", other_log, "--state-file", other_state, "fault", env=env)
    assert res.returncode == 0
    assert "fault: step=purge-timers rc=0" in other_log.read_text()
    assert read_state(other_state)[0] == "fault"

    env2 = dict(env, HAFW_HOOK_LOG_FILE=str(tmp_path / "env.log"))
    assert run_hook(hook, "fault", env=env2).returncode == 0
    assert "fault: step=purge-timers" in (tmp_path / "env.log").read_text()

    # "timeout 0" would disable the guard: refused
    res = run_hook(hook, "--timeout", "0", "fault", env=env2)
    assert res.returncode == 0
    log = (tmp_path / "env.log").read_text()
    assert "would disable the guard, using 10 s" in log
    assert "timeout 10s per step" in log.splitlines()[-3]
    # no scratch files left next to the state file
    assert not list((tmp_path / "run").glob(".hafw-hook-out.*"))
    assert not list(other_state.parent.glob(".hafw-hook-out.*"))


def test_quotes_in_rendered_values_are_safe(tmp_path, syslog_stub):
    env, _ = syslog_stub
    odd = tmp_path / "it's a dir"
    hook = render_hook(tmp_path, conntrackd_bin=str(tmp_path / "none"),
                       log_file=str(odd / "h.log"), state_file=str(odd / "role $(x)"))
    assert run_hook(hook, "fault", env=env).returncode == 0
    assert (odd / "h.log").exists()
    assert read_state(odd / "role $(x)")[0] == "fault"


def test_a_later_transition_wins_over_a_delayed_one(fake, tmp_path):
    """Two hooks at once (keepalived does not wait for notify scripts): the
    one invoked first but run last must not undo the later one."""
    hook, calls, env = fake
    log_file, state_file = hook_paths(tmp_path)
    state_file.parent.mkdir(parents=True)
    with open(f"{state_file}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        delayed = subprocess.Popen([str(hook), "primary"], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)
        later = now_ms()
        state_file.write_text(f"backup {later}\n")   # as if run in between
        fcntl.flock(lock, fcntl.LOCK_UN)
    delayed.communicate(timeout=30)
    assert delayed.returncode == 0
    assert "superseded by 'backup'" in log_file.read_text()
    assert calls_of(calls) == []
    assert read_state(state_file) == ("backup", later)


def test_no_contention_never_skips(fake, tmp_path):
    """A state file 'from the future' (clock stepped back) must not make a
    real transition look stale when no other hook is running."""
    hook, calls, env = fake
    _, state_file = hook_paths(tmp_path)
    state_file.parent.mkdir(parents=True)
    state_file.write_text(f"backup {now_ms() + 3_600_000}\n")
    assert run_hook(hook, "primary", env=env).returncode == 0
    assert calls_of(calls)[0] == "-c"
    assert read_state(state_file)[0] == "primary"


def test_sigterm_stops_the_hook_and_its_client(tmp_path, syslog_stub):
    """keepalived sends SIGTERM to scripts when it stops: the hook must end
    at once, kill the running client and say so."""
    env, _ = syslog_stub
    calls = tmp_path / "calls.txt"
    fake_bin = tmp_path / "fake-conntrackd"
    fake_bin.write_text(FAKE.format(calls=calls))
    fake_bin.chmod(0o755)
    hook = render_hook(tmp_path, conntrackd_bin=str(fake_bin), timeout_s=30)
    log_file, _ = hook_paths(tmp_path)
    proc = subprocess.Popen([str(hook), "primary"], env=dict(env, FAKE_SLEEP="60"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pidfile = Path(f"{calls}.pid")
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client = int(pidfile.read_text())
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=5) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - t0 < 3
    deadline = time.monotonic() + 5
    while pid_alive(client):
        assert time.monotonic() < deadline, "the conntrackd client survived"
        time.sleep(0.05)
    assert "terminated by SIGTERM during step 'commit'" in log_file.read_text()


# --------------------------------------------------------------------------
# inject mode (DisableExternalCache; docs/takeover.md)

LOOP_RX = re.compile(r"refresh loop started \(pid (\d+),")


@pytest.fixture
def fake_inject(tmp_path, syslog_stub):
    """The fake conntrackd behind a hook rendered for inject mode; every
    refresh loop it starts is killed at the end, also on failure."""
    calls = tmp_path / "calls.txt"
    fake_bin = tmp_path / "fake-conntrackd"
    fake_bin.write_text(FAKE.format(calls=calls))
    fake_bin.chmod(0o755)
    (tmp_path / "conntrackd.conf").write_text("General {\n  LockFile /nonexistent/lock\n}\n")
    hook = render_hook(tmp_path, conntrackd_bin=str(fake_bin), inject="yes", refresh_s=3600)
    env, _ = syslog_stub
    log_file, _ = hook_paths(tmp_path)
    yield hook, calls, env
    text = log_file.read_text() if log_file.exists() else ""
    for pid in map(int, LOOP_RX.findall(text)):
        if pid_alive(pid) and "refresh-loop" in cmdline(pid):
            os.kill(pid, signal.SIGKILL)


def loops_started(log_file: Path) -> list[int]:
    return [int(p) for p in LOOP_RX.findall(log_file.read_text())]


@pytest.mark.parametrize("argv,expected", [
    (["primary"], ["-f internal", "-R", "-B"]),
    (["backup"], ["-s", "-f internal", "-n"]),
    (["fault"], ["-f internal"]),
    (["stop"], ["-s", "-f internal", "-n"]),
])
def test_inject_mode_commits_nothing_and_never_purges(fake_inject, tmp_path, argv, expected):
    """Nothing to commit (the states are in the kernel already); leaving
    primary forgets the own connections (-f internal) instead of purging the
    kernel table (-t), which is the replica now."""
    hook, calls, env = fake_inject
    res = run_hook(hook, *argv, env=env)
    assert res.returncode == 0, res.stderr
    assert calls_of(calls) == expected
    log_file, _ = hook_paths(tmp_path)
    assert bool(loops_started(log_file)) == (argv == ["backup"])


def test_refresh_start_only_on_an_inject_backup(fake_inject, tmp_path):
    """Salt's "refresh-start" (after a restart or a new hook) starts the loop on a backup only."""
    hook, calls, env = fake_inject
    log_file, state_file = hook_paths(tmp_path)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(f"primary {now_ms()}\n")
    assert run_hook(hook, "refresh-start", env=env).returncode == 0
    assert not log_file.exists() or loops_started(log_file) == []
    state_file.write_text(f"backup {now_ms()}\n")
    assert run_hook(hook, "refresh-start", env=env).returncode == 0
    assert len(loops_started(log_file)) == 1
    assert calls_of(calls) == []  # no conntrackd call, no gate change: only the loop


def test_inject_refresh_loop_runs_while_backup(fake_inject, tmp_path):
    """The backup's loop asks for a resync every REFRESH_S seconds, runs
    once per node, and ends when the node is no longer backup."""
    hook, calls, env = fake_inject
    env = dict(env, HAFW_HOOK_REFRESH_S="1")
    log_file, state_file = hook_paths(tmp_path)
    assert run_hook(hook, "backup", env=env).returncode == 0
    assert run_hook(hook, "backup", env=env).returncode == 0
    first, second = loops_started(log_file)
    deadline = time.monotonic() + 10
    while pid_alive(second):  # the lock is held by the first loop
        assert time.monotonic() < deadline, "a second refresh loop kept running"
        time.sleep(0.05)
    assert pid_alive(first)
    before = calls_of(calls).count("-n")
    time.sleep(3.5)
    assert calls_of(calls).count("-n") - before >= 2
    assert run_hook(hook, "primary", env=env).returncode == 0
    deadline = time.monotonic() + 5
    while pid_alive(first):
        assert time.monotonic() < deadline, "the refresh loop outlived the backup role"
        time.sleep(0.05)
    assert "refresh: the role is now 'primary': stopping" in log_file.read_text()
    assert log_file.read_text().count("refresh: every 1s") == 1


# --------------------------------------------------------------------------
# the takeover gate with the nftables backend (docs/takeover.md)

NFT = shutil.which("nft") or "/usr/sbin/nft"


@pytest.fixture
def nft_netns(tmp_path):
    """A namespace holding the model's nft script of fw-cent7i (table ip hafw, gate chains)."""
    _require_lab()
    if not os.access(NFT, os.X_OK):
        pytest.skip("nft not available")
    import sys
    sys.path.insert(0, str(REPO / "_utils"))
    import hafw_model
    import yaml

    pillar = yaml.safe_load((REPO / "pillar.example").read_text())["hafw"]
    pillar["clusters"]["fw-pair"]["firewall"]["backend"] = "nftables"
    node = hafw_model.node(pillar, "fw-cent7i")
    script = tmp_path / "hafw.nft"
    script.write_text(node["firewall"]["nftables"])
    ns = f"hfhk{secrets.token_hex(2)}"
    subprocess.run([IP, "netns", "add", ns], check=True)
    try:
        subprocess.run(ns_exec(ns, NFT, "-f", script), check=True)
        yield ns, node["conntrackd"]
    finally:
        subprocess.run([IP, "netns", "delete", ns], check=False)


def gate_hook_rules(ns):
    out = subprocess.run(ns_exec(ns, NFT, "list", "chain", "ip", "hafw", "gate_hook"),
                         capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip().startswith("jump")]


def test_nftables_gate_closes_on_backup_and_opens_on_primary(nft_netns, fake, tmp_path):
    ns, ctd = nft_netns
    _, calls, env = fake
    hook = render_hook(tmp_path, name="nft-hook.sh", conntrackd_bin=str(tmp_path / "fake-conntrackd"),
                       gate_chain=ctd["gate_chain"], gate_table=ctd["gate_table"],
                       gate_backend=ctd["gate_backend"], nft_bin=NFT)
    log_file, _ = hook_paths(tmp_path)
    assert gate_hook_rules(ns) == []  # the ruleset loads open
    for _ in range(2):  # closing twice leaves one jump
        assert run_hook(hook, "backup", ns=ns, env=env).returncode == 0
        assert gate_hook_rules(ns) == ["jump gate"]
    assert run_hook(hook, "primary", ns=ns, env=env).returncode == 0
    assert gate_hook_rules(ns) == []
    steps = step_lines(log_file.read_text(), "primary")
    assert steps["gate-open"]["rc"] == "0"
    # after a reload of the table (a converge), gate-sync follows the role file
    subprocess.run(ns_exec(ns, NFT, "add", "rule", "ip", "hafw", "gate_hook", "jump", "gate"), check=True)
    assert run_hook(hook, "gate-sync", ns=ns, env=env).returncode == 0
    assert gate_hook_rules(ns) == []
    assert run_hook(hook, "fault", ns=ns, env=env).returncode == 0
    assert gate_hook_rules(ns) == ["jump gate"]


# --------------------------------------------------------------------------
# the resync hold: keepalived's vrrp_script "HOOK synced" after a boot

COUNTING = """#!/bin/sh
case "$*" in
  *"-s cache"*) printf 'cache:external\\tactive objects:\\t%s\\n' "$(cat {count})" ;;
esac
exit 0
"""


def test_synced_holds_while_the_replica_grows(tmp_path, syslog_stub):
    """Fails while the external cache is empty, grows by more than 2,000
    entries a second, or for the first 2 s; then passes, for good (a marker, so that a
    loaded machine answers at once), and after hold_max_s whatever the count."""
    env, _ = syslog_stub
    count = tmp_path / "count"
    count.write_text("0")
    fake_bin = tmp_path / "counting-conntrackd"
    fake_bin.write_text(COUNTING.format(count=count))
    fake_bin.chmod(0o755)
    hook = render_hook(tmp_path, conntrackd_bin=str(fake_bin), hold_max_s=60)
    log_file, state_file = hook_paths(tmp_path)
    marker = Path(f"{state_file}.synced")

    def synced():
        return run_hook(hook, "synced", env=env).returncode

    assert synced() == 1  # the first look: no rate yet
    time.sleep(2.1)
    assert synced() == 1  # empty and still for 2 s: the peer has not started sending yet
    for n in (50_000, 120_000, 190_000):  # a resync arriving: ~70k entries a second
        count.write_text(str(n))
        time.sleep(1.0)
        assert synced() == 1, n
    time.sleep(1.1)  # no growth for a second
    assert synced() == 0
    assert marker.exists() and "synced: the replica holds 190000 entries" in log_file.read_text()
    count.write_text("900000")  # growth after the pass no longer matters
    assert synced() == 0

    # a peer that never answers must not keep the node out of VRRP for ever
    marker.unlink()
    hook = render_hook(tmp_path, name="hook2.sh", conntrackd_bin=str(tmp_path / "absent"), hold_max_s=2)
    assert run_hook(hook, "synced", env=env).returncode == 1
    time.sleep(2.2)
    assert run_hook(hook, "synced", env=env).returncode == 0
    assert "still not settled after 2s (replica: -1 entries): letting VRRP run" in log_file.read_text()
