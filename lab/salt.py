"""
Salt inside a lab host: a masterless minion whose file_roots is this
repository's formula (formula_root) and whose pillar is a given dict (pillar.example by default).

The config goes to the host's own /etc/salt (an overlay: the real /etc is
untouched); salt-call is the project's .venv one, run inside the host's
namespaces so every state acts on that host only.
"""

import json
import pathlib
import shutil
import tempfile

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
SALT_CALL = str(REPO / ".venv" / "bin" / "salt-call")


# Top-level entries of the repository that are not the formula: a fileserver
# root must not hold them (nor .venv, .cache, .git, .pytest-tmp, .lab-run):
# Salt walks its roots and every minion decodes the file list it is sent,
# which under the IPVS guest's emulation cost minutes per state.apply.
NOT_FORMULA = frozenset({"lab", "test", "tools", "bench", "docs", "lab-report", "__pycache__"})


def formula_root():
    """
    The formula alone, as a file_roots directory: symlinks to the repository's
    formula entries (SLS trees, top.sls, _modules & co, reactor), in
    .cache/formula-root, rebuilt when the entries change.
    """
    entries = sorted(p.name for p in REPO.iterdir() if not p.name.startswith(".") and p.name not in NOT_FORMULA)
    root = REPO / ".cache" / "formula-root"
    if root.is_dir() and sorted(p.name for p in root.iterdir()) == entries \
            and all((root / e).resolve() == REPO / e for e in entries):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".formula-root-", dir=root.parent))
    for entry in entries:
        (tmp / entry).symlink_to(REPO / entry)
    tmp.chmod(0o755)
    old = root.with_name(tmp.name + ".old")
    if root.exists():
        root.rename(old)
    tmp.rename(root)
    shutil.rmtree(old, ignore_errors=True)
    return root


def example_pillar():
    return yaml.safe_load((REPO / "pillar.example").read_text())


def node_interfaces(pillar, minion_id):
    """{ifname: cidr | [cidr, ...]} of a node in the pillar's hafw clusters."""
    for cluster in pillar["hafw"]["clusters"].values():
        if minion_id in cluster["nodes"]:
            return cluster["nodes"][minion_id]["interfaces"]
    raise KeyError(f"{minion_id} is in no cluster of the pillar")


def configure_masterless(host, minion_id, pillar):
    """Write the host's /etc/salt: local file client, this repo, the pillar."""
    minion = {
        "id": minion_id,
        "file_client": "local",
        "file_roots": {"base": [str(formula_root())]},
        "pillar_roots": {"base": ["/etc/salt/pillar"]},
        "pillar_safe_render_error": False,  # show the real error, not "see master log"
        # lab hosts have systemctl but no systemd: Salt would load its systemd
        # module in "offline" mode, where service.running never starts a
        # stopped daemon. Only debian_service (/etc/init.d) manages services.
        "disable_modules": ["systemd_service"],
        "log_level_logfile": "info",
    }
    host.exec(["mkdir", "-p", "/etc/salt/pillar"])
    host.exec(["tee", "/etc/salt/minion"], input=yaml.safe_dump(minion))
    host.exec(["tee", "/etc/salt/pillar/top.sls"], input="base:\n  '*':\n    - hafw\n")
    host.exec(["tee", "/etc/salt/pillar/hafw.sls"], input=yaml.safe_dump(pillar))


def salt_call(host, *args, timeout=300):
    """Run salt-call --local in the host; return (retcode, parsed 'local' return)."""
    proc = host.exec([SALT_CALL, "--local", "--out", "json", "--retcode-passthrough", *args],
                     check=False, timeout=timeout)
    try:
        return proc.returncode, json.loads(proc.stdout)["local"]
    except (ValueError, KeyError):
        raise RuntimeError(f"salt-call {' '.join(args)} printed no JSON (rc {proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}") from None


def state_failures(result):
    """{state id: comment} of every state that did not succeed (render errors: a list)."""
    if not isinstance(result, dict):
        return {"render": result}
    return {v.get("__id__", k): v.get("comment") for k, v in result.items() if v.get("result") is not True}


def state_changes(result):
    return {v.get("__id__", k): v["changes"] for k, v in result.items() if v.get("changes")}
