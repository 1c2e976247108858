"""tools/render.py (`make render`) against a throwaway mini-formula.

The mini-formula has the shape of the real one: ``hafw/init.sls`` calls a
custom execution module (``_modules/hafw.py``, which uses a ``_utils``
helper) and manages two files, one from a ``source`` template and one from
templated ``contents``, both using pillar and grains.
"""

import getpass
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

INIT_SLS = """\
{%- set node = salt['hafw.node']() %}
{%- set root = pillar['hafw'].get('root', '') %}
hafw-keepalived:
  file.managed:
    - name: {{ root }}/etc/keepalived/keepalived.conf
    - source: salt://hafw/files/keepalived.conf.jinja
    - template: jinja
    - makedirs: True
    - mode: "0640"
    - context:
        node: {{ node | json }}

hafw-sysctl:
  file.managed:
    - name: {{ root }}/etc/sysctl.d/90-hafw.conf
    - makedirs: True
    - template: jinja
    - contents: |
        # {{ grains['os_family'] }} {{ grains['osmajorrelease'] }}
        {%- raw %}
        net.ipv4.ip_forward = {{ forward }}
        {%- endraw %}
    - defaults:
        forward: {{ 1 if node.forward else 0 }}
{%- if pillar['hafw'].get('explode') %}

hafw-explode:
  file.managed:
    - name: {{ root }}/etc/hafw/zz-explode.conf
    - source: salt://hafw/files/explode.jinja
    - template: jinja
{%- endif %}
"""

KEEPALIVED_TMPL = """\
# {{ name }} for {{ grains['id'] }} ({{ grains['os'] }})
vrrp_instance VI_1 {
    state {{ node.state }}
    priority {{ node.priority }}
    virtual_ipaddress {
        {{ pillar['hafw']['vip'] }}
    }
    {%- set libexec = '/usr/libexec' if grains['os_family'] == 'RedHat' else '/usr/lib' %}
    notify_master "{{ libexec }}/hafw/notify.sh"
}
"""

EXPLODE_TMPL = "{{ salt['test.exception']('hafw:clusters:x: bad') }}\n"

MODULE = '''\
from salt.exceptions import SaltInvocationError


def node():
    me = __grains__["id"]
    nodes = __pillar__.get("hafw", {}).get("nodes", {})
    if me not in nodes:
        raise SaltInvocationError(f"hafw:nodes: no node {me}")
    state = nodes[me].get("state")
    if state not in ("MASTER", "BACKUP"):
        raise SaltInvocationError(
            f"hafw:nodes:{me}:state: {state!r} is not a keepalived state (MASTER or BACKUP)"
        )
    return dict(nodes[me], priority=__utils__["hafwmini.priority"](state), forward=True)
'''

UTILS = '''\
def priority(state):
    return 150 if state == "MASTER" else 100
'''

PILLAR = """\
hafw:
  vip: 192.0.2.40/24
  nodes:
    fw1: {state: MASTER}
    fw2: {state: SLAVE}
    fw3: {state: BACKUP}
"""


