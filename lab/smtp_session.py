"""Long-lived sessions with a real SMTP server (postfix), measured like lab.traffic's flows.

    python -m lab.smtp_session run --flows 30 --target 192.168.0.60:25 --rate 5 \\
        --duration 40 --out result.json [--events FILE] [--timeout 2] [--stall 2] \\
        [--helo NAME] [--mail-from ADDR] [--rcpt ADDR] [--no-mail] [--mail-timeout 10]
    python -m lab.smtp_session check ADDR:PORT [--helo NAME] [--timeout 5]
    python -m lab.smtp_session send ADDR:PORT [--rcpt ADDR] [--subject TEXT] [--timeout 10]

`run`: each session connects (--connect-batch at a time), reads the 220
greeting and says EHLO; from then on, on every tick, it sends `NOOP` and
expects `250`, one command outstanding at a time.  An SMTP server answers the
commands of a session in order, so a reply is matched to the oldest command
without one (no sequence number on the wire).  When sending stops and the last
NOOPs are answered (or --timeout has passed), every session still up sends one
mail on its own connection, MAIL FROM, RCPT TO, DATA with a unique Message-ID,
then QUIT; all sessions at once, within --mail-timeout s.  A session refused
at the greeting or at EHLO ends as a TCP flow ending with an error does.

The output is that of `python -m lab.traffic run` (lab/traffic.py; each field
is explained in lab/traffic_client.py), with per flow

    message_id      the Message-ID of the session's mail (None: no mail tried)
    mail_accepted   True if the server answered the end of DATA with 250
    mail_reply      the server's last reply in the mail transaction, or why it failed

and in the summary "mails" (tried) and "mails_accepted".  A failure in the
mail transaction does not make the flow lost: the NOOP phase is judged alone.
SIGTERM/SIGINT stop sending at once and skip the mails.  The same stdout lines
as lab.traffic: `connected tcp=A/B in Ss pid=N` once every session has said
EHLO (or failed to), `done in Ss {summary}` at the end.

`check` does what keepalived's SMTP_CHECK does (connect, 220, HELO, QUIT);
`send` sends one mail.  Both print one JSON object and exit 0 on success, 1
otherwise.  Stdlib only; run it inside lab hosts, aimed at lab addresses.
"""
import argparse
import asyncio
import collections
import email.utils
import json
import os
import signal
import smtplib
import socket
import sys
import time

from . import traffic, traffic_server
from . import traffic_client as tc

RCPT = "hafw@lab.example"  # lab/mailserver.py accepts any address of lab.example
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def message(sender, rcpt, subject, message_id, body):
    """A small RFC 5322 message, CRLF line ends; no line starts with a dot."""
    head = {"From": "<%s>" % sender, "To": "<%s>" % rcpt, "Subject": subject,
            "Message-ID": message_id, "Date": email.utils.formatdate()}
    lines = ["%s: %s" % item for item in head.items()] + ["", body]
    return "".join(line + "\r\n" for line in lines).encode()


