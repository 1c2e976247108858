"""A real postfix as a lab host's SMTP server (the seed's mail-cent7a and mail-cent7b).

    from lab import mailserver
    mailserver.configure(host, addresses=None)   # main.cf, master.cf, mailbox, in the host
    mailserver.start(host); mailserver.running(host); mailserver.stop(host)
    mailserver.delivered(host, since=None)       # [{message_id, subject, from, to, time, file}]
    mailserver.wait_delivered(host, ids, timeout=15)
    mailserver.log(host)                         # /var/log/postfix.log of the host

Everything postfix reads or writes is private to the host: its configuration
in /etc/postfix, queue, log and mailbox in /var, pid file and sockets in
/var/spool/postfix (the host's /etc and /var are overlays, see lab/host.py).
The machine's own postfix has no main.cf and is never started; postfix must
never run outside a lab host.  Its processes live in the host's PID
namespace: a crash of the host (`kill_all`, `reboot`) ends them; after a
reboot the configuration is still there and `start` brings the server back.

Mail for lab.example and for the host's name, to any local part, goes to one
Maildir, /var/mail/lab/hafw/, owned by the `mail` user (virtual delivery:
no user account is needed, and `useradd` could not make a home directory
privately: /home is the machine's).  The SMTP client side is
lab/smtp_session.py.
"""
import email.parser
import os
from pathlib import Path

from .names import LabError
from .wait import wait_for

DOMAIN = "lab.example"
MAILBOX = "/var/mail/lab/hafw"  # a Maildir: new/, cur/, tmp/
LOG = "/var/log/postfix.log"
START_LOG = "/var/log/postfix-start.log"
DAEMONS = "/usr/lib/postfix/sbin/"  # Debian's daemon_directory: master, smtpd, qmgr...
LAB_NETWORKS = ("127.0.0.0/8", "192.168.0.0/16")  # the deployment's networks, lab-only here
MAX_SESSIONS = 300  # smtpd processes: one per open session

# main.cf, in order.  Values may name the arguments of configure() in {braces}.
MAIN_CF = [
    ("compatibility_level", "3.6", "today's defaults, without compatibility warnings"),
    ("myhostname", "{name}", "the host's name; mail for it is local too"),
    ("mydomain", DOMAIN, ""),
    ("myorigin", "$myhostname", ""),
    ("inet_interfaces", "{interfaces}", "the host's netns holds lab addresses only"),
    ("inet_protocols", "ipv4", ""),
    ("mynetworks", "{networks}", "the lab's clients may relay and are exempt "
                                 "from the per-client connection limits"),
    ("mydestination", "", "no local(8) delivery: everything local is virtual, below"),
    ("virtual_mailbox_domains", "%s, $myhostname" % DOMAIN, ""),
    ("virtual_mailbox_base", os.path.dirname(MAILBOX), ""),
    ("virtual_mailbox_maps", "static:%s/" % os.path.basename(MAILBOX),
     "every address of those domains: one Maildir (the trailing /)"),
    ("virtual_uid_maps", "static:8", "owned by the `mail` user and group (8)"),
    ("virtual_gid_maps", "static:8", ""),
    ("virtual_minimum_uid", "8", ""),
    ("alias_maps", "", "no /etc/aliases database in the host"),
    ("alias_database", "", ""),
    ("biff", "no", ""),
    # No DNS: the lab has no resolver, and a lookup would stall a session.
    ("smtpd_peername_lookup", "no", "no reverse lookup of each client (postfix >= 3.4)"),
    ("smtp_dns_support_level", "disabled", "what disable_dns_lookups was (deprecated)"),
    ("smtp_host_lookup", "native", ""),
    ("lmtp_dns_support_level", "disabled", ""),
    # NOOP, RSET, VRFY and ETRN are "junk" to postfix: past smtpd_junk_command_limit
    # (100 by default, 1 under stress) each one counts as an error, so after 10 more
    # every reply is delayed by smtpd_error_sleep_time (1 s) and after 20 more the
    # session ends with "421 too many errors".  The lab's sessions send a NOOP every
    # 0.2-1 s for minutes: they would be cut after about 120 NOOPs.  lab.smtp_session
    # sends at most 50 a second for an hour (180,000): the limit is above that.
    ("smtpd_junk_command_limit", "1000000", "sessions NOOP for minutes: lab/mailserver.py says why"),
    # Longer than any gap a lab failover makes (seconds), so a session survives it;
    # shorter than the 300 s default, so the smtpd of a dead client ends sooner.
    # Explicit, as the default drops to 10 s under stress (all smtpd processes busy).
    ("smtpd_timeout", "120s", ""),
    ("in_flow_delay", "0s", "the sessions' mails arrive together at the end of a run"),
    ("maillog_file", LOG, "no syslog in a host: postlogd writes this file"),
]


def main_cf(name, interfaces, networks):
    values = {"name": name, "interfaces": interfaces, "networks": networks}
    lines = ["# postfix in lab host %s, written by lab/mailserver.py" % name]
    for key, value, comment in MAIN_CF:
        if comment:
            lines.append("# " + comment)
        lines.append("%s = %s" % (key, value.format(**values)))
    return "\n".join(lines) + "\n"