@pytest.fixture
def formula(tmp_path):
    root = tmp_path / "formula"
    files = {
        "hafw/init.sls": INIT_SLS,
        "hafw/files/keepalived.conf.jinja": KEEPALIVED_TMPL,
        "hafw/files/explode.jinja": EXPLODE_TMPL,
        "_modules/hafw.py": MODULE,
        "_utils/hafwmini.py": UTILS,
        "pillar.example": PILLAR,
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def run_render(formula, *args, pillar=None):
    cmd = [sys.executable, "-m", "tools.render", "--repo", str(formula), *args]
    if pillar is not None:
        cmd += ["--pillar", str(pillar)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_renders_every_managed_file_to_mirrored_paths(formula, tmp_path):
    out = tmp_path / "out"
    res = run_render(formula, "--node", "fw1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert tree(out) == ["etc/keepalived/keepalived.conf", "etc/sysctl.d/90-hafw.conf"]
    assert res.stdout.split() == [
        str(out / "etc/keepalived/keepalived.conf"),
        str(out / "etc/sysctl.d/90-hafw.conf"),
    ]
    assert (out / "etc/keepalived/keepalived.conf").read_text() == textwrap.dedent("""\
        # /etc/keepalived/keepalived.conf for fw1 (Debian)
        vrrp_instance VI_1 {
            state MASTER
            priority 150
            virtual_ipaddress {
                192.0.2.40/24
            }
            notify_master "/usr/lib/hafw/notify.sh"
        }
        """)
    assert (out / "etc/sysctl.d/90-hafw.conf").read_text() == (
        "# Debian 12\nnet.ipv4.ip_forward = 1\n"
    )


def test_os_family_redhat_changes_grain_dependent_output(formula, tmp_path):
    out = tmp_path / "out"
    res = run_render(formula, "--node", "fw3", "--out", str(out), "--os-family", "RedHat")
    assert res.returncode == 0, res.stderr
    keepalived = (out / "etc/keepalived/keepalived.conf").read_text()
    assert keepalived.startswith("# /etc/keepalived/keepalived.conf for fw3 (Rocky)\n")
    assert "state BACKUP\n    priority 100\n" in keepalived
    assert '"/usr/libexec/hafw/notify.sh"' in keepalived
    assert (out / "etc/sysctl.d/90-hafw.conf").read_text().startswith("# RedHat 9\n")


def test_list_prints_managed_paths_and_writes_nothing(formula, tmp_path):
    res = run_render(formula, "--node", "fw1", "--list")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["/etc/keepalived/keepalived.conf", "/etc/sysctl.d/90-hafw.conf"]


def test_validation_error_in_custom_module_fails_and_writes_nothing(formula, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    res = run_render(formula, "--node", "fw2", "--out", str(out))
    assert res.returncode == 2
    assert "hafw:nodes:fw2:state: 'SLAVE' is not a keepalived state" in res.stderr
    assert list(out.iterdir()) == []


def test_exception_in_a_file_template_fails_and_writes_nothing(formula, tmp_path):
    """The first two files render fine; the third raises: nothing at all is written."""
    pillar = tmp_path / "explode.sls"
    pillar.write_text(PILLAR + "  explode: true\n")
    out = tmp_path / "out"
    out.mkdir()
    res = run_render(formula, "--node", "fw1", "--out", str(out), pillar=pillar)
    assert res.returncode == 2
    assert "hafw:clusters:x: bad" in res.stderr
    assert "hafw-explode" in res.stderr
    assert list(out.iterdir()) == []


def test_unparsable_pillar_fails_with_the_yaml_error(formula, tmp_path):
    pillar = tmp_path / "bad.sls"
    pillar.write_text("hafw: [unclosed\n")
    out = tmp_path / "out"
    res = run_render(formula, "--node", "fw1", "--out", str(out), pillar=pillar)
    assert res.returncode == 2
    assert "Pillar failed to render" in res.stderr
    assert "did not find expected" in res.stderr
    assert not out.exists()


def test_output_is_byte_identical_to_what_file_managed_writes(formula, tmp_path):
    """Apply the mini-formula for real (salt-call --local) and compare bytes."""
    applied = tmp_path / "applied"
    pillar_dir = tmp_path / "pillar"
    pillar_dir.mkdir()
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - data\n")
    pillar = pillar_dir / "data.sls"
    pillar.write_text(PILLAR + f"  root: {applied}\n")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "minion").write_text(textwrap.dedent(f"""\
        id: fw1
        file_client: local
        file_roots: {{base: [{formula}]}}
        pillar_roots: {{base: [{pillar_dir}]}}
        root_dir: {tmp_path / 'salt'}
        module_dirs: [{formula / '_modules'}]
        utils_dirs: [{formula / '_utils'}]
        user: {getpass.getuser()}
        log_level_logfile: quiet
        enable_fqdns_grains: false
        grains: {{os: Debian, os_family: Debian, osmajorrelease: 12}}
        """))
    salt_call = Path(sys.executable).with_name("salt-call")
    res = subprocess.run(
        [str(salt_call), "--local", "-c", str(conf), "--retcode-passthrough",
         "--out=quiet", "state.apply", "hafw"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr

    out = tmp_path / "out"
    res = run_render(formula, "--node", "fw1", "--out", str(out), pillar=pillar)
    assert res.returncode == 0, res.stderr
    rendered = out / str(applied).lstrip("/")
    assert tree(rendered) == tree(applied) == [
        "etc/keepalived/keepalived.conf", "etc/sysctl.d/90-hafw.conf",
    ]
    for rel in tree(applied):
        assert (rendered / rel).read_bytes() == (applied / rel).read_bytes(), rel
