"""
Repository-wide pytest setup.

pytest-salt-factories starts a log server and an event listener for every
session, bound to 0.0.0.0 by default. Nothing this project starts outside a
lab namespace may listen beyond loopback: both are rebound to 127.0.0.1
before they open their sockets.
"""

import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))  # lab/, tools/, test/support importable from every layer
LOOPBACK = "127.0.0.1"


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    # make test runs everything else; make test-lb these (the emulated guest is slow)
    config.addinivalue_line("markers", "ipvs_guest: needs the IPVS qemu guest (lab/guest/); make test-lb")
    log_server = config.pluginmanager.get_plugin("saltfactories-log-server")
    if log_server is not None:  # created by the plugin's own pytest_configure, started later
        log_server.log_host = LOOPBACK


@pytest.fixture(scope="session")
def event_listener():
    """saltfactories' event listener, on loopback only."""
    from saltfactories.plugins.event_listener import EventListener

    listener = EventListener()
    listener.host = LOOPBACK
    listener.address = f"tcp://{LOOPBACK}:{listener.port}"
    with listener:
        yield listener


def pytest_unconfigure(config):
    """Salt's deferred log handler holds the records logged before Salt configures
    logging (the loader tests never do) and writes them to the stderr it saw at import
    at exit: pytest's capture file by then, closed, hence "I/O operation on closed
    file". Hand them to the handlers pytest still has and retire it now."""
    impl = sys.modules.get("salt._logging.impl")
    if impl is not None:
        impl.shutdown_temp_handler()
