"""
Requests from the lab on this machine to the guest's agent, as files in the
9p share both see: the host writes ``rpc/<id>.req`` (JSON, renamed into
place when complete), the agent answers with ``rpc/<id>.resp``. No network
between the two is needed, so the guest keeps no device to the outside.
A request takes one or two poll periods (20 ms here, 50 ms in the guest).
"""

import json
import os
import threading
import time
import uuid
from pathlib import Path

from ..names import LabError


def _write(path, data):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class Client:
    """The host's side: call(op, **args) -> the agent's answer (a dict), or LabError."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def call(self, op, timeout=60, **args):
        rid = uuid.uuid4().hex
        req, resp = self.root / f"{rid}.req", self.root / f"{rid}.resp"
        _write(req, {"op": op, **args})
        deadline = time.monotonic() + timeout
        while not resp.exists():
            if time.monotonic() > deadline:
                req.unlink(missing_ok=True)
                raise LabError(f"the guest's agent did not answer {op} {args.get('host', '')} in {timeout} s")
            time.sleep(0.02)
        answer = json.loads(resp.read_text())
        resp.unlink(missing_ok=True)
        if "error" in answer:
            raise LabError(f"in the guest, {op} {args.get('host', '')}: {answer['error']}")
        return answer


class Server:
    """The agent's side: each request runs in its own thread (a crash must not wait for a long exec)."""

    def __init__(self, root, handler):
        self.root, self.handler = Path(root), handler
        self.root.mkdir(parents=True, exist_ok=True)
        self.stop = threading.Event()

    def _answer(self, req):
        try:
            data = json.loads(req.read_text())
            req.unlink()
            answer = self.handler(data)
        except Exception as exc:  # pylint: disable=broad-except
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        _write(req.with_suffix(".resp"), answer)

    def serve(self, period=0.05):
        seen = set()  # requests handed to a thread whose file may not be gone yet
        while not self.stop.is_set():
            pending = {req.name: req for req in self.root.glob("*.req")}
            seen &= set(pending)
            for name in sorted(set(pending) - seen):
                seen.add(name)
                threading.Thread(target=self._answer, args=(pending[name],), daemon=True).start()
            time.sleep(period)
