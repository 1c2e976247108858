"""Running a lab client tool (lab.traffic run, lab.smtp_session run) in a host, for the functional tests."""

import json
import subprocess
from pathlib import Path

from lab.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(REPO)}


def read(path):
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def run_client(host, cmd, log, out, timeout, started, during=None, during_arg=None, what="the client's flows"):
    """
    Run cmd in host (output to log); once it prints "connected", call
    during(during_arg). Asserts a zero exit within timeout s; returns the
    JSON it wrote to out. Every Popen is appended to started (the callers
    check at the end that none is left running).
    """
    with open(log, "wb") as f:
        client = host.popen(cmd, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    started.append(client)
    try:
        if during:
            wait_for(lambda: "connected" in read(log) or client.poll() is not None, 15, what)
            during(during_arg)
        assert client.wait(timeout=timeout) == 0, read(log)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
    return json.loads(Path(out).read_text())
