"""The lab's Salt fleet: a salt-master in one lab host, a salt-minion in each formula host.

Both are the project's .venv daemons, run as real processes inside their
hosts (parent: the host's init), logging under the host's /var/log/salt.
All config goes to the hosts' own /etc/salt (overlays: the real /etc is
untouched):

- master: interface = its mgmt address (the only address it binds),
  file_roots = the formula (lab.salt.formula_root), pillar_roots giving every
  minion pillar.example itself (a symlink: unchanged, and edits are live
  after `saltutil.refresh_pillar`); minion keys pre-seeded (generated in
  the salt host with `salt-key --gen-keys`, then put in place), so no
  acceptance step and no auto_accept.
- minion: id = its pillar node name, master = the salt host's mgmt address,
  short reconnect/auth timers. `startup_states: highstate` (a highstate at
  every minion start, i.e. at every boot) goes in minion.d/startup.conf,
  written by enable_startup_highstate() once the master has converged the
  host: a fresh host is provisioned from the master, a rebooted one
  converges itself.
"""

import json
import re
import time

import yaml

from .salt import REPO, example_pillar, formula_root, state_changes, state_failures

VENV_BIN = REPO / ".venv" / "bin"
# The master's fileserver walks the whole repo: keep the big or live trees out.
IGNORE = [r"^\.venv(/|$)", r"^\.git(/|$)", r"^\.lab-run(/|$)", r"^\.pytest-tmp(/|$)",
          r"^lab-report(/|$)", r"(^|/)__pycache__(/|$)", r"^\.[a-z_]*cache(/|$)", r"^\.benchmarks(/|$)"]
JOBS = "/var/cache/salt/master/jobs"

# Prints the master's cached returns of one minion newer than a time, as JSON.
READ_JOBS = r"""
import json, os, sys, msgpack
root, mid, since = sys.argv[1], sys.argv[2], float(sys.argv[3])
def load(path):
    with open(path, "rb") as f:
        return msgpack.unpackb(f.read(), raw=False, strict_map_key=False)
found = []
for top in os.listdir(root) if os.path.isdir(root) else []:
    for sub in os.listdir(os.path.join(root, top)):
        jid_dir = os.path.join(root, top, sub)
        ret = os.path.join(jid_dir, mid, "return.p")
        try:
            if os.path.getmtime(ret) < since:
                continue
            job, result = load(os.path.join(jid_dir, ".load.p")), load(ret)
        except (OSError, ValueError):
            continue  # being written
        found.append({"jid": job.get("jid"), "fun": job.get("fun"), "return": result.get("return"),
                      "retcode": result.get("retcode"), "at": os.path.getmtime(ret)})
print(json.dumps(sorted(found, key=lambda r: r["at"]), default=str))
"""


def put(host, path, text, mode="0644"):
    """Write a file in the host (through its own mounts)."""
    host.exec(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat >"$1" && chmod %s "$1"' % mode, "put", path],
              input=text)


def daemon(host, argv, log):
    """Start argv in the host as a daemon: its parent is the host's init, output to log."""
    cmd = " ".join("'%s'" % a for a in argv)
    host.exec(["sh", "-c", 'mkdir -p "$(dirname "$1")"; cd / && exec setsid %s </dev/null >>"$1" 2>&1 &' % cmd,
               "daemon", log])


# the documented reactor list (reactor/master.d/hafw-reactor.conf), and the beacon from pillar (a pillar
# "beacons:" replaces the minion config's)
REACTOR = yaml.safe_load((REPO / "reactor" / "master.d" / "hafw-reactor.conf").read_text())["reactor"]
BEACONS = {"beacons": {"keepalived": [{"vips": True}, {"sync_status": True}]}}


def vrrp_pairs(pillar):
    """{node: its peer} for every two-node VRRP cluster of the pillar: who the reactor listens to."""
    pairs = {}
    for cluster in pillar["hafw"]["clusters"].values():
        nodes = list(cluster.get("nodes", {}))
        if "vrrp" in cluster and len(nodes) == 2:
            pairs.update({nodes[0]: nodes[1], nodes[1]: nodes[0]})
    return pairs


PEER_FUNCTIONS = ["conntrack.sync_digest", "conntrack.sync_keys", "conntrack.role",
                  "vrrp_sync.step_down", "vrrp_sync.undemote", "ipvs.sync_digest", "ipvs.sync_keys"]


def peer_targets(minion_ids):
    """The master's peer: regex admitting exactly the lab's minions."""
    return "^(" + "|".join(re.escape(m) for m in minion_ids) + ")$"