class SmtpFlow(tc.TcpFlow):
    """A TCP flow speaking SMTP: EHLO, NOOP -> 250 on every tick, one mail at the end."""

    def __init__(self, run, index, helo):
        super().__init__(run, index)
        self.helo = helo
        self.reply = []  # lines so far of a multi-line reply
        self.handlers = collections.deque([self.greeted])  # one per reply to come, in order
        self.ready = run.loop.create_future()  # True after EHLO, False if refused or failed
        self.server_said = None  # the last reply that was not the one hoped for
        self.mailing = False
        self.message_id = self.mail_accepted = self.mail_reply = None

    def begin(self, now):
        super().begin(now)
        if not self.ready.done():
            self.ready.set_result(True)

    def line_received(self, now, line):
        line = line.rstrip(b"\r")
        self.reply.append(line)
        if line[3:4] == b"-":
            return  # more lines of this reply follow
        text = b"\n".join(self.reply).decode("utf-8", "replace")
        self.reply = []
        if self.handlers:
            self.handlers.popleft()(now, line[:3], text)
        else:
            self.server_said = text  # unasked, e.g. "421 ... timeout" before a close

    def greeted(self, now, code, text):
        if code != b"220":
            return self.refused(now, text)
        self.handlers.append(self.said_ehlo)
        self.transport.write(b"EHLO %s\r\n" % self.helo.encode())

    def said_ehlo(self, now, code, text):
        if code != b"250":
            return self.refused(now, text)
        self.begin(now)

    def refused(self, now, text):
        self.server_said = text
        self.ended = now
        self.error = "refused: " + text
        self.errors += 1
        self.close()
        if not self.ready.done():
            self.ready.set_result(False)

    def request(self, seq):
        self.handlers.append(self.noop_answered)
        return b"NOOP\r\n"

    def noop_answered(self, now, code, text):
        if code == b"250":
            self.answered(now)
            return
        # Answered, but not with 250: that request is lost, the session goes on.
        _, _, counted = self.waiting
        self.waiting = None
        self.lost += not counted
        self.server_said = self.error = text
        self.errors += 1

    def connection_lost(self, exc):
        if self.mailing and not self.closing:
            # Whatever waits for a reply gets this instead; the NOOP phase is over.
            why = "connection lost: %s" % (exc or "closed by peer")
            while self.handlers:
                self.handlers.popleft()(self.run.loop.time(), b"", why)
        elif self.ended is None:
            super().connection_lost(exc)

    def fail(self, exc, during=""):
        super().fail(exc, during)
        if self.server_said:
            self.error += " (server said %r)" % self.server_said
        if not self.ready.done():
            self.ready.set_result(False)

    def command(self, data):
        """Send a command; a future of its reply (code, text)."""
        reply = self.run.loop.create_future()

        def answered(now, code, text):
            if not reply.done():
                reply.set_result((code, text))
        self.handlers.append(answered)
        self.transport.write(data)
        return reply

    async def send_mail(self, sender, rcpt, message_id, timeout):
        """The mail transaction on this session, then QUIT; the outcome goes to record()."""
        self.mailing = True
        self.message_id, self.mail_accepted = message_id, False
        body = "Session %d of a lab.smtp_session run: %d replies to %d NOOPs." % (
            self.index, self.replies, self.sent)
        data = message(sender, rcpt, "hafw lab session %d" % self.index, message_id, body)
        steps = [(b"MAIL FROM:<%s>\r\n" % sender.encode(), b"250"),
                 (b"RCPT TO:<%s>\r\n" % rcpt.encode(), b"250"),
                 (b"DATA\r\n", b"354"), (data + b".\r\n", b"250")]
        try:
            async with asyncio.timeout(timeout):
                for data, want in steps:
                    code, self.mail_reply = await self.command(data)
                    if code != want:
                        return
                self.mail_accepted = True
                self.closing = True  # the server closes after 221: not a failure
                await self.command(b"QUIT\r\n")
        except TimeoutError:
            if not self.mail_accepted:
                self.mail_reply = "no reply within %g s, last: %s" % (timeout, self.mail_reply)

    def record(self):
        return {**super().record(), "message_id": self.message_id,
                "mail_accepted": self.mail_accepted, "mail_reply": self.mail_reply}


async def run_sessions(args):
    loop = asyncio.get_running_loop()
    run, stopped = traffic.new_run(loop, args.flows, args)
    sessions = [SmtpFlow(run, i, args.helo) for i in range(args.flows)]
    gate = asyncio.Semaphore(args.connect_batch)

    async def open_session(flow):
        """Connect, 220, EHLO, within --connect-timeout."""
        async with gate:
            try:
                async with asyncio.timeout(max(0.0, min(args.connect_timeout,
                                                        run.stop_at - loop.time()))):
                    await loop.create_connection(lambda: flow, *args.target)
                    await flow.ready
            except (OSError, TimeoutError) as exc:
                if flow.ended is None:
                    flow.fail(exc, "connect: ")

    async def open_all():
        await asyncio.gather(*(open_session(f) for f in sessions))
        print("connected tcp=%d/%d in %.2fs pid=%d" % (
            sum(f.ended is None for f in sessions), len(sessions), loop.time() - run.t0,
            os.getpid()), flush=True)

    opening = asyncio.ensure_future(open_all())
    driver = asyncio.ensure_future(run.drive())
    try:
        await asyncio.wait_for(stopped.wait(), max(0.0, run.stop_at - loop.time()))
    except TimeoutError:
        pass
    for task in (opening, driver):
        task.cancel()
    await asyncio.gather(opening, driver, return_exceptions=True)
    drain_until = run.stop_at + args.timeout
    while (not stopped.is_set() and loop.time() < drain_until
           and any(f.outstanding() and f.ended is None for f in sessions)):
        await asyncio.sleep(0.05)
    if args.mail and not stopped.is_set():
        stamp = "%d.%d" % (run.t0_epoch * 1000, os.getpid())
        up = [f for f in sessions if f.ended is None and f.start is not None]
        await asyncio.gather(*(f.send_mail(args.mail_from, args.rcpt, "<hafw.%s.%d@%s>" % (
            stamp, f.index, args.helo), args.mail_timeout) for f in up))
    wall = loop.time() - run.t0
    for flow in sessions:
        flow.close()
    await asyncio.sleep(0)
    records = [f.record() for f in sessions]
    events, bad = traffic.read_events(args.events, run.t0_epoch)
    summary = traffic.summarize(args, run, sessions, records, wall, stopped.is_set(), bad)
    summary["mails"] = sum(r["message_id"] is not None for r in records)
    summary["mails_accepted"] = sum(bool(r["mail_accepted"]) for r in records)
    return {"summary": summary, "flows": records, "events": events}


