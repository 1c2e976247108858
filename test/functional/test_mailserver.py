"""A real postfix in a lab host (lab/mailserver.py), and SMTP sessions with it (lab/smtp_session.py).

    cli 192.168.77.11 -- lan -- mail 192.168.77.61 (postfix, port 25)

postfix runs only inside `mail`: nothing listens on port 25 in the machine's
own network namespace, before, during or after, and the machine's
/etc/postfix is untouched.  Needs root, iproute2 and postfix (the project's
setup installs it).  About 60 s, most of it the 40 s session run.
"""
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import Lab, mailserver, netns, smtp_session
from test.support.clients import run_client

REPO = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(REPO)}
SERVER = "192.168.77.61"
TARGET = SERVER + ":25"
MACHINE_MAIN_CF = Path("/etc/postfix/main.cf")
PREFIXES = []  # lab runs made here: none may be left at the end
STARTED = []  # every Popen started here: all must have ended at the end
PID_NAMESPACES = set()  # of the mail host, each boot: no process may be left in one

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/sbin/postfix"),
                                reason="postfix is not installed (the setup installs it)")


def machine_listeners_on_25():
    """TCP listeners on port 25 in the machine's own network namespace."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.split()[3].endswith(":25")]


def machine_main_cf():
    return hashlib.sha256(MACHINE_MAIN_CF.read_bytes()).hexdigest() \
        if MACHINE_MAIN_CF.exists() else None


def processes_in(namespaces):
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink("/proc/%s/ns/pid" % entry) in namespaces:
                found.append(int(entry))
        except OSError:  # gone meanwhile
            pass
    return found


def pid_namespace(host):
    return os.readlink("/proc/%d/ns/pid" % host.init_pid)


def read(path):
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module", autouse=True)
def no_leftovers():
    main_cf = machine_main_cf()
    assert machine_listeners_on_25() == []
    yield
    assert [ns for ns in netns.list_netns() if any(ns.startswith(p) for p in PREFIXES)] == []
    assert [p.args for p in STARTED if p.poll() is None] == []
    assert processes_in(PID_NAMESPACES) == []  # postfix died with its host
    assert machine_listeners_on_25() == []
    assert machine_main_cf() == main_cf


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    logs = tmp_path_factory.mktemp("mail")
    with Lab() as lab:
        PREFIXES.append(lab.prefix)
        lab.add_switch("lan")
        mail, cli = lab.add_host("mail"), lab.add_host("cli")
        lab.connect(mail, "lan", "eth0", SERVER + "/24")
        lab.connect(cli, "lan", "eth0", "192.168.77.11/24")
        PID_NAMESPACES.add(pid_namespace(mail))
        mailserver.configure(mail, [SERVER + "/24"])
        mailserver.start(mail)
        yield {"lab": lab, "mail": mail, "cli": cli, "logs": logs}


def run_sessions(net, name, flows, duration, rate=5, during=None, extra=()):
    """lab.smtp_session run in cli; during(log) runs once every session has said EHLO."""
    out, log = net["logs"] / (name + ".json"), net["logs"] / (name + ".log")
    cmd = [sys.executable, "-m", "lab.smtp_session", "run", "--flows", str(flows),
           "--target", TARGET, "--rate", str(rate), "--duration", str(duration),
           "--out", str(out), *extra]
    return run_client(net["cli"], cmd, log, out, duration + 40, STARTED, during, log, what="the sessions")


def check(net):
    return smtp_session.in_host(net["cli"], ["check", TARGET, "--helo", "lb-probe"])


def test_postfix_listens_in_its_host_only(net):
    listening = net["mail"].exec(["ss", "-ltnH"]).stdout
    assert SERVER + ":25" in listening, listening
    assert machine_listeners_on_25() == []
    assert mailserver.running(net["mail"]) and len(mailserver.pids(net["mail"])) >= 3
    config = net["mail"].exec(["postconf", "-h", "myhostname", "smtpd_junk_command_limit"])
    assert config.stdout.split() == ["mail", "1000000"]


def test_an_smtp_check_probe_is_answered(net):
    """What keepalived's SMTP_CHECK does: connect, 220, HELO, QUIT."""
    probe = check(net)
    assert probe["ok"] and probe["greeting"].startswith("220 mail ESMTP"), probe
    assert (probe["helo"], probe["quit"]) == (250, 221)
    assert "disconnect from unknown[192.168.77.11] helo=1 quit=1" in mailserver.log(net["mail"])


def test_a_mail_is_delivered(net):
    since = time.time() - 1
    sent = smtp_session.in_host(net["cli"], ["send", TARGET, "--subject", "delivery test"])
    assert sent["accepted"], sent
    [mail] = mailserver.wait_delivered(net["mail"], [sent["message_id"]], since=since)
    assert (mail["subject"], mail["to"]) == ("delivery test", "hafw@lab.example")
    assert mail["file"].startswith("new/")
    assert mailserver.delivered(net["mail"], since=time.time() + 60) == []


def test_long_lived_sessions_outlast_postfix_junk_command_limit(net):
    """30 sessions, a NOOP every 0.2 s for 40 s: ~200 each, twice the default limit."""
    since = time.time() - 1
    result = run_sessions(net, "long", flows=30, duration=40.0, rate=5)
    s = result["summary"]
    assert (s["tcp"], s["started"], s["lost_flows"], s["lost"], s["resets"], s["errors"]) \
        == (30, 30, 0, 0, 0, 0), s
    assert all(f["replies"] == f["sent"] >= 180 for f in result["flows"])
    assert s["max_gap_ms"] < 1500, s
    # Each session then mailed on its own connection: all accepted, all delivered.
    assert (s["mails"], s["mails_accepted"]) == (30, 30), s
    ids = smtp_session.accepted_ids(result)
    assert len(set(ids)) == 30
    assert all(f["mail_reply"].startswith("250 2.0.0 Ok: queued as") for f in result["flows"])
    mailserver.wait_delivered(net["mail"], ids, since=since)
    assert "too many errors" not in mailserver.log(net["mail"])


def test_stop_cuts_sessions_and_refuses_until_start(net):
    mail, stopped = net["mail"], {}

    def during(log):
        time.sleep(1.0)
        mailserver.stop(mail)
        stopped["check"] = check(net)
    result = run_sessions(net, "stop", flows=10, duration=4.0, during=during)
    assert not mailserver.running(mail) and mailserver.pids(mail) == []
    assert "ConnectionRefusedError" in stopped["check"]["error"], stopped
    s = result["summary"]
    # The master ended every smtpd: each session was closed under it, and sent no mail.
    assert (s["lost_flows"], s["mails"]) == (10, 0), s
    assert all(f["ended_ms"] and f["error"] for f in result["flows"])
    refused = run_sessions(net, "refused", flows=3, duration=1.0)
    assert all("ConnectionRefusedError" in f["error"] for f in refused["flows"]), refused

    mailserver.start(mail)
    assert check(net)["ok"]


def test_postfix_dies_with_its_host_and_starts_after_a_reboot(net):
    mail = net["mail"]
    old = pid_namespace(mail)
    mail.reboot()
    PID_NAMESPACES.add(pid_namespace(mail))
    assert processes_in({old}) == []
    assert not mailserver.running(mail)
    mailserver.start(mail)  # /etc and /var kept the configuration and the mailbox
    assert check(net)["ok"]
    assert "delivery test" in [m["subject"] for m in mailserver.delivered(mail)]
