"""The SELinux policy module selinux/files/hafw_conntrackd_hook.te.

What is checked:
  * it compiles with the plain module toolchain (checkmodule -M -m, then
    semodule_package), i.e. without the refpolicy devel Makefile, exactly as
    the Salt state builds it on a minion;
  * the "every rule explained" promise: each `allow` line comes right after a
    comment line;
  * every type, class and permission an allow rule uses is declared in a
    require block visible from that rule (the module's global one, or the
    enclosing optional's own);
  * linked against small stand-in base policies, the optional/else blocks grant
    exactly the rules meant for each policy generation (with and without a
    conntrackd policy module) and nothing the seed's daemon-side rules did.

The tools come from Debian's checkpolicy and semodule-utils packages (RHEL:
checkpolicy and policycoreutils). A test whose tool is missing is skipped with
the package to install.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TE = REPO / "selinux" / "files" / "hafw_conntrackd_hook.te"
MODULE = "hafw_conntrackd_hook"

CHECKMODULE = shutil.which("checkmodule")
SEMODULE_PACKAGE = shutil.which("semodule_package")
SEMODULE_LINK = shutil.which("semodule_link")
SEMODULE_EXPAND = shutil.which("semodule_expand")
CHECKPOLICY = shutil.which("checkpolicy")

needs_build_tools = pytest.mark.skipif(
    not (CHECKMODULE and SEMODULE_PACKAGE),
    reason="checkmodule/semodule_package not installed "
    "(Debian: apt-get install checkpolicy semodule-utils; "
    "RHEL: dnf install checkpolicy policycoreutils)",
)
needs_link_tools = pytest.mark.skipif(
    not (CHECKMODULE and SEMODULE_PACKAGE and SEMODULE_LINK and SEMODULE_EXPAND and CHECKPOLICY),
    reason="checkmodule, checkpolicy, semodule_package, semodule_link and "
    "semodule_expand are needed (Debian: apt-get install checkpolicy semodule-utils)",
)


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def build_pp(tmp_path: Path) -> Path:
    """checkmodule + semodule_package, as on the minion; returns the .pp path."""
    mod = tmp_path / f"{MODULE}.mod"
    pp = tmp_path / f"{MODULE}.pp"
    res = run([CHECKMODULE, "-M", "-m", "-o", str(mod), str(TE)], tmp_path)
    assert res.returncode == 0, f"checkmodule failed:\n{res.stdout}{res.stderr}"
    res = run([SEMODULE_PACKAGE, "-o", str(pp), "-m", str(mod)], tmp_path)
    assert res.returncode == 0, f"semodule_package failed:\n{res.stdout}{res.stderr}"
    return pp


# --- a small parser for the module language subset the file uses ------------


@dataclass
class Scope:
    """The global scope, an optional block, or an optional's else block."""

    kind: str  # "global" | "optional" | "else"
    parent: Scope | None = None
    types: set[str] = field(default_factory=set)
    classes: dict[str, set[str]] = field(default_factory=dict)
    rules: list[tuple[int, str]] = field(default_factory=list)

    def visible(self) -> tuple[set[str], dict[str, set[str]]]:
        """Names a rule here may use: its own require plus its parents'.

        An else block may not have a require of its own (the compiler
        refuses one), and its parent is the optional's parent, not the
        optional: it sees the global declarations only.
        """
        types: set[str] = set()
        classes: dict[str, set[str]] = {}
        scope: Scope | None = self
        while scope is not None:
            types |= scope.types
            for cls, perms in scope.classes.items():
                classes.setdefault(cls, set()).update(perms)
            scope = scope.parent
        return types, classes


def strip_comment(line: str) -> str:
    return line.split("#", 1)[0]


