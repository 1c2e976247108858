"""Fixtures shared by the functional tests."""

import pathlib
import shutil
import tempfile

import pytest


@pytest.fixture
def sock_dir():
    """A short directory for UNIX sockets.

    A socket path is limited to 107 bytes, and tmp_path grows with the
    checkout's path (CI clones elsewhere): sockets go under /tmp instead.
    """
    path = pathlib.Path(tempfile.mkdtemp(prefix="hf-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