def accepted_ids(result):
    """The Message-IDs the server accepted (250 after DATA), from a `run` result."""
    return [f["message_id"] for f in result["flows"] if f.get("mail_accepted")]


def check(args):
    """keepalived's SMTP_CHECK: connect, read the 220 greeting, HELO, QUIT."""
    out = {"target": "%s:%d" % args.target, "ok": False}
    started = time.monotonic()
    try:
        with smtplib.SMTP(timeout=args.timeout) as smtp:
            code, text = smtp.connect(*args.target)
            out["greeting"] = "%d %s" % (code, text.decode(errors="replace"))
            if code == 220:
                out["helo"] = smtp.helo(args.helo)[0]
                out["quit"] = smtp.quit()[0]
            out["ok"] = (code, out.get("helo")) == (220, 250)
    except (OSError, smtplib.SMTPException) as exc:
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
    out["ms"] = round((time.monotonic() - started) * 1000, 1)
    return out


def send(args):
    """One mail in a session of its own; out["accepted"]: 250 after DATA."""
    message_id = email.utils.make_msgid("hafw", args.helo)
    out = {"target": "%s:%d" % args.target, "message_id": message_id, "accepted": False}
    try:
        with smtplib.SMTP(timeout=args.timeout) as smtp:
            smtp.connect(*args.target)
            smtp.ehlo(args.helo)
            data = message(args.mail_from, args.rcpt, args.subject, message_id,
                           "Sent by lab.smtp_session send.")
            smtp.sendmail(args.mail_from, [args.rcpt], data)
            out["accepted"] = True
            smtp.quit()
    except (OSError, smtplib.SMTPException) as exc:
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
    return out


def in_host(host, argv, timeout=60):
    """Run `python -m lab.smtp_session ARGV` in a lab host; its JSON output, parsed.

    For `check` and `send`; `run` is long: start it like lab/flows.py does.
    """
    proc = host.exec([sys.executable, "-m", "lab.smtp_session", *argv], check=False,
                     timeout=timeout, env={"PYTHONPATH": REPO})
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise RuntimeError("on %s: lab.smtp_session %s: %s" % (
            host.name, " ".join(argv), (proc.stderr or proc.stdout)[-2000:])) from None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab.smtp_session",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="long-lived SMTP sessions against a server, write FILE.json")
    run.add_argument("--flows", type=int, required=True, help="SMTP sessions")
    run.add_argument("--target", type=traffic.address, required=True, metavar="ADDR:PORT")
    traffic.add_run_options(run, "session", "for connect, greeting and EHLO")
    run.add_argument("--no-mail", dest="mail", action="store_false",
                     help="no mail at the end, just close")
    run.add_argument("--mail-timeout", type=float, default=10.0,
                     help="for all the sessions' mails at the end")
    run.set_defaults(udp_flows=0, udp_target=None)  # for traffic.check_run_args, summarize
    probe = sub.add_parser("check", help="SMTP_CHECK: connect, 220, HELO, QUIT")
    mail = sub.add_parser("send", help="send one mail")
    mail.add_argument("--subject", default="hafw lab mail")
    for cmd in (probe, mail):
        cmd.add_argument("target", type=traffic.address, metavar="ADDR:PORT")
        cmd.add_argument("--timeout", type=float, default=5.0 if cmd is probe else 10.0)
    for cmd in (run, mail):
        cmd.add_argument("--mail-from", default="hafw-traffic@" + socket.gethostname())
        cmd.add_argument("--rcpt", default=RCPT, metavar="ADDR")
    for cmd in (run, probe, mail):
        cmd.add_argument("--helo", default=socket.gethostname(), metavar="NAME")
    args = parser.parse_args(argv)
    if args.command in ("check", "send"):
        out = check(args) if args.command == "check" else send(args)
        print(json.dumps(out), flush=True)
        return 0 if out.get("ok", out.get("accepted")) else 1
    traffic.check_run_args(parser, args)
    if args.mail_timeout <= 0 or args.mail_timeout > 120:
        parser.error("--mail-timeout: (0, 120] s")
    traffic_server.raise_fd_limit()
    budget = args.duration + args.timeout + args.connect_timeout + args.mail_timeout
    signal.alarm(int(budget + 60))  # whatever happens, this process is gone soon after
    started = time.monotonic()
    result = asyncio.run(run_sessions(args))
    traffic.write_json(args.out, result)
    summary = {k: v for k, v in result["summary"].items() if k not in ("target", "udp_target")}
    print("done in %.1fs %s" % (time.monotonic() - started, json.dumps(summary)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
