"""Render every file the hafw formula would manage on one node.

    make render NODE=<minion id> OUT=<dir> [OS_FAMILY=RedHat] [PILLAR=<file>]
    python -m tools.render --node fw1 --out /tmp/fw1 [--os-family RedHat]
                           [--pillar FILE] [--repo DIR] [--sls hafw]
                           [--grain KEY=VALUE ...] [--list] [--clean] [-v]

Salt does all the work, in-process and masterless, with nothing executed:

* a throwaway minion config in a temp dir: ``file_client: local``,
  ``file_roots`` = the formula repo, ``pillar_roots`` = a tree whose only
  pillar is the given file (``top.sls``: ``'*': [data]``), ``id`` = NODE, and
  static ``grains`` of the chosen OS family (they override the core grains,
  so the output does not depend on the machine it is rendered on);
* the formula's ``_modules``, ``_states``, ``_utils``, ``_grains``,
  ``_renderers`` and ``_serializers`` are put on the loader's search path
  (``module_dirs``, ``states_dirs``, ...): the same modules a minion gets
  from ``saltutil.sync_all``, without copying them anywhere;
* ``salt.client.Caller(...).cmd("state.show_low_sls", SLS)`` compiles the
  role SLS to low chunks (a list of strings when rendering failed);
* each ``file.managed`` chunk goes through what ``file.managed`` itself does
  before writing: ``format_call`` against the state's signature, the
  ``contents``/``contents_pillar``/``contents_grains`` normalisation and
  ``file.apply_template_on_contents``, or ``file.source_list`` +
  ``file.get_managed`` for a ``source`` (the template gets the same
  ``name``/``source``/``user``/``mode``/context/defaults/extra kwargs), so
  the bytes are those the state would write to a new file.

Everything is rendered in memory first; only when every file rendered is
anything written under OUT (mirroring the absolute paths: OUT/etc/...). On
any error the messages go to stderr, OUT is left untouched, exit code 2.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_RENDER_ERROR = 2

# formula directory -> minion option that puts it on the loader's search path
EXTENSION_DIRS = {
    "_modules": "module_dirs",
    "_states": "states_dirs",
    "_utils": "utils_dirs",
    "_grains": "grains_dirs",
    "_renderers": "render_dirs",
    "_serializers": "serializers_dirs",
}

# Static grains per OS family, as Salt 3008 reports them on a stock install.
OS_GRAINS = {
    "Debian": {
        "os": "Debian",
        "os_family": "Debian",
        "osfullname": "Debian",
        "osrelease": "12",
        "osrelease_info": [12],
        "osmajorrelease": 12,
        "osfinger": "Debian-12",
        "oscodename": "bookworm",
        "lsb_distrib_id": "Debian",
        "lsb_distrib_release": "12",
        "lsb_distrib_codename": "bookworm",
        "init": "systemd",
        "selinux": {"enabled": False, "enforced": "Disabled"},
    },
    "RedHat": {
        "os": "Rocky",
        "os_family": "RedHat",
        "osfullname": "Rocky Linux",
        "osrelease": "9.5",
        "osrelease_info": [9, 5],
        "osmajorrelease": 9,
        "osfinger": "Rocky Linux-9",
        "oscodename": "Blue Onyx",
        "lsb_distrib_id": "Rocky Linux",
        "lsb_distrib_release": "9.5",
        "lsb_distrib_codename": "Blue Onyx",
        "init": "systemd",
        "selinux": {"enabled": True, "enforced": "Enforcing"},
    },
}

# file functions that write a file but are not rendered by this tool
UNRENDERED_FILE_FUNS = {"serialize", "recurse", "append", "prepend", "blockreplace",
                        "replace", "line", "keyvalue", "copy", "symlink"}


class RenderError(Exception):
    """Rendering failed; ``messages`` are shown to the user as they are."""

    def __init__(self, messages):
        if isinstance(messages, str):
            messages = [messages]
        self.messages = [str(m) for m in messages]
        super().__init__("\n".join(self.messages))


def node_grains(node, os_family):
    grains = dict(OS_GRAINS[os_family])
    host, _, domain = node.partition(".")
    grains.update(host=host, localhost=host, nodename=host, fqdn=node, domain=domain)
    return grains


def parse_grain(text):
    import salt.utils.yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, salt.utils.yaml.safe_load(value)


def _file_root(repo):
    """This repository's formula alone (lab.salt.formula_root: no .venv or .cache to walk); another repo as is."""
    if Path(repo).resolve() == REPO_ROOT.resolve():
        from lab.salt import formula_root  # pylint: disable=import-outside-toplevel

        return formula_root()
    return repo


