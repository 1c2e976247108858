"""
Run one command inside a qemu guest that has IPVS (this machine's kernel does not).

    result = run([".venv/bin/python", "-m", "lab.guest.lbpath"], timeout=600)
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


def qemu_argv(files, out_dir, memory_mb, cpus, rw_mb):
    """The qemu command line: TCG, no NIC, the root and the out share over 9p, serial console."""
    append = " ".join([
        "console=ttyS0", "quiet", "panic=-1",
        f"hafw.stage2={HERE / 'stage2'}", f"hafw.modules={files['modules']}", f"hafw.rwsize={rw_mb}m",
    ])
    return [
        QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(cpus), "-m", str(memory_mb),
        "-nographic", "-no-reboot", "-nic", "none", "-kernel", str(files["vmlinux"]),
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


def run(argv, *, cwd=REPO, env=None, timeout=900, memory_mb=3072, cpus=None, rw_mb=1024,
        out_dir=None, progress=True):
    """
    Boot the guest, run argv there (cwd and env as given; HAFW_GUEST_OUT names
    the result share), power off, return a GuestResult. The guest is killed
    (by the pid of the qemu this call started) after ``timeout`` seconds.
    """
    if not shutil.which(QEMU):
        raise LabError(f"{QEMU} is not installed (make setup installs qemu-system-x86)")
    files = build.ensure()
    own_dir = out_dir is None
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="hafw-guest-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "output.log", "console.log"):
        (out_dir / stale).unlink(missing_ok=True)
    (out_dir / "command").write_bytes(b"".join(os.fsencode(a) + b"\0" for a in argv))
    (out_dir / "cwd").write_text(str(cwd))
    (out_dir / "env").write_text("".join(f"{k}={v}\n" for k, v in {**(env or {}),
                                                                     "HAFW_GUEST_OUT": GUEST_OUT}.items()))
    cpus = cpus or min(2, os.cpu_count() or 1)
    console_path = out_dir / "console.log"
    bar = _Progress() if progress else None
    started = time.monotonic()
    with open(console_path, "wb") as console:
        proc = subprocess.Popen(qemu_argv(files, out_dir, memory_mb, cpus, rw_mb), stdin=subprocess.DEVNULL,
                                stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while proc.poll() is None:
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise LabError(f"the guest ran past its {timeout} s limit; console: {console_path}")
            if bar:
                marker = _last_marker(_read(out_dir / "output.log")) or _last_marker(_read(console_path))
                bar.show(f"guest [{elapsed:5.0f} s] {marker or 'booting Debian ' + files['version']}"[:160])
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the qemu this call started, and nothing else
            proc.wait()
        if bar:
            bar.done()
    rc_text = _read(out_dir / "rc").strip()
    result = GuestResult(rc=int(rc_text) if rc_text.lstrip("-").isdigit() else -1,
                         output=_read(out_dir / "output.log"), console=_read(console_path),
                         out_dir=out_dir, seconds=time.monotonic() - started)
    if result.rc == -1:
        raise LabError("the guest stopped without running its command to the end (qemu exit %s); "
                       "console tail:\n%s" % (proc.returncode, "\n".join(result.console.splitlines()[-25:])))
    if own_dir and result.rc == 0:
        pass  # the caller reads result files from out_dir; it removes it when done
    return result
