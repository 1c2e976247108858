"""The salt-ssh wrapper _wrapper/hafw.py against the execution module _modules/hafw.py.

Under salt-ssh the wrapper answers the formula's map.jinja calls on the
control host; it must derive exactly what the module derives on a minion.
The live counterpart: test/integration/test_salt_ssh.py (its files are
byte for byte what a minion apply writes).
"""

import importlib.util
import pathlib

import pytest
from salt.exceptions import SaltInvocationError

REPO = pathlib.Path(__file__).resolve().parents[2]


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def wrapper(example_pillar):
    mod = load("_wrapper/hafw.py", "hafw_ssh_wrapper")
    mod.__opts__ = {"id": "fw-cent7i"}
    mod.__pillar__ = {}  # salt-ssh renders with the pillar the formula passes in
    mod.__context__ = {}
    return mod


@pytest.fixture
def module(example_pillar):
    mod = load("_modules/hafw.py", "hafw_exec_module")
    mod.__opts__ = {"id": "fw-cent7i"}
    mod.__pillar__ = {"hafw": example_pillar}
    mod.__context__ = {}
    return mod


def test_the_wrapper_finds_the_model_beside_it(wrapper):
    assert wrapper.__virtual__() == "hafw"


@pytest.mark.parametrize("node", ["fw-cent7i", "fw-cent7j", "fw-cent7m", "lb-cent7g"])
def test_the_wrapper_derives_what_the_module_derives(wrapper, module, example_pillar, node):
    assert wrapper.node(node, hafw=example_pillar) == module.node(node)
    assert wrapper.peers(node, hafw=example_pillar) == module.peers(node)
    # and the module given the pillar (what a remote call gets without the wrapper) agrees
    module.__pillar__ = {}
    assert module.node(node, hafw=example_pillar) == wrapper.node(node, hafw=example_pillar)


def test_this_target_is_the_default_node(wrapper, example_pillar):
    assert wrapper.node(hafw=example_pillar)["id"] == "fw-cent7i"


def test_a_bad_pillar_names_the_key(wrapper, pillar):
    pillar["clusters"]["fw-pair"]["nodes"]["fw-cent7i"]["state"] = "SLAVE"
    with pytest.raises(SaltInvocationError, match="hafw:clusters:fw-pair:nodes:fw-cent7i:state"):
        wrapper.validate(hafw=pillar)


def test_the_pillar_must_be_a_mapping(wrapper):
    with pytest.raises(SaltInvocationError, match="hafw: expected the hafw pillar as a mapping"):
        wrapper.node(hafw="clusters")
