"""
The ipvs execution module on real kernels.

This machine's kernel has no IPVS: here the module is loaded by a real Salt
loader to check what it says about that. The IPVS tests proper run in a
qemu guest booted from Debian's kernel (lab/guest/run.py): one guest for
the whole module, running test/guest/test_ipvs_in_guest.py (a load-balancer
pair in network namespaces; its docstring says what it checks). The guest's
output is printed when it fails; its wall time is printed always.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUEST_TEST = "test/guest/test_ipvs_in_guest.py"
# seconds: boot, Salt's import under emulation, the tests (80-130 s here); the guest's own limit is 600 s,
# this one only catches a run that has become several times slower
GUEST_BUDGET = 540


@pytest.fixture(scope="module")
def host_loader(tmp_path_factory):
    import salt.config
    import salt.loader

    root = tmp_path_factory.mktemp("salt")
    opts = salt.config.minion_config(None)
    opts.update({"id": "lb-cent7g", "file_client": "local", "root_dir": str(root), "cachedir": str(root / "cache"),
                 "extension_modules": str(root / "extmods"), "module_dirs": [str(REPO / "_modules")],
                 "utils_dirs": [str(REPO / "_utils")], "pillar": {},
                 "grains": {"kernel": "Linux", "os": "Debian", "os_family": "Debian"}})
    return salt.loader.minion_mods(opts, utils=salt.loader.utils(opts))


def test_a_kernel_without_ipvs_is_named(host_loader):
    if os.path.exists("/proc/net/ip_vs"):
        pytest.skip("this kernel has IPVS loaded")
    if not shutil.which("ipvsadm", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
        assert "ipvs.count" not in host_loader
        pytest.skip("ipvsadm is not installed: __virtual__ refuses the module (checked above)")
    from salt.exceptions import CommandExecutionError

    for fun in ("ipvs.count", "ipvs.connections", "ipvs.services", "ipvs.sync_status", "ipvs.summary"):
        with pytest.raises(CommandExecutionError, match=r"^the kernel has no IPVS: modprobe ip_vs$"):
            host_loader[fun]()


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed (make setup installs qemu-system-x86)")
    from lab.guest.run import run

    out_dir = tmp_path_factory.mktemp("guest")
    started = time.monotonic()
    result = run([str(REPO / ".venv/bin/python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", GUEST_TEST],
                 cwd=REPO, timeout=600, out_dir=out_dir, progress=False)
    wall = time.monotonic() - started
    sys.stderr.write(f"\nipvs guest run: {wall:.0f} s wall time (qemu {result.seconds:.0f} s), rc {result.rc}\n")
    return result, wall


@pytest.mark.ipvs_guest
def test_ipvs_in_the_guest(guest):
    result, wall = guest
    summary = result.output.strip().splitlines()[-1] if result.output.strip() else ""
    assert result.rc == 0, f"the guest's tests failed (rc {result.rc}):\n{result.output}"
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, result.output
    assert wall < GUEST_BUDGET, f"the guest run took {wall:.0f} s (budget {GUEST_BUDGET} s):\n{result.output}"