def minion_opts(tmp, repo, pillar_file, node, grains, verbosity):
    """Write the throwaway minion config and pillar tree under tmp; load it."""
    import salt.config
    import salt.utils.yaml

    pillar_dir = tmp / "pillar"
    pillar_dir.mkdir()
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - data\n")
    shutil.copyfile(pillar_file, pillar_dir / "data.sls")
    console_level = {0: "quiet", 1: "warning", 2: "info"}.get(verbosity, "debug")
    conf = {
        "id": node,
        "file_client": "local",
        "file_roots": {"base": [str(_file_root(repo))]},
        "pillar_roots": {"base": [str(pillar_dir)]},
        "root_dir": str(tmp),
        "cachedir": str(tmp / "cache"),
        "extension_modules": str(tmp / "cache" / "extmods"),
        "pki_dir": str(tmp / "pki"),
        "sock_dir": str(tmp / "sock"),
        "pidfile": str(tmp / "minion.pid"),
        "log_file": str(tmp / "minion.log"),
        "log_level": console_level,
        "log_level_logfile": "quiet",
        "user": getpass.getuser(),
        "grains": grains,
        "grains_cache": False,
        "enable_fqdns_grains": False,
        "enable_gpu_grains": False,
        "state_events": False,
        "pillar_safe_render_error": False,  # show the real pillar error, not "see master log"
    }
    for dirname, option in EXTENSION_DIRS.items():
        if (repo / dirname).is_dir():
            conf[option] = [str(repo / dirname)]
    conf_file = tmp / "minion"
    with open(conf_file, "w", encoding="utf-8") as fh:
        salt.utils.yaml.safe_dump(conf, fh, default_flow_style=False)
    return salt.config.minion_config(str(conf_file))


def setup_salt_logging(opts):
    """Console logging as -v asks (quiet by default): errors come back as return values."""
    import salt._logging

    salt._logging.set_logging_options_dict(opts)
    salt._logging.setup_logging()


def compile_low(caller, sls):
    """``state.show_low_sls``; raise RenderError with Salt's messages on failure."""
    from salt.exceptions import CommandExecutionError, SaltException

    pillar_errors = caller.sminion.opts.get("pillar", {}).get("_errors")
    if pillar_errors:
        raise RenderError(["Pillar failed to render:", *pillar_errors])
    try:
        low = caller.cmd("state.show_low_sls", sls, saltenv="base")
    except CommandExecutionError as exc:
        raise RenderError([str(exc), *(exc.info or [])]) from exc
    except SaltException as exc:
        raise RenderError(str(exc)) from exc
    if not isinstance(low, list) or any(not isinstance(chunk, dict) for chunk in low):
        raise RenderError(low if isinstance(low, list) else [repr(low)])
    return low


def managed_chunks(low):
    """The file.managed chunks in execution order, plus accumulator data."""
    accumulators = {}
    chunks = []
    for chunk in low:
        if chunk.get("state") != "file":
            continue
        fun = chunk.get("fun")
        if fun == "managed":
            chunks.append(chunk)
        elif fun == "accumulated":
            # what file.accumulated leaves for the file.managed it feeds
            text = chunk.get("text", [])
            text = [text] if isinstance(text, str) else list(text)
            acc = accumulators.setdefault(chunk["filename"], {}).setdefault(chunk["name"], [])
            acc.extend(t for t in text if t not in acc)
        elif fun in UNRENDERED_FILE_FUNS:
            print(f"render: note: {chunk['__id__']} (file.{fun} {chunk.get('name')}) "
                  "is not rendered by this tool", file=sys.stderr)
    return chunks, accumulators


