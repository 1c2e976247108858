"""
Verifier tests (pytest-testinfra): what a converged node must look like.

They run wherever the formula was applied: inside a lab host
(`pytest --hosts=local:// test/verify`, from the masterless and lab tests)
or against a kitchen container (kitchen.yml: `--hosts=docker://...`). What
the node should have comes from the formula itself, `salt-call hafw.node`
on that node (salt-call must be on its PATH), so one set of tests serves
every role: a test marked `@pytest.mark.component("conntrackd")` is skipped
on nodes without that component.
"""

import json

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "component(name): needs that hafw component on the node")


@pytest.fixture(scope="module")
def node(host):
    """The node's derived settings, as the formula computes them there."""
    return json.loads(host.check_output("salt-call --local --out json hafw.node"))["local"]


@pytest.fixture(autouse=True)
def _skip_without_component(request):
    marker = request.node.get_closest_marker("component")
    if marker:
        node = request.getfixturevalue("node")
        if marker.args[0] not in node["components"]:
            pytest.skip(f"{node['id']} has no {marker.args[0]}")
