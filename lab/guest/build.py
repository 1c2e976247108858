"""
The guest's boot files, built once and cached: Debian's kernel (as the ELF
vmlinux qemu boots directly), its modules with a modules.dep, and a tiny
initramfs (static busybox, the virtio/9p/overlay modules, lab/guest/init).

Both packages come from Debian's archive with ``apt-get download`` (the
kernel is the one ``linux-image-amd64`` depends on now) and are unpacked
with ``dpkg -x``: nothing is installed on this machine. The cache lives in
``$HAFW_CACHE/guest`` (default ``<repo>/.cache/guest``), one directory per
kernel version, written under a temporary name and renamed when complete,
so an interrupted build is never taken for a finished one.
"""

import lzma
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..names import LabError

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KERNEL_META = "linux-image-amd64"
BUSYBOX = "busybox-static"
# what /init needs before the root is mounted: virtio PCI, the 9p transport, overlayfs
INITRAMFS_MODULES = (
    "drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko", "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko", "net/9p/9pnet.ko", "net/9p/9pnet_virtio.ko",
    "fs/netfs/netfs.ko", "fs/fscache/fscache.ko", "fs/9p/9p.ko", "fs/overlayfs/overlay.ko",
)
XZ_MAGIC = b"\xfd7zXZ\x00"


def cache_root():
    return Path(os.environ.get("HAFW_CACHE") or REPO / ".cache") / "guest"


def _run(argv, **kw):
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode:
        raise LabError("guest build: %s failed (%d): %s" % (" ".join(argv), proc.returncode,
                                                              (proc.stderr or proc.stdout).strip()[-800:]))
    return proc.stdout


def kernel_package():
    """The versioned kernel package linux-image-amd64 depends on (e.g. linux-image-6.1.0-56-amd64)."""
    for attempt in (1, 2):
        out = subprocess.run(["apt-cache", "depends", KERNEL_META], capture_output=True, text=True).stdout
        for line in out.splitlines():
            dep = line.strip().removeprefix("Depends: ")
            if dep.startswith("linux-image-") and dep != KERNEL_META and dep.endswith("-amd64"):
                return dep
        if attempt == 1:  # no package lists yet (a fresh machine): fetch them once
            _run(["apt-get", "update", "-q"])
    raise LabError("guest build: apt-cache knows no kernel behind %s" % KERNEL_META)


def _download(package, into):
    """apt-get download PACKAGE into a directory, unpacked there with dpkg -x; returns the root."""
    debs = into / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    # apt drops to the _apt user for downloads: that user must be able to write here
    os.chmod(debs, 0o777)
    _run(["apt-get", "download", "-q", package], cwd=debs)
    (deb,) = debs.glob(package + "_*.deb")
    root = into / package
    _run(["dpkg", "-x", str(deb), str(root)])
    deb.unlink()
    return root


def extract_vmlinux(vmlinuz, out):
    """Debian's bzImage carries an xz-compressed ELF: qemu boots that ELF directly (PVH note, no BIOS)."""
    data = Path(vmlinuz).read_bytes()
    start = data.find(XZ_MAGIC)
    if start < 0:
        raise LabError("guest build: %s holds no xz payload" % vmlinuz)
    Path(out).write_bytes(lzma.LZMADecompressor().decompress(data[start:]))


def _initramfs(busybox, modules_dir, version, out):
    """A newc cpio (gzip) with busybox, the early modules, their modules.dep and /init."""
    with tempfile.TemporaryDirectory(prefix="hafw-initramfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "proc", "sys", "dev", "lower", "rw", "newroot", "out"):
            (root / d).mkdir()
        shutil.copy2(busybox, root / "bin" / "busybox")
        for rel in INITRAMFS_MODULES:
            dest = root / "lib/modules" / version / "kernel" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(modules_dir / "kernel" / rel, dest)
        _run(["depmod", "-b", str(root), version])
        shutil.copy2(HERE / "init", root / "init")
        os.chmod(root / "init", 0o755)
        names = _run(["find", "."], cwd=root)
        cpio = subprocess.run([str(busybox), "cpio", "-o", "-H", "newc"], input=names.encode(), cwd=root,
                              capture_output=True, check=True).stdout
        import gzip  # pylint: disable=import-outside-toplevel

        Path(out).write_bytes(gzip.compress(cpio, compresslevel=1))


def ensure(progress=None):
    """
    The cached boot files, built if missing: a dict with ``vmlinux``,
    ``initramfs``, ``modules`` (the directory to bind on /lib/modules/<version>),
    ``busybox`` and ``version``.
    """
    say = progress or (lambda text: print("guest: " + text, file=sys.stderr, flush=True))
    package = kernel_package()
    version = package.removeprefix("linux-image-")
    final = cache_root() / version
    files = {"vmlinux": final / "vmlinux", "initramfs": final / "initramfs.cpio.gz",
             "modules": final / "modules" / version, "busybox": final / "busybox", "version": version,
             "dir": final}
    if (final / "complete").exists():
        return files
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
    try:
        say(f"fetching {package} and {BUSYBOX} from Debian's archive (once; cached in {final.parent})")
        kernel_root = _download(package, work)
        bb_root = _download(BUSYBOX, work)
        say("extracting vmlinux, running depmod, packing the initramfs")
        extract_vmlinux(kernel_root / "boot" / f"vmlinuz-{version}", work / "vmlinux")
        modules = work / "modules" / version
        modules.parent.mkdir()
        shutil.move(kernel_root / "lib" / "modules" / version, modules)
        # the .deb ships no modules.dep: make it (depmod -b wants <base>/lib/modules/<version>)
        base = work / "depmod-base"
        (base / "lib" / "modules").mkdir(parents=True)
        (base / "lib" / "modules" / version).symlink_to(modules)
        _run(["depmod", "-b", str(base), version])
        shutil.rmtree(base)
        shutil.copy2(bb_root / "bin" / "busybox", work / "busybox")
        _initramfs(work / "busybox", modules, version, work / "initramfs.cpio.gz")
        shutil.rmtree(kernel_root)
        shutil.rmtree(bb_root)
        shutil.rmtree(work / "debs")
        (work / "complete").write_text(package + "\n")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return files