def _has_slot(value):
    if isinstance(value, str):
        return value.startswith("__slot__:")
    if isinstance(value, dict):
        return any(_has_slot(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_slot(v) for v in value)
    return False


def render_managed(funcs, chunk, accumulators):
    """Return the bytes file.managed would write for this chunk (a new file).

    Follows salt/states/file.py ``managed`` of Salt 3008 step by step, up to
    the ``file.manage_file`` call, whose only content transformation is
    writing ``contents`` (encoded) or copying the rendered source file.
    Returns None when the state would not create the file (``create: False``).
    """
    import salt.state
    import salt.states.file as file_state
    import salt.utils.args
    import salt.utils.files
    import salt.utils.stringutils

    ident = f"{chunk['__id__']} ({chunk['name']})"
    if _has_slot({k: v for k, v in chunk.items() if not k.startswith("__")}):
        raise RenderError(f"{ident}: __slot__ values are resolved at run time only; "
                          "render.py cannot render them")
    call = salt.utils.args.format_call(
        file_state.managed, chunk, expected_extra_kws=salt.state.STATE_INTERNAL_KEYWORDS
    )
    params = salt.utils.args.get_function_argspec(file_state.managed).args
    arg = dict(zip(params, call["args"], strict=False))  # only "name" is positional
    kwargs = {}
    for key, value in call["kwargs"].items():
        if key in params:
            arg[key] = value
        else:
            kwargs[key] = value
    kwargs.pop("env", None)
    saltenv = str(chunk.get("saltenv") or chunk.get("__env__") or "base")

    name = os.path.expanduser(arg["name"])
    if not os.path.isabs(name):
        raise RenderError(f"{ident}: Specified file {name} is not an absolute path")
    if not arg["create"]:
        return None
    mode = arg["mode"]
    if isinstance(mode, str) and mode.lower() == "keep":
        mode = None
    mode = salt.utils.files.normalize_mode(mode)
    user = file_state._test_owner(kwargs, user=arg["user"])
    template = arg["template"]
    context = arg["context"]
    defaults = arg["defaults"]
    if context is None:
        context = {}
    elif not isinstance(context, dict):
        raise RenderError(f"{ident}: Context must be formed as a dict")
    if defaults and not isinstance(defaults, dict):
        raise RenderError(f"{ident}: Defaults must be formed as a dict")

    contents_args = [arg[k] for k in ("contents", "contents_pillar", "contents_grains")]
    if arg["source"] and any(a is not None for a in contents_args):
        raise RenderError(f"{ident}: 'source' cannot be used in combination with 'contents', "
                          "'contents_pillar', or 'contents_grains'")
    if sum(a is not None for a in contents_args) > 1:
        raise RenderError(f"{ident}: Only one of 'contents', 'contents_pillar', and "
                          "'contents_grains' is permitted")

    delimiter = arg["contents_delimiter"]
    use_contents = None
    not_found = object()
    for key, getter, extra in (
        ("contents_pillar", "pillar.get", {"unmask": True}),
        ("contents_grains", "grains.get", {}),
    ):
        if arg[key] is None:
            continue
        keys = arg[key] if isinstance(arg[key], list) else [arg[key]]
        parts = []
        for k in keys:
            value = funcs[getter](k, not_found, delimiter=delimiter, **extra)
            if value is not_found:
                what = "Pillar" if key == "contents_pillar" else "Grain"
                raise RenderError(f"{ident}: {what} {k} does not exist")
            parts.append(value)
        use_contents = parts[0] if not isinstance(arg[key], list) else os.linesep.join(parts)
    if arg["contents"] is not None:
        use_contents = arg["contents"]

    if use_contents is not None:
        if not arg["allow_empty"] and not use_contents:
            raise RenderError(f"{ident}: contents would be empty and allow_empty is False")
        encoding = arg["encoding"]
        try:
            contents = ""
            for part in file_state._validate_str_list(use_contents, encoding=encoding):
                for line in part.splitlines():
                    contents += line.rstrip("\n").rstrip("\r") + os.linesep
            if not arg["contents_newline"]:
                contents = contents.rstrip("\n").rstrip("\r")
        except UnicodeDecodeError:
            if template:
                raise RenderError(f"{ident}: contents appear to be binary data and cannot "
                                  "be treated as a template") from None
            contents = use_contents
        if template:
            contents = funcs["file.apply_template_on_contents"](
                contents, template=template, context=context, defaults=defaults,
                saltenv=saltenv,
            )
            if not isinstance(contents, str):
                raise RenderError(f"{ident}: " + str(
                    contents.get("comment", "Error while applying template on contents")))
        if isinstance(contents, bytes):
            return contents
        if encoding:
            return contents.encode(encoding=encoding, errors=arg["encoding_errors"])
        return salt.utils.stringutils.to_bytes(contents)

    if name in accumulators:  # as in file.managed: for source templates only
        context["accumulator"] = accumulators[name]
    source, source_hash = arg["source"], arg["source_hash"]
    if not source:
        return b""  # file.managed with neither source nor contents creates an empty file
    try:
        source, source_hash = funcs["file.source_list"](source, source_hash, saltenv)
        sfn, _source_sum, comment = funcs["file.get_managed"](
            name, template, source, source_hash, arg["source_hash_name"], user,
            arg["group"], mode, arg["attrs"], saltenv, context, defaults,
            arg["skip_verify"], verify_ssl=arg["verify_ssl"], use_etag=arg["use_etag"],
            source_hash_sig=arg["source_hash_sig"], signed_by_any=arg["signed_by_any"],
            signed_by_all=arg["signed_by_all"], keyring=arg["keyring"],
            gnupghome=arg["gnupghome"], sig_backend=arg["sig_backend"], **kwargs,
        )
    except Exception as exc:  # file.managed reports these as "Unable to manage file"
        raise RenderError(f"{ident}: Unable to manage file: {exc}") from exc
    if comment:
        raise RenderError(f"{ident}: Unable to manage file: {comment}")
    if not sfn:  # untemplated salt:// source: manage_file caches it
        sfn = funcs["cp.cache_file"](source, saltenv, verify_ssl=arg["verify_ssl"])
        if not sfn:
            raise RenderError(f"{ident}: Source file {source} not found")
    with open(sfn, "rb") as fh:
        return fh.read()


def render(repo, pillar_file, node, os_family, sls, extra_grains, verbosity, list_only):
    """Return {absolute path: bytes (None with --list or create: False)}; raise RenderError."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if not repo.is_dir():
        raise RenderError(f"formula directory {repo} does not exist")
    if not pillar_file.is_file():
        raise RenderError(f"pillar file {pillar_file} does not exist")
    grains = node_grains(node, os_family)
    grains.update(extra_grains)
    with tempfile.TemporaryDirectory(prefix="hafw-render-") as tmpdir:
        tmp = Path(tmpdir)
        # Salt's own temp files (rendered templates, __salt.tmp.*) go in here too:
        # file.managed deletes them after copying, this tool only reads them.
        (tmp / "tmp").mkdir()
        tempfile.tempdir = str(tmp / "tmp")
        try:
            return render_in(tmp, repo, pillar_file, node, grains, sls, verbosity, list_only)
        finally:
            tempfile.tempdir = None


def render_in(tmp, repo, pillar_file, node, grains, sls, verbosity, list_only):
    import salt.client

    opts = minion_opts(tmp, repo, pillar_file, node, grains, verbosity)
    setup_salt_logging(opts)
    caller = salt.client.Caller(mopts=opts)
    low = compile_low(caller, sls)
    chunks, accumulators = managed_chunks(low)
    files = {}
    errors = []
    for chunk in chunks:
        name = os.path.normpath(os.path.expanduser(chunk["name"]))
        if name in files:
            errors.append(f"{chunk['__id__']}: {name} is managed by more than one state")
            continue
        if list_only:
            files[name] = None
            continue
        try:
            files[name] = render_managed(caller.sminion.functions, chunk, accumulators)
        except RenderError as exc:
            errors.extend(exc.messages)
    if errors:
        raise RenderError(errors)
    return files


def write_tree(out, files, clean):
    """Write {absolute path: bytes} under out, staged first so a failure leaves out as it was."""
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".render-stage-", dir=out))
    written = []
    try:
        for name, data in sorted(files.items()):
            if data is None:
                continue
            rel = Path(name.lstrip("/"))
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_bytes(data)
            written.append(rel)
        if clean:
            for entry in out.iterdir():
                if entry != stage:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
        for rel in written:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, out / rel)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [out / rel for rel in written]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tools.render",
        description="Render every file the formula manages on NODE into OUT "
        "(OUT/etc/..., mirroring absolute paths). Exit 2 on a bad pillar or "
        "render error, with nothing written.",
    )
    parser.add_argument("--node", required=True, help="minion id to render for")
    parser.add_argument("--out", type=Path, help="output directory (not needed with --list)")
    parser.add_argument("--os-family", default="Debian", choices=sorted(OS_GRAINS),
                        type=lambda v: {k.lower(): k for k in OS_GRAINS}.get(v.lower(), v),
                        help="grains of Debian 12 or Rocky Linux 9 (default Debian)")
    parser.add_argument("--pillar", type=Path, help="pillar file (default REPO/pillar.example)")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT,
                        help="formula root: file_roots and _modules etc. (default: this repo)")
    parser.add_argument("--sls", default="hafw", help="SLS to compile (default hafw)")
    parser.add_argument("--grain", action="append", default=[], type=parse_grain,
                        metavar="KEY=VALUE", help="extra grain override (YAML value); repeatable")
    parser.add_argument("--list", action="store_true", help="only print the managed paths")
    parser.add_argument("--clean", action="store_true",
                        help="empty OUT before writing (only once everything rendered)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="show Salt's log on stderr (-v warnings, -vv info, -vvv debug)")
    args = parser.parse_args(argv)
    if not args.list and args.out is None:
        parser.error("--out is required unless --list is given")
    repo = args.repo.resolve()
    pillar = (args.pillar or repo / "pillar.example").resolve()

    try:
        files = render(repo, pillar, args.node, args.os_family, args.sls,
                       dict(args.grain), args.verbose, args.list)
    except RenderError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        return EXIT_RENDER_ERROR
    if not files:
        print(f"render: {args.sls} manages no file on {args.node}", file=sys.stderr)
    if args.list:
        for name in sorted(files):
            print(name)
        return 0
    for path in write_tree(args.out.resolve(), files, args.clean):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