def configure_master(host, address, minion_ids, pillar=None):
    """The salt host's /etc/salt: master config, pillar, and pre-seeded minion keys.

    pillar: a dict to serve instead of pillar.example (see set_pillar).

    Returns {minion id: (private key PEM, public key PEM)} for configure_minion.
    """
    master = {
        "interface": address,
        "file_roots": {"base": [str(formula_root())]},
        "file_ignore_regex": IGNORE,
        "pillar_roots": {"base": ["/etc/salt/pillar"]},
        "pillar_safe_render_error": False,
        "auto_accept": False,
        "timeout": 10,
        "gather_job_timeout": 5,
        "loop_interval": 5,
        "worker_threads": 3,
        "log_level_logfile": "info",
        # the pair's nodes reach each other for conntrack.sync_health and the
        # vrrp_sync switchover states (docs/operating.md)
        "peer": {peer_targets(minion_ids): PEER_FUNCTIONS},
        # the keepalived beacon's events and the reactor (reactor/master.d/hafw-reactor.conf)
        "reactor": REACTOR,
        "hafw_reactor": {"pairs": vrrp_pairs(pillar or example_pillar()), "settle": 1,
                         "log": "/var/log/salt/hafw-transitions.log"},
    }
    put(host, "/etc/salt/master", yaml.safe_dump(master))
    put(host, "/etc/salt/pillar/top.sls", "base:\n  '*':\n    - hafw\n    - beacons\n")
    put(host, "/etc/salt/pillar/beacons.sls", yaml.safe_dump(BEACONS))
    set_pillar(host, pillar)
    gen = "/etc/salt/pki/gen"
    script = 'mkdir -p %s /etc/salt/pki/master/minions && for id; do "%s" --gen-keys="$id" ' \
             '--gen-keys-dir=%s --keysize=2048 >/dev/null && cp %s/"$id".pub /etc/salt/pki/master/minions/"$id"; done'
    host.exec(["sh", "-c", script % (gen, VENV_BIN / "salt-key", gen, gen), "keys", *minion_ids], timeout=120)
    return {mid: (host.exec(["cat", "%s/%s.pem" % (gen, mid)]).stdout,
                  host.exec(["cat", "%s/%s.pub" % (gen, mid)]).stdout) for mid in minion_ids}


def set_pillar(host, pillar=None):
    """Serve `pillar` (a dict) to every minion, or pillar.example itself if None.

    Minions see it at their next pillar refresh (every state.apply does one).
    """
    if pillar is None:
        host.exec(["ln", "-sfn", str(REPO / "pillar.example"), "/etc/salt/pillar/hafw.sls"])
    else:
        host.exec(["rm", "-f", "/etc/salt/pillar/hafw.sls"])
        put(host, "/etc/salt/pillar/hafw.sls", yaml.safe_dump(pillar, sort_keys=False))


def configure_minion(host, minion_id, master_address, key, extra=None):
    """A formula host's /etc/salt: minion config (extra: more settings) and its pre-seeded key pair."""
    minion = {
        "id": minion_id,
        "master": master_address,
        "acceptance_wait_time": 1,
        "random_reauth_delay": 0,
        "recon_default": 500,
        "recon_max": 2000,
        "recon_randomize": False,
        "auth_timeout": 10,
        "enable_fqdns_grains": False,
        # A lab host is a Debian host without systemd, but the machine's
        # /usr has systemctl: Salt would then also load systemd_service in
        # "offline" (image-building) mode, and service.running would report
        # "Running in OFFLINE mode. Nothing to do" instead of starting a
        # stopped daemon. Only debian_service (/etc/init.d) may manage services.
        "disable_modules": ["systemd_service"],
        "log_level_logfile": "info",
        **(extra or {}),
    }
    put(host, "/etc/salt/minion", yaml.safe_dump(minion))
    put(host, "/etc/salt/pki/minion/minion.pem", key[0], "0400")
    put(host, "/etc/salt/pki/minion/minion.pub", key[1])


def enable_startup_highstate(host):
    """From now on the minion runs a highstate whenever it starts (at boot)."""
    put(host, "/etc/salt/minion.d/startup.conf", "startup_states: highstate\n")


def start_master(host):
    daemon(host, [str(VENV_BIN / "salt-master")], "/var/log/salt/master.console")


EVENTLOG = "/var/log/salt/events.jsonl"


def sync_runners(host):
    """The formula's _runners (the reactor's hafw.record) on the master."""
    host.exec([str(VENV_BIN / "salt-run"), "saltutil.sync_runners"], timeout=120)


