"""The salt-master's event bus, recorded: one JSON line per event a test cares about.

Runs in the lab's salt host next to the master (started by Fleet.boot):

    python lab/eventlog.py /var/log/salt/events.jsonl

Each line: {"t": epoch seconds at receipt, "tag": ..., "data": ...} for the
keepalived beacon's events (salt/beacon/*/keepalived/...), the hafw alerts
(hafw/...) and the returns of the jobs the reactor starts (state.single,
conntrack.request_resync). Tests read it with Fleet.events().
"""

import json
import sys
import time

import salt.config
import salt.utils.event

WATCHED_FUNS = {"state.single", "conntrack.request_resync"}


def wanted(tag, data):
    if tag.startswith("salt/beacon/") and "/keepalived/" in tag or tag.startswith("hafw/"):
        return True
    return tag.startswith("salt/job/") and "/ret/" in tag and data.get("fun") in WATCHED_FUNS


def main(path):
    opts = salt.config.client_config("/etc/salt/master")
    with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True) as bus, \
            open(path, "a", buffering=1) as out:
        while True:
            event = bus.get_event(wait=5, full=True)
            if event and wanted(event["tag"], event["data"]):
                out.write(json.dumps({"t": time.time(), "tag": event["tag"], "data": event["data"]},
                                     default=str) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