def parse_te(text: str) -> list[Scope]:
    """Split the file into scopes and collect require declarations and rules."""
    lines = text.splitlines()
    root = Scope("global")
    scopes = [root]
    stack: list[tuple[str, Scope]] = [("scope", root)]  # what each '{' opened
    in_require = False
    # Join multi-line statements: require bodies and rules are read line by
    # line, blocks are tracked by their braces.
    for lineno, raw in enumerate(lines, 1):
        code = strip_comment(raw).strip()
        if not code:
            continue
        current = next(s for k, s in reversed(stack) if k == "scope")
        if re.fullmatch(r"optional\s*\{", code):
            scope = Scope("optional", parent=current)
            scopes.append(scope)
            stack.append(("scope", scope))
            continue
        m = re.fullmatch(r"\}\s*else\s*\{", code)
        if m:
            closed = stack.pop()
            assert closed[0] == "scope" and closed[1].kind == "optional", f"line {lineno}: stray else"
            scope = Scope("else", parent=closed[1].parent)
            scopes.append(scope)
            stack.append(("scope", scope))
            continue
        if re.fullmatch(r"require\s*\{", code):
            in_require = True
            stack.append(("require", current))
            continue
        if code == "}":
            kind, _ = stack.pop()
            if kind == "require":
                in_require = False
            continue
        if in_require:
            m = re.fullmatch(r"type\s+([\w, ]+);", code)
            if m:
                current.types.update(t.strip() for t in m.group(1).split(","))
                continue
            m = re.fullmatch(r"class\s+(\w+)\s+(\{[^}]*\}|\w+)\s*;", code)
            if m:
                perms = m.group(2).strip("{} ").split()
                current.classes.setdefault(m.group(1), set()).update(perms)
                continue
            raise AssertionError(f"line {lineno}: unexpected declaration in require: {raw!r}")
        current.rules.append((lineno, code))
    assert len(stack) == 1, "unbalanced braces in the .te file"
    return scopes


def names(field_text: str) -> list[str]:
    return field_text.strip("{} ").split()


ALLOW = re.compile(
    r"allow\s+(?P<src>\{[^}]*\}|\S+)\s+(?P<tgt>\{[^}]*\}|\S+?)\s*:\s*"
    r"(?P<cls>\{[^}]*\}|\w+)\s+(?P<perms>\{[^}]*\}|\w+)\s*;"
)


# --- tests --------------------------------------------------------------------


def test_te_file_declares_the_module():
    first = next(
        line for line in TE.read_text().splitlines() if strip_comment(line).strip()
    )
    assert first.strip() == f"module {MODULE} 1.0;"


@needs_build_tools
def test_module_compiles_and_packages(tmp_path):
    pp = build_pp(tmp_path)
    assert pp.is_file()
    assert pp.stat().st_size > 0


def test_every_allow_rule_is_preceded_by_a_comment():
    lines = TE.read_text().splitlines()
    allow_lines = [i for i, line in enumerate(lines) if line.lstrip().startswith("allow ")]
    assert allow_lines, "no allow rule found"
    unexplained = [
        f"line {i + 1}: {lines[i].strip()}"
        for i in allow_lines
        if i == 0 or not lines[i - 1].lstrip().startswith("#")
    ]
    assert not unexplained, "allow rules without a comment line right above:\n" + "\n".join(unexplained)


def test_every_rule_uses_only_required_types_classes_and_permissions():
    scopes = parse_te(TE.read_text())
    problems = []
    checked = 0
    for scope in scopes:
        types, classes = scope.visible()
        for lineno, rule in scope.rules:
            if rule.startswith("module "):
                continue
            m = ALLOW.fullmatch(rule)
            assert m, f"line {lineno}: not a single-line allow rule: {rule!r}"
            checked += 1
            for t in names(m.group("src")) + names(m.group("tgt")):
                if t != "self" and t not in types:
                    problems.append(f"line {lineno}: type {t} not in a visible require block")
            for cls in names(m.group("cls")):
                if cls not in classes:
                    problems.append(f"line {lineno}: class {cls} not in a visible require block")
                    continue
                for perm in names(m.group("perms")):
                    if perm not in classes[cls]:
                        problems.append(f"line {lineno}: permission {cls}:{perm} not required")
    assert checked, "no allow rule parsed"
    assert not problems, "\n".join(problems)


def test_no_daemon_side_rule_from_the_seed_is_granted():
    """The seed's rules for running the daemon itself stay out (docs/selinux.md)."""
    text = "\n".join(strip_comment(line) for line in TE.read_text().splitlines())
    for forbidden in (
        "var_lock_t",  # lock file: only the daemon creates/unlinks it
        "name_bind",  # UDP 3780: the daemon's sync channel
        "sys_nice",  # Nice -20: the daemon
        "setsched",  # scheduler: the daemon
        "module_request",  # nfnetlink autoload: the daemon
        "create",  # socket file / lock file creation: the daemon
        "unlink",
        "self:unix_stream_socket",  # the daemon does not run in keepalived_t
    ):
        assert forbidden not in text, f"{forbidden!r} is a daemon-side permission"


