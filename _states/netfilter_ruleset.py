"""
Apply a node's whole netfilter ruleset from its persistent file, atomically,
and only when the live ruleset has drifted from it.

The file is the one the distribution loads at boot (``/etc/iptables/rules.v4``,
``/etc/sysconfig/iptables``, or an nft script included from the nftables
service's configuration), so what runs now and what runs after a reboot are
the same text. It is applied in one transaction (``iptables-restore FILE`` or
``nft -f FILE``), never rule by rule: there is no moment where half of the
new ruleset is live.

Drift detection:

iptables
    Table by table, ``iptables-save -t TABLE`` (comments and counters
    stripped) is compared with the file's section for that table. The file
    must therefore be in the canonical form ``iptables-save`` prints, which
    the hafw model renders. Tables the file does not mention are not looked
    at, and ``iptables-restore`` leaves them alone.

nftables
    ``nft list table`` does not print the input back byte for byte, so the
    listing taken right after the last apply is kept, with the file's
    sha256, in a small JSON file under the minion's cachedir. The ruleset is
    re-applied when the file changed since, or when the live listing no
    longer matches the kept one (someone changed the table by hand).

.. code-block:: yaml

    hafw-iptables-ruleset-applied:
      netfilter_ruleset.applied:
        - name: /etc/iptables/rules.v4
        - backend: iptables
        - require:
          - file: hafw-iptables-rules-file

    hafw-iptables-ruleset-applied:
      netfilter_ruleset.applied:
        - name: /etc/hafw/hafw.nft
        - backend: nftables
        - table: hafw
        - family: ip
"""

import difflib
import hashlib
import json
import os
import re

import salt.utils.files

__virtualname__ = "netfilter_ruleset"

BACKENDS = ("iptables", "nftables")
MAX_DIFF_LINES = 200
# built-in chains of the tables ``absent`` resets (iptables-save's order)
BUILTIN_CHAINS = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
_CHAIN_COUNTERS = re.compile(r"^(:\S+ \S+) \[\d+:\d+\]$")
_RULE_COUNTERS = re.compile(r"^\[\d+:\d+\] +")


def __virtual__():
    if __grains__.get("kernel") != "Linux":
        return (False, "netfilter_ruleset: netfilter exists on Linux only")
    return __virtualname__


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _run(cmd, **kwargs):
    """Run an argument list without a shell; never raise on a non-zero exit."""
    return __salt__["cmd.run_all"](cmd, python_shell=False, ignore_retcode=True, **kwargs)


def _failed(res):
    """The tool's own message for a failed command (stderr, else stdout)."""
    return (res.get("stderr") or res.get("stdout") or "").strip() or f"exit code {res['retcode']}"


def _diff(old, new, fromfile, tofile):
    """A unified diff of two texts, cut to MAX_DIFF_LINES lines."""
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(),
                                      fromfile, tofile, lineterm=""))
    if len(lines) > MAX_DIFF_LINES:
        lines = lines[:MAX_DIFF_LINES] + [f"... ({len(lines) - MAX_DIFF_LINES} more lines)"]
    return "\n".join(lines)


def _read(path):
    with salt.utils.files.fopen(path, "r") as fh:
        return fh.read()


def _ipt_tables(text):
    """
    Split iptables-save/-restore text into ``{table: [lines]}``, each from
    ``*table`` to ``COMMIT``, with comments, blank lines and packet counters
    dropped: what remains is what the kernel holds.
    """
    tables, current = {}, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = line[1:]
            tables[current] = [line]
            continue
        if current is None:
            continue
        line = _RULE_COUNTERS.sub("", _CHAIN_COUNTERS.sub(r"\1", line))
        tables[current].append(line)
        if line == "COMMIT":
            current = None
    return tables


def _ipt_drift(wanted, ignore_live=()):
    """
    Compare each table of ``wanted`` (``_ipt_tables`` output) with the live
    one, leaving out the live rules listed in ``ignore_live`` (rules another
    actor owns). Return ``(diff, error)``; an empty diff means no drift.
    """
    diffs = []
    for table, lines in wanted.items():
        res = _run(["iptables-save", "-t", table])
        if res["retcode"] != 0:
            return None, f"iptables-save -t {table} failed: {_failed(res)}"
        live = [ln for ln in _ipt_tables(res["stdout"]).get(table, []) if ln not in ignore_live]
        if live != lines:
            diffs.append(_diff("\n".join(live), "\n".join(lines),
                               f"live *{table}", f"wanted *{table}"))
    return "\n".join(diffs), None


def _ipt_empty(tables):
    """iptables-restore input resetting ``tables`` to empty accept-all chains."""
    lines = []
    for table in tables:
        lines.append(f"*{table}")
        lines += [f":{chain} ACCEPT [0:0]" for chain in BUILTIN_CHAINS[table]]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _nft_listing(family, table, ignore=()):
    """``nft -s list table`` (counters left out) without the lines in ``ignore``
    (compared stripped), or None when the table does not exist."""
    res = _run(["nft", "-s", "list", "table", family, table])
    if res["retcode"] != 0:
        return None
    lines = [line for line in res["stdout"].strip().splitlines() if line.strip() not in ignore]
    return "\n".join(lines) + "\n"


