"""The source-build script refuses a tarball whose sha256 is not the pinned one.

conntrackd/files/build-from-source.sh.jinja is rendered with Jinja2 into
tmp_path and run on tiny fake tarballs.  The refusal tests check that the
script exits non-zero *before extracting anything* (no build directory, no
prefix).  One positive control runs the whole pipeline on fake packages whose
"configure" only writes a Makefile, so the refusal tests cannot pass for a
wrong reason (e.g. a script that always fails); it also checks the build
order and that a second run does nothing.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import jinja2
import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "conntrackd" / "files" / "build-from-source.sh.jinja"


def render(tmp_path: Path, tarballs: list[dict], **extra) -> Path:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    text = env.from_string(TEMPLATE.read_text()).render(
        tarballs=tarballs,
        prefix=str(extra.get("prefix", tmp_path / "prefix")),
        workdir=str(extra.get("workdir", tmp_path / "work")),
    )
    script = tmp_path / "build-from-source.sh"
    script.write_text(text)
    script.chmod(0o755)
    return script


def make_tarball(path: Path, topdir: str, files: dict[str, tuple[str, int]]) -> str:
    """A .tar.bz2 with files under topdir/; returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:bz2") as tar:
        for name, (content, mode) in files.items():
            data = content.encode()
            info = tarfile.TarInfo(f"{topdir}/{name}")
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entry(name, version, sha256, workdir: Path) -> dict:
    return {
        "name": name,
        "version": version,
        "url": f"https://www.netfilter.org/projects/{name}/files/{name}-{version}.tar.bz2",
        "sha256": sha256,
    }


def run(script: Path, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(script)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def fake_package(workdir: Path, name: str, version: str, log: Path) -> str:
    configure = (
        "#!/bin/sh\n"
        'prefix=/nonexistent\n'
        'for a in "$@"; do case $a in --prefix=*) prefix=${a#--prefix=} ;; esac; done\n'
        f'echo "configure {name} PKG_CONFIG_PATH=$PKG_CONFIG_PATH" >>"{log}"\n'
        "cat >Makefile <<EOF\n"
        "all:\n"
        f"\t@echo make {name} >>{log}\n"
        "install:\n"
        f"\t@echo install {name} >>{log}\n"
        "\tmkdir -p $prefix/sbin\n"
        "\tcp fake-conntrackd $prefix/sbin/conntrackd\n"
        "EOF\n"
    )
    daemon = (
        "#!/bin/sh\n"
        f'[ "$1" = -v ] && echo "Connection tracking userspace daemon v{version}. '
        'Licensed under GPLv2."\n'
    )
    return make_tarball(
        workdir / f"{name}-{version}.tar.bz2",
        f"{name}-{version}",
        {"configure": (configure, 0o755), "fake-conntrackd": (daemon, 0o755)},
    )


def assert_nothing_extracted(tmp_path: Path):
    assert not (tmp_path / "work" / "build").exists()
    assert not (tmp_path / "prefix").exists()


# --------------------------------------------------------------------------


def test_wrong_hash_is_refused_before_extracting(tmp_path):
    work = tmp_path / "work"
    real = make_tarball(work / "libnetfilter_cttimeout-1.0.0.tar.bz2",
                        "libnetfilter_cttimeout-1.0.0",
                        {"configure": ("#!/bin/sh\nexit 0\n", 0o755)})
    wrong = hashlib.sha256(b"something else").hexdigest()
    script = render(tmp_path, [
        entry("libnetfilter_cttimeout", "1.0.0", wrong, work),
        entry("conntrack-tools", "1.4.3", wrong, work),
    ])

    res = run(script)

    assert res.returncode != 0
    assert "sha256 mismatch" in res.stderr
    assert f"expected {wrong}, got {real}" in res.stderr
    assert "refusing to extract anything" in res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("changed=no comment=")
    assert_nothing_extracted(tmp_path)


def test_a_bad_later_tarball_stops_the_build_before_the_first_is_extracted(tmp_path):
    work = tmp_path / "work"
    good = make_tarball(work / "libnetfilter_cttimeout-1.0.0.tar.bz2",
                        "libnetfilter_cttimeout-1.0.0",
                        {"configure": ("#!/bin/sh\nexit 0\n", 0o755)})
    make_tarball(work / "conntrack-tools-1.4.3.tar.bz2", "conntrack-tools-1.4.3",
                 {"configure": ("#!/bin/sh\nexit 0\n", 0o755)})
    script = render(tmp_path, [
        entry("libnetfilter_cttimeout", "1.0.0", good, work),
        entry("conntrack-tools", "1.4.3", "ab" * 32, work),
    ])

    res = run(script)

    assert res.returncode != 0
    assert "libnetfilter_cttimeout 1.0.0: sha256 ok" in res.stderr
    assert "conntrack-tools 1.4.3: sha256 mismatch" in res.stderr
    assert_nothing_extracted(tmp_path)


@pytest.mark.parametrize("pinned", ["", "abc", "g" * 64, "0" * 63])
def test_a_missing_or_malformed_pin_is_refused(tmp_path, pinned):
    work = tmp_path / "work"
    make_tarball(work / "conntrack-tools-1.4.3.tar.bz2", "conntrack-tools-1.4.3",
                 {"configure": ("#!/bin/sh\nexit 0\n", 0o755)})
    script = render(tmp_path, [entry("conntrack-tools", "1.4.3", pinned, work)])
    res = run(script)
    assert res.returncode != 0
    assert "no valid sha256 pinned" in res.stderr
    assert_nothing_extracted(tmp_path)


def test_a_missing_tarball_is_refused(tmp_path):
    script = render(tmp_path, [entry("conntrack-tools", "1.4.3", "0" * 64, tmp_path / "work")])
    res = run(script)
    assert res.returncode != 0
    assert "not found" in res.stderr
    assert_nothing_extracted(tmp_path)


@pytest.mark.skipif(not all(shutil.which(t) for t in ("cc", "make", "pkg-config", "tar")),
                    reason="build tools missing")
def test_positive_control_builds_in_order_and_is_idempotent(tmp_path):
    work = tmp_path / "work"
    log = tmp_path / "build.log"
    ct = fake_package(work, "conntrack-tools", "1.4.3", log)
    lib = fake_package(work, "libnetfilter_cttimeout", "1.0.0", log)
    # listed in the wrong order on purpose
    script = render(tmp_path, [
        entry("conntrack-tools", "1.4.3", ct.upper(), work),   # case does not matter
        entry("libnetfilter_cttimeout", "1.0.0", lib, work),
    ])

    res = run(script)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("changed=yes")
    steps = [line.split()[:2] for line in log.read_text().splitlines()]
    assert steps == [
        ["configure", "libnetfilter_cttimeout"], ["make", "libnetfilter_cttimeout"],
        ["install", "libnetfilter_cttimeout"],
        ["configure", "conntrack-tools"], ["make", "conntrack-tools"],
        ["install", "conntrack-tools"],
    ]
    assert f"PKG_CONFIG_PATH={tmp_path}/prefix/lib/pkgconfig" in log.read_text()
    out = subprocess.run([str(tmp_path / "prefix" / "sbin" / "conntrackd"), "-v"],
                         capture_output=True, text=True).stdout
    assert "v1.4.3." in out

    again = run(script)
    assert again.returncode == 0
    assert again.stdout.strip().splitlines()[-1].startswith("changed=no")
    assert len(log.read_text().splitlines()) == 6, "a second run must not rebuild"