# --- linking against stand-in base policies -------------------------------------

BASE_POLICY = """\
class security
class process
class file
class dir
class lnk_file
class sock_file
class unix_stream_socket
class filesystem

sid kernel
sid security

common file { ioctl read write create getattr setattr lock relabelfrom relabelto append unlink link rename execute open map }
common socket { ioctl read write create getattr setattr lock relabelfrom relabelto append bind connect listen accept getopt setopt shutdown recvfrom sendto name_bind }

class security { compute_av }
class process { transition getcap setsched }
class file inherits file { execute_no_trans entrypoint }
class dir inherits file { add_name remove_name reparent search rmdir }
class lnk_file inherits file
class sock_file inherits file
class unix_stream_socket inherits socket { connectto }
class filesystem { associate }

sensitivity s0;
dominance { s0 }
category c0;
level s0:c0;

mlsconstrain file { read } ( l1 dom l2 );

type kernel_t;
type keepalived_t;
type var_run_t;
type var_lock_t;
type unconfined_service_t;
@EXTRA_TYPES@

allow kernel_t self:process transition;

role system_r;
role system_r types { kernel_t keepalived_t };

user system_u roles { system_r } level s0 range s0 - s0:c0;

sid kernel system_u:system_r:kernel_t:s0
sid security system_u:object_r:kernel_t:s0
"""

CONNTRACKD_TYPES = "type conntrackd_t;\ntype conntrackd_exec_t;\ntype conntrackd_conf_t;\ntype conntrackd_var_run_t;\n"


def linked_keepalived_rules(tmp_path: Path, extra_types: str) -> set[str]:
    """Link the module into a stand-in base, expand, and list keepalived_t's allows."""
    pp = build_pp(tmp_path)
    conf = tmp_path / "base.conf"
    conf.write_text(BASE_POLICY.replace("@EXTRA_TYPES@", extra_types))
    base_mod, base_pp = tmp_path / "base.mod", tmp_path / "base.pp"
    linked, binary, text = tmp_path / "linked.lnk", tmp_path / "policy.bin", tmp_path / "policy.conf"
    for cmd in (
        [CHECKMODULE, "-M", "-o", str(base_mod), str(conf)],
        [SEMODULE_PACKAGE, "-o", str(base_pp), "-m", str(base_mod)],
        [SEMODULE_LINK, "-o", str(linked), str(base_pp), str(pp)],
        [SEMODULE_EXPAND, str(linked), str(binary)],
        [CHECKPOLICY, "-M", "-b", "-F", "-o", str(text), str(binary)],
    ):
        res = run(cmd, tmp_path)
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}{res.stderr}"
    rules = set()
    for line in text.read_text().splitlines():
        if line.startswith("allow keepalived_t "):
            m = ALLOW.fullmatch(line.strip())
            assert m, line
            rules.add(f"{m.group('tgt')}:{m.group('cls')} " + " ".join(sorted(names(m.group("perms")))))
    return rules


@needs_link_tools
def test_policy_with_a_conntrackd_module_gets_only_the_conntrackd_branch(tmp_path):
    assert linked_keepalived_rules(tmp_path, CONNTRACKD_TYPES) == {
        "var_run_t:lnk_file read",
        "conntrackd_exec_t:file execute execute_no_trans getattr map open read",
        "conntrackd_conf_t:dir getattr search",
        "conntrackd_conf_t:file getattr ioctl open read",
        "conntrackd_var_run_t:sock_file write",
        "conntrackd_t:unix_stream_socket connectto",
    }


@needs_link_tools
def test_policy_without_a_conntrackd_module_gets_only_the_else_branch(tmp_path):
    assert linked_keepalived_rules(tmp_path, "") == {
        "var_run_t:lnk_file read",
        "var_run_t:sock_file write",
        "unconfined_service_t:unix_stream_socket connectto",
    }


@needs_link_tools
def test_an_incomplete_conntrackd_module_falls_back_to_the_else_branch(tmp_path):
    # The optional block needs all four conntrackd types; with only some of
    # them the daemon's socket cannot be conntrackd_var_run_t, so the else
    # branch (unconfined daemon, var_run_t socket) applies.
    assert linked_keepalived_rules(tmp_path, "type conntrackd_t;\ntype conntrackd_exec_t;\n") == {
        "var_run_t:lnk_file read",
        "var_run_t:sock_file write",
        "unconfined_service_t:unix_stream_socket connectto",
    }
