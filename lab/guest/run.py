"""
Run one command inside a qemu guest that has IPVS (this machine's kernel does not).

    result = run([".venv/bin/python", "-m", "pytest", "test/guest"], timeout=600)
    result.rc, result.output, result.out_dir   # out_dir: the guest's writable share

The guest boots Debian's kernel (lab/guest/build.py) under TCG (this host's
/dev/kvm cannot run a stock kernel), sees this machine's / read-only under a
tmpfs overlay (so the repository, its .venv and every installed daemon are
there, at the same paths) and has **no network device**: all its traffic
stays on the lab's bridges inside it. The command, its environment and its
working directory travel through a second, writable 9p share, which also
brings back its output, its exit code and any result files it writes to
``$HAFW_GUEST_OUT``. A progress line shows the boot and the command's own
progress lines (those starting with ``lab:`` or ``guest:``).
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..names import LabError
from . import build

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GUEST_OUT = "/run/hafw-out"  # where the share is mounted in the guest (lab/guest/init)
QEMU = "qemu-system-x86_64"


@dataclass
class GuestResult:
    rc: int
    output: str  # the command's stdout and stderr
    console: str  # the kernel console (boot, init, stage2)
    out_dir: Path
    seconds: float


def qemu_argv(files, out_dir, memory_mb, cpus, rw_mb, nics=()):
    """The qemu command line: TCG, the root and the out share over 9p, serial console.

    nics: (tap, mac) pairs: virtio NICs whose host ends are existing taps (a
    lab's switch namespace; qemu must run there). None: no network device.
    """
    append = " ".join([
        "console=ttyS0", "quiet", "panic=-1",
        f"hafw.stage2={HERE / 'stage2'}", f"hafw.modules={files['modules']}", f"hafw.rwsize={rw_mb}m",
    ])
    net = ["-nic", "none"]
    if nics:
        net = []
        for i, (tap, mac) in enumerate(nics):
            net += ["-netdev", f"tap,id=n{i},ifname={tap},script=no,downscript=no",
                    "-device", f"virtio-net-pci,netdev=n{i},mac={mac},romfile="]  # no iPXE ROM: no PXE
    return [
        QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(cpus), "-m", str(memory_mb),
        "-nographic", "-no-reboot", *net, "-kernel", str(files["vmlinux"]),
        "-initrd", str(files["initramfs"]), "-append", append,
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={out_dir},mount_tag=out,security_model=passthrough",
    ]


class _Progress:
    """One line, rewritten in place on a terminal (one line per change otherwise)."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.tty, self.last = stream, stream.isatty(), None

    def show(self, text):
        if text == self.last:
            return
        self.last = text
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self):
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


def _last_marker(text, prefixes=("hafw-guest:", "lab:", "guest:")):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith(prefixes):
            return line
    return ""


def _read(path):
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


class Guest:
    """
    One guest running one command, in the background: ``start()``, then
    ``wait()`` or ``kill()``. ``netns``: run qemu in that network namespace
    (where the taps of ``nics`` are); the guest has no other network device.
    """

    def __init__(self, argv, *, cwd=REPO, env=None, out_dir=None, memory_mb=3072, cpus=None, rw_mb=1024,
                 nics=(), netns=None):
        self.argv, self.cwd, self.env = list(argv), cwd, dict(env or {})
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="hafw-guest-"))
        self.memory_mb, self.cpus, self.rw_mb = memory_mb, cpus or min(2, os.cpu_count() or 1), rw_mb
        self.nics, self.netns = list(nics), netns
        self.proc = self.started = self.files = None

    @property
    def console_path(self):
        return self.out_dir / "console.log"

    def start(self):
        if not shutil.which(QEMU):
            raise LabError(f"{QEMU} is not installed (make setup installs qemu-system-x86)")
        self.files = build.ensure()
        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("rc", "output.log", "console.log"):
            (out / stale).unlink(missing_ok=True)
        (out / "command").write_bytes(b"".join(os.fsencode(a) + b"\0" for a in self.argv))
        (out / "cwd").write_text(str(self.cwd))
        env = {**self.env, "HAFW_GUEST_OUT": GUEST_OUT}
        (out / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        argv = qemu_argv(self.files, out, self.memory_mb, self.cpus, self.rw_mb, self.nics)
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.started = time.monotonic()
        with open(self.console_path, "wb") as console:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def marker(self):
        """The last progress line of the command or, before it runs, of the boot."""
        return (_last_marker(_read(self.out_dir / "output.log")) or _last_marker(_read(self.console_path))
                or "booting Debian " + self.files["version"])

    def kill(self):
        """Power off hard: SIGKILL the qemu this object started (its own process group)."""
        if self.running():
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def wait(self, timeout, progress=True):
        """Wait for the command to end (the guest powers off); a GuestResult. Killed after timeout s."""
        bar = _Progress() if progress else None
        try:
            while self.running():
                elapsed = time.monotonic() - self.started
                if elapsed > timeout:
                    raise LabError(f"the guest ran past its {timeout} s limit; console: {self.console_path}")
                if bar:
                    bar.show(f"guest [{elapsed:5.0f} s] {self.marker()}"[:160])
                time.sleep(0.5)
        finally:
            self.kill()
            if bar:
                bar.done()
        return self.result()

    def result(self):
        rc_text = _read(self.out_dir / "rc").strip()
        result = GuestResult(rc=int(rc_text) if rc_text.lstrip("-").isdigit() else -1,
                             output=_read(self.out_dir / "output.log"), console=_read(self.console_path),
                             out_dir=self.out_dir, seconds=time.monotonic() - self.started)
        if result.rc == -1:
            raise LabError("the guest stopped without running its command to the end (qemu exit %s); "
                           "console tail:\n%s" % (self.proc.returncode,
                                                  "\n".join(result.console.splitlines()[-25:])))
        return result


def run(argv, *, timeout=900, progress=True, **kwargs):
    """
    Boot the guest, run argv there (cwd and env as given; HAFW_GUEST_OUT names
    the result share inside), power off, return a GuestResult. The guest is
    killed (by the pid of the qemu this call started) after ``timeout`` seconds.
    """
    return Guest(argv, **kwargs).start().wait(timeout, progress)
