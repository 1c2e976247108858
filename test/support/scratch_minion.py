"""
A scratch masterless minion whose ``salt-call --local`` (the venv's) runs
inside a network namespace, for the functional tests that let Salt itself
apply a tree of the formula.

Everything it writes lands under the test's tmp_path (``minion/``):

* ``minion``: the config. file_roots = the overlay (when there is one), then
  the repository; the loader finds the formula's _states/_modules/_utils
  through ``states_dirs`` & co, as after ``saltutil.sync_all``;
* ``pillar/``: a top file mapping ``data`` (the pillar: pillar.example
  itself, or the test's dict) and ``lookup`` (``hafw:lookup``, with which a
  test moves every path a tree writes under tmp_path);
* ``overlay/``: SLS files standing in for the repository's (stubs), if any.

Needs root and iproute2 (``ip netns exec``); the callers skip otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from lab.salt import formula_root

REPO = Path(__file__).resolve().parents[2]
SALT_CALL = Path(sys.executable).with_name("salt-call")
IP = shutil.which("ip") or "/usr/sbin/ip"


def ns_run(ns, *cmd, check=True, stdin=None):
    """Run cmd in namespace ns; raise AssertionError on failure when check."""
    proc = subprocess.run([IP, "netns", "exec", ns, *map(str, cmd)], capture_output=True,
                          text=True, timeout=120, input=stdin)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}): {proc.stderr}")
    return proc


def changes(states):
    return {sid: s["changes"] for sid, s in states.items() if s["changes"]}


def failed(states):
    return {sid: s["comment"] for sid, s in states.items() if s["result"] is False}


class ScratchMinion:
    """A scratch masterless minion whose salt-call runs inside a namespace.

    pillar: the ``data`` pillar, a dict; None copies pillar.example as is.
    lookup: the ``hafw:lookup`` dict.
    overlay: {path relative to file_roots: text} of SLS files that take the
    repository's place (e.g. a stub install.sls); none by default.
    default_sls: what ``apply()`` applies when given no SLS.
    """

    def __init__(self, tmp_path: Path, ns: str, node: str, *, lookup: dict,
                 pillar: dict | None = None, overlay: dict[str, str] | None = None,
                 default_sls: str | None = None):
        self.ns = ns
        self.default_sls = default_sls
        self.root = tmp_path / "minion"
        file_roots = [str(formula_root())]
        if overlay:
            overlay_dir = self.root / "overlay"
            for rel, text in overlay.items():
                (overlay_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                (overlay_dir / rel).write_text(text)
            file_roots.insert(0, str(overlay_dir))
        pillar_dir = self.root / "pillar"
        pillar_dir.mkdir(parents=True)
        (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - data\n    - lookup\n")
        if pillar is None:
            shutil.copyfile(REPO / "pillar.example", pillar_dir / "data.sls")
        else:
            (pillar_dir / "data.sls").write_text(yaml.safe_dump(pillar))
        (pillar_dir / "lookup.sls").write_text(yaml.safe_dump({"hafw": {"lookup": lookup}}))
        conf = {
            "id": node,
            "file_client": "local",
            "file_roots": {"base": file_roots},
            "pillar_roots": {"base": [str(pillar_dir)]},
            "root_dir": str(self.root),
            "states_dirs": [str(REPO / "_states")],
            "module_dirs": [str(REPO / "_modules")],
            "utils_dirs": [str(REPO / "_utils")],
            "grains": {"os_family": "Debian"},
            "grains_cache": False,
            "enable_fqdns_grains": False,
            "enable_gpu_grains": False,
            "log_level_logfile": "quiet",
        }
        (self.root / "minion").write_text(yaml.safe_dump(conf))

    def call(self, *args):
        """Run salt-call in the namespace; return the parsed ``local`` result."""
        proc = ns_run(self.ns, SALT_CALL, "--local", "-c", self.root, "--out=json",
                      "--log-level=quiet", *args, check=False)
        try:
            return json.loads(proc.stdout)["local"]
        except (ValueError, KeyError):
            raise AssertionError(f"salt-call {args}: rc {proc.returncode}\n"
                                 f"{proc.stdout}\n{proc.stderr}") from None

    def apply(self, sls=None, test=False):
        """state.apply sls (default_sls if None); return {state ID: result}."""
        if sls is None:
            sls = self.default_sls
        assert sls, "no SLS to apply and no default_sls"
        ret = self.call("state.apply", sls, *(["test=True"] if test else []))
        assert isinstance(ret, dict), f"{sls} did not render: {ret}"
        return {v["__id__"]: v for v in ret.values()}

    def single(self, fun, **kwargs):
        """state.single fun with kwargs; return its one result."""
        ret = self.call("state.single", fun, *[f"{k}={v}" for k, v in kwargs.items()])
        assert isinstance(ret, dict), ret
        (only,) = ret.values()
        return only