def start_eventlog(host):
    """Record the master's beacon events and reactor job returns (lab/eventlog.py) in EVENTLOG."""
    # -I: the script's directory (lab/, whose salt.py would shadow the salt package) stays off sys.path
    daemon(host, [str(VENV_BIN / "python"), "-I", str(REPO / "lab" / "eventlog.py"), EVENTLOG],
           "/var/log/salt/eventlog.console")


def wait_master(host, address, timeout=30):
    """Wait until the master listens on its publish (4505) and request (4506) ports."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = host.exec(["ss", "-Hltn"]).stdout
        if all("%s:%d " % (address, port) in listening for port in (4505, 4506)):
            return
        time.sleep(0.1)
    log = host.exec(["sh", "-c", "tail -20 /var/log/salt/master.console /var/log/salt/master"], check=False)
    raise TimeoutError("salt-master not listening on %s after %d s:\n%s" % (address, timeout, log.stdout))


def start_minion(host):
    daemon(host, [str(VENV_BIN / "salt-minion")], "/var/log/salt/minion.console")


def salt(host, *args, timeout=60):
    """`salt --out json --static ARGS...` in the master's host; the parsed output ({} if none).

    timeout is the CLI's own (-t); the command may take longer while the
    minions report the job still running.
    """
    proc = host.exec([str(VENV_BIN / "salt"), "--out", "json", "--static", "-t", str(timeout), *args],
                     check=False, timeout=timeout * 3 + 60)
    return json_output(proc, "salt", args)


def json_output(proc, tool, args):
    """The parsed JSON a Salt CLI printed ({} if nothing); an error with its output if not JSON."""
    text = proc.stdout.strip()
    try:
        return json.loads(text) if text else {}
    except ValueError:
        raise RuntimeError("%s %s printed no JSON (rc %d):\n%s\n%s"
                           % (tool, " ".join(args), proc.returncode, text[-2000:], proc.stderr[-2000:])) from None


def salt_run(host, *args, timeout=60):
    """`salt-run --out json ARGS...` in the master's host; the parsed output."""
    proc = host.exec([str(VENV_BIN / "salt-run"), "--out", "json", *args], check=False, timeout=timeout)
    try:
        return json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        raise RuntimeError("salt-run %s printed no JSON (rc %d):\n%s\n%s"
                           % (" ".join(args), proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])) from None


def connected(host):
    """Addresses of the minions connected to the master's publish port (after their auth)."""
    out = host.exec(["ss", "-Htn", "state", "established", "( sport = :4505 )"]).stdout
    return {line.split()[-1].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def wait_minions(host, minion_ids, timeout=60, ping_timeout=3):
    """Wait until every minion answers test.ping; returns seconds waited.

    Pings only once as many minions are connected as expected: a ping that
    misses a minion costs the CLI's timeout plus gather_job_timeout.
    """
    start = time.monotonic()
    pending = set(minion_ids)
    while pending:
        if len(connected(host)) >= len(minion_ids):
            answers = salt(host, "-L", ",".join(sorted(pending)), "test.ping", timeout=ping_timeout)
            pending -= {m for m, ok in answers.items() if ok is True}
        if pending and time.monotonic() - start > timeout:
            raise TimeoutError("minions not answering after %d s: %s" % (timeout, sorted(pending)))
        if pending:
            time.sleep(0.2)
    return time.monotonic() - start


def summary(result):
    """What one minion's state return says: ok, number of states, changed and failed ids."""
    if not isinstance(result, dict) or not result:
        return {"ok": False, "states": 0, "changed": [], "failed": {"return": result}}
    failed = state_failures(result)
    return {"ok": not failed, "states": len(result), "changed": sorted(state_changes(result)),
            "failed": failed}


def highstate_returns(host, minion_id, since):
    """The master's cached state returns of minion_id written at or after `since` (time.time())."""
    proc = host.exec([str(VENV_BIN / "python"), "-I", "-c", READ_JOBS, JOBS, minion_id, repr(since)])
    return [r for r in json.loads(proc.stdout) if str(r["fun"]).startswith("state.")]


def wait_highstate(host, minion_id, since, timeout=180):
    """Wait for a highstate return of minion_id (its startup highstate) newer than since.

    Returns (summary, seconds from `since` to the return).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ret in highstate_returns(host, minion_id, since):
            if ret["fun"] == "state.highstate":
                return summary(ret["return"]), ret["at"] - since
        time.sleep(1)
    raise TimeoutError("no highstate return from %s within %d s" % (minion_id, timeout))