def _nft_state_file(name, family, table):
    base = f"{name.strip('/').replace('/', '_')}.{family}.{table}.json"
    return os.path.join(__opts__["cachedir"], "hafw", "netfilter_ruleset", base)


def _nft_load_state(path):
    try:
        with salt.utils.files.fopen(path, "r") as fh:
            state = json.load(fh)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _nft_save_state(path, state):
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with salt.utils.files.fopen(path, "w") as fh:
        json.dump(state, fh, indent=1, sort_keys=True)


# ---------------------------------------------------------------------------
# states
# ---------------------------------------------------------------------------
def applied(name, backend="iptables", table="hafw", family="ip", ignore_live=(), on_applied=None):
    """
    Make the live ruleset the one in file ``name``, in one transaction, when
    it differs.

    name
        The persistent ruleset file: ``iptables-restore`` input for the
        iptables backend, an nft script for nftables.

    backend
        ``iptables`` (default) or ``nftables``.

    table, family
        nftables only: the table the script replaces (default ``ip hafw``),
        the one whose listing is watched for drift. Other tables are never
        looked at.

    ignore_live
        Live rules that another actor adds and removes, left out of the
        drift check: as ``iptables-save`` prints them, or for nftables as a
        line of ``nft list table`` (``jump gate``). hafw's transition hook
        owns the jump into its takeover gate, for instance.

    on_applied
        A command (argument list) run after a successful apply, when its
        program exists: a restore replaces whole tables, so whoever owns an
        ``ignore_live`` rule is asked to put it back (``hook gate-sync``).

    The changes are ``{"applied": name, "diff": ...}``, the diff going from
    the live ruleset to the wanted one (cut to 200 lines). In test mode
    nothing is applied and the result is None. The file is read as it is on
    disk: put this state after the ``file.managed`` that writes it (whose
    ``check_cmd`` keeps a ruleset the kernel refuses out of the file).

    .. code-block:: yaml

        hafw-iptables-ruleset-applied:
          netfilter_ruleset.applied:
            - name: /etc/iptables/rules.v4
            - backend: iptables

    CLI Example:

    .. code-block:: bash

        salt-call state.single netfilter_ruleset.applied name=/etc/iptables/rules.v4
        salt-call state.single netfilter_ruleset.applied name=/etc/hafw/hafw.nft backend=nftables
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    if backend not in BACKENDS:
        ret["comment"] = f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}"
        return ret
    try:
        text = _read(name)
    except FileNotFoundError:
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"{name} does not exist yet: would apply it once it is written"
        else:
            ret["comment"] = f"{name} does not exist: nothing to apply"
        return ret
    except OSError as exc:
        ret["comment"] = f"cannot read {name}: {exc}"
        return ret
    if backend == "iptables":
        ret = _applied_iptables(ret, name, text, tuple(ignore_live))
    else:
        ret = _applied_nftables(ret, name, text, family, table, tuple(ignore_live))
    if ret["result"] and ret["changes"] and on_applied and not __opts__["test"]:
        _run_on_applied(ret, list(on_applied))
    return ret


def _run_on_applied(ret, cmd):
    if not os.path.exists(cmd[0]):
        ret["comment"] += f"; {cmd[0]} does not exist yet, not run"
        return
    res = _run(cmd)
    if res["retcode"] != 0:
        ret["result"] = False
        ret["comment"] += f"; then {' '.join(cmd)} failed: {_failed(res)}"
    else:
        ret["comment"] += f"; then ran {' '.join(cmd)}"


def _applied_iptables(ret, name, text, ignore_live=()):
    wanted = _ipt_tables(text)
    if not wanted:
        ret["comment"] = f"{name} has no table (no '*nat', '*filter' ... section)"
        return ret
    tables = ", ".join(wanted)
    diff, error = _ipt_drift(wanted, ignore_live)
    if error:
        ret["comment"] = error
        return ret
    if not diff:
        ret["result"] = True
        ret["comment"] = f"the live {tables} tables already match {name}"
        return ret

    ret["changes"] = {"applied": name, "diff": diff}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"would apply {name} with iptables-restore (tables {tables})"
        return ret

    res = _run(["iptables-restore", name])
    if res["retcode"] != 0:
        ret["changes"] = {}
        ret["comment"] = (f"iptables-restore {name} failed; the live ruleset was left "
                          f"as it was: {_failed(res)}")
        return ret
    ret["result"] = True
    ret["comment"] = f"applied {name} with iptables-restore (tables {tables})"
    after, error = _ipt_drift(wanted, ignore_live)
    if error or after:
        # Applied, but the next run would apply it again: say why.
        ret["comment"] += (f"; WARNING: iptables-save does not print it back as written "
                           f"({error or 'the file is not in canonical iptables-save form'}), "
                           "so every run will re-apply it")
    return ret


def _applied_nftables(ret, name, text, family, table, ignore_live=()):
    digest = hashlib.sha256(text.encode()).hexdigest()
    state_file = _nft_state_file(name, family, table)
    last = _nft_load_state(state_file)
    live = _nft_listing(family, table, ignore_live)
    where = f"table {family} {table}"

    if last.get("sha256") == digest and live is not None and live == last.get("listing"):
        ret["result"] = True
        ret["comment"] = f"{where} is as {name} left it when last applied"
        return ret

    if last.get("sha256") == digest and live is not None:
        why = f"{where} was changed outside Salt"
        diff = _diff(live, last.get("listing", ""), f"live {where}", f"{where} as applied last")
    elif live is None:
        why = f"{where} does not exist"
        diff = _diff("", text, f"live {where}", name)
    elif "file" not in last:
        # first run (or the cachedir was wiped): re-applying the same text is harmless
        why = f"{where} was not applied from {name} by this state yet"
        diff = _diff(live, text, f"live {where}", name)
    else:
        why = f"{name} changed since it was last applied"
        diff = _diff(last["file"], text, f"{name} as applied last", name)

    ret["changes"] = {"applied": name, "diff": diff}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"would apply {name} with nft -f: {why}"
        return ret

    res = _run(["nft", "-f", name])
    if res["retcode"] != 0:
        ret["changes"] = {}
        ret["comment"] = (f"nft -f {name} failed; the live ruleset was left as it was: "
                          f"{_failed(res)}")
        return ret
    listing = _nft_listing(family, table, ignore_live)
    if listing is None:
        ret["comment"] = f"nft -f {name} succeeded but {where} does not exist: does {name} create it?"
        return ret
    _nft_save_state(state_file, {"sha256": digest, "listing": listing, "file": text})
    ret["result"] = True
    ret["comment"] = f"applied {name} with nft -f ({why})"
    return ret


def absent(name, backend="iptables", tables=("nat", "filter"), table="hafw", family="ip"):
    """
    Remove the ruleset that ``applied`` put in place.

    name
        The persistent ruleset file ``applied`` was given (only used to find
        the nftables drift record, which is removed; the file itself is left
        to ``file.absent``).

    backend
        ``iptables`` (default) or ``nftables``.

    tables
        iptables only: the tables reset, in one ``iptables-restore``, to
        empty built-in chains with policy ACCEPT (default ``nat`` and
        ``filter``, the tables hafw manages).

    table, family
        nftables only: the table deleted (default ``ip hafw``). Other tables
        are left alone.

    .. code-block:: yaml

        hafw-iptables-ruleset-absent:
          netfilter_ruleset.absent:
            - name: /etc/iptables/rules.v4
            - backend: iptables

    CLI Example:

    .. code-block:: bash

        salt-call state.single netfilter_ruleset.absent name=/etc/hafw/hafw.nft backend=nftables
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    if backend not in BACKENDS:
        ret["comment"] = f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}"
        return ret
    if backend == "nftables":
        return _absent_nftables(ret, name, family, table)

    tables = list(tables)
    unknown = [t for t in tables if t not in BUILTIN_CHAINS]
    if unknown:
        ret["comment"] = f"cannot reset table(s) {', '.join(unknown)}: known are {', '.join(BUILTIN_CHAINS)}"
        return ret
    empty = _ipt_empty(tables)
    diff, error = _ipt_drift(_ipt_tables(empty))
    if error:
        ret["comment"] = error
        return ret
    if not diff:
        ret["result"] = True
        ret["comment"] = f"tables {', '.join(tables)} are already empty and accept everything"
        return ret
    ret["changes"] = {"flushed": tables, "diff": diff}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"would reset tables {', '.join(tables)} to empty accept-all chains"
        return ret
    res = _run(["iptables-restore"], stdin=empty, stdin_raw_newlines=True)
    if res["retcode"] != 0:
        ret["changes"] = {}
        ret["comment"] = f"iptables-restore of the empty ruleset failed: {_failed(res)}"
        return ret
    ret["result"] = True
    ret["comment"] = f"reset tables {', '.join(tables)} to empty accept-all chains"
    return ret


def _absent_nftables(ret, name, family, table):
    where = f"table {family} {table}"
    state_file = _nft_state_file(name, family, table)
    live = _nft_listing(family, table)
    if live is None:
        if not __opts__["test"] and os.path.exists(state_file):
            os.unlink(state_file)
        ret["result"] = True
        ret["comment"] = f"{where} does not exist"
        return ret
    ret["changes"] = {"deleted": where, "diff": _diff(live, "", f"live {where}", "(none)")}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"would delete {where}"
        return ret
    res = _run(["nft", "delete", "table", family, table])
    if res["retcode"] != 0:
        ret["changes"] = {}
        ret["comment"] = f"nft delete table {family} {table} failed: {_failed(res)}"
        return ret
    if os.path.exists(state_file):
        os.unlink(state_file)
    ret["result"] = True
    ret["comment"] = f"deleted {where}"
    return ret