def configure(host, addresses=None, networks=LAB_NETWORKS, max_sessions=MAX_SESSIONS):
    """Write the host's postfix configuration and make its mailbox; idempotent.

    addresses: the addresses (CIDR or bare) to listen on, port 25; None: all
    of the host's.  networks: the clients trusted to relay (mynetworks).
    max_sessions: smtpd processes at most, one per open session.
    """
    if addresses:
        interfaces = ", ".join(a.split("/")[0] for a in addresses)
    else:
        interfaces = "all"
    text = main_cf(host.name, interfaces, " ".join(networks))
    mail_dir = os.path.dirname(MAILBOX)
    script = "\n".join([
        "set -e",
        "command -v postfix >/dev/null || { echo 'postfix is not installed' >&2; exit 1; }",
        "cat > /etc/postfix/main.cf",
        # Debian's master.cf runs most daemons chrooted in the queue dir, which then
        # needs copies of /etc files (its init script makes them): no chroot here.
        "postconf -F '*/*/chroot = n'",
        "postconf -F 'smtp/inet/process_limit = %d'" % max_sessions,
        "postconf -Me 'postlog/unix-dgram = postlog unix-dgram n - n - 1 postlogd'",
        "install -d -o mail -g mail -m 0750 %s" % mail_dir,
    ])  # no `postfix check` (1-2 s): `postfix start` checks, start() shows its log
    proc = host.exec(["sh", "-c", script], input=text, check=False)
    if proc.returncode:
        raise LabError("postfix configuration on %s failed: %s" % (
            host.name, (proc.stderr or proc.stdout).strip()[-2000:]))


def running(host):
    """True if the host's postfix master runs."""
    return host.running and host.exec(["postfix", "status"], check=False).returncode == 0


def start(host):
    """Start postfix in the host (configure() first); returns once it listens."""
    if running(host):
        return
    # `postfix start` returns when the master is up, its listening sockets made.
    # Output to a file: the daemons must not hold exec's pipes open.
    proc = host.exec(["sh", "-c", "postfix start </dev/null >>%s 2>&1" % START_LOG], check=False)
    if proc.returncode or not running(host):
        raise LabError("postfix did not start on %s (rc %d):\n%s" % (
            host.name, proc.returncode, _tail(host, START_LOG) + _tail(host, LOG)))


def pids(host):
    """Pids (as seen in the host) of its postfix processes."""
    if not host.running:
        return []
    found = []
    for pid in host.pids():
        try:
            exe = os.readlink("/proc/%d/root/proc/%d/exe" % (host.init_pid, pid))
        except OSError:  # gone, or the host's init's kernel thread view
            continue
        if exe.startswith(DAEMONS):
            found.append(pid)
    return found


def stop(host, timeout=10.0):
    """Stop postfix: the master ends its daemons, open sessions are cut, and
    new connections are refused.  Whatever is left after timeout is killed."""
    if not host.running:
        return
    host.exec(["postfix", "stop"], check=False)
    try:
        wait_for(lambda: not pids(host), timeout, "postfix to stop on %s" % host.name)
    except TimeoutError:
        left = pids(host)
        if left:
            host.exec(["kill", "-KILL", *map(str, left)], check=False)
        wait_for(lambda: not pids(host), 5, "postfix to die on %s" % host.name)


def _path(host, path):
    """path inside the running host, from here."""
    if not host.running:
        raise LabError("host %s is not running" % host.name)
    return Path("/proc/%d/root%s" % (host.init_pid, path))


def _tail(host, path, chars=3000):
    try:
        return _path(host, path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def log(host):
    """The host's postfix log (empty if there is none yet)."""
    try:
        return _path(host, LOG).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def delivered(host, since=None):
    """The mails in the host's mailbox, oldest first; since: epoch s, only those newer.

    Each: {"message_id", "subject", "from", "to" (Delivered-To), "time" (of
    delivery, epoch s), "file"}.
    """
    mails = []
    parser = email.parser.BytesHeaderParser()
    for sub in ("new", "cur"):
        folder = _path(host, "%s/%s" % (MAILBOX, sub))
        for path in folder.iterdir() if folder.is_dir() else ():
            try:
                mtime = path.stat().st_mtime
                if since is not None and mtime < since:
                    continue
                with path.open("rb") as f:
                    headers = parser.parse(f)
            except FileNotFoundError:  # moved from new/ to cur/ meanwhile
                continue
            mails.append({"message_id": (headers["Message-ID"] or "").strip(),
                          "subject": headers["Subject"], "from": headers["From"],
                          "to": headers["Delivered-To"], "time": mtime,
                          "file": "%s/%s" % (sub, path.name)})
    return sorted(mails, key=lambda m: m["time"])


def wait_delivered(host, message_ids, timeout=15.0, since=None):
    """Wait until every one of message_ids is in the mailbox; returns those mails."""
    wanted = set(message_ids)

    def found():
        mails = [m for m in delivered(host, since) if m["message_id"] in wanted]
        return mails if {m["message_id"] for m in mails} >= wanted else None

    def missing():
        have = {m["message_id"] for m in delivered(host, since)}
        return "missing: %s\n%s" % (sorted(wanted - have)[:10], _tail(host, LOG))
    return wait_for(found, timeout, "%d mails on %s" % (len(wanted), host.name),
                    explain=missing)
