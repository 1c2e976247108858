"""
Golden files: what the formula renders for every node of pillar.example on
each OS family, kept under test/fixtures/golden/<family>/<node>/ and reviewed
like code. `make golden` rewrites them (then read `git diff`); the test
suite renders again and compares.

    python -m tools.golden [--check]
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = REPO / "test" / "fixtures" / "golden"
FAMILIES = ("Debian", "RedHat")


def nodes(pillar=REPO / "pillar.example"):
    clusters = yaml.safe_load(pillar.read_text())["hafw"]["clusters"]
    return sorted(n for c in clusters.values() for n in c["nodes"])


def render(node, family, out, *, sls=None, pillar=None, clean=False, timeout=None):
    """Render node's files for family under out with tools.render (all of hafw from
    pillar.example unless sls/pillar say otherwise; clean: empty out first)."""
    cmd = [sys.executable, "-m", "tools.render", "--node", node, "--os-family", family, "--out", str(out)]
    if sls is not None:
        cmd += ["--sls", sls]
    if pillar is not None:
        cmd += ["--pillar", str(pillar)]
    if clean:
        cmd.append("--clean")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"render {node}/{family} failed:\n{proc.stderr}")


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = parser.parse_args()
    stale = []
    for family in FAMILIES:
        for node in nodes():
            with tempfile.TemporaryDirectory() as tmp:
                render(node, family, pathlib.Path(tmp))
                fresh, golden_dir = tree(pathlib.Path(tmp)), GOLDEN / family / node
                if fresh == (tree(golden_dir) if golden_dir.exists() else {}):
                    continue
                stale.append(f"{family}/{node}")
                if not args.check:
                    subprocess.run(["rm", "-rf", str(golden_dir)], check=True)
                    for rel, data in fresh.items():
                        (golden_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                        (golden_dir / rel).write_bytes(data)
    for name in stale:
        print(("differs: " if args.check else "updated: ") + name)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
