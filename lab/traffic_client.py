"""The traffic tool's client: many long-lived TCP sessions and UDP flows, measured.

Flows.  A TCP flow connects once (connects run --connect-batch at a time),
waits for the `220` greeting, then on every tick (--rate per second, ticks
spread evenly over the flows, see Run) sends `NOOP <seq>` and waits for `250 <seq>`:
one request outstanding at a time, so a tick that finds the last request
unanswered sends nothing.  It never reconnects: a reset, a close by the
server or any socket error ends the flow and is recorded.  A UDP flow is one
connected socket sending `<flow> <seq>` on every tick whether or not earlier
datagrams were answered; replies are matched by <seq>.  An ICMP error on a
UDP socket is counted (`errors`, `error`) but does not end the flow.
lab/smtp_session.py's SmtpFlow is a TcpFlow speaking real SMTP to postfix
(EHLO, bare NOOPs): it overrides line_received() and request().

Per flow, all times relative to the run's start t0:
  sent, replies   requests sent, replies received (late ones included)
  lost            requests with no reply within --timeout s of being sent,
                  including those never answered by the end of the run
  late            of the lost, how many were answered after all (TCP retransmits)
  max_gap_ms      longest time without a reply: between consecutive replies,
                  from the flow's start (greeting / socket ready) to its first
                  reply, and from its last reply to its end (error or end of run)
  max_rtt_ms      longest request -> reply time
  reset, error    TCP: reset by peer (bool); error text of whatever ended the
                  flow (or of the last ICMP error for UDP), else None
  lost_flow       True if the flow is LOST: it ended early with a reset or error
                  (TCP), or it never got a reply, or its last reply came more
                  than `stall_s` = max(--stall, 3/rate) before sending stopped
  timeline        replies per bucket of summary.bucket_ms from t0: 100 ms, unless
                  flows x buckets would pass 5 M (then a multiple of 100 ms)

The run ends by itself: sending stops --duration s after t0 (connecting
counts), then it waits at most --timeout s for outstanding replies, closes all
sockets and writes --out.  SIGTERM/SIGINT stop sending at once
(summary.stopped_early).  Events: lines `{"t": <epoch s>, "label": "..."}`
that anyone appends to the --events file during the run are copied into the
output, with t_rel = t - t0.
"""
import asyncio
import math
import time

BUCKET_S = 0.1  # timeline resolution...
MAX_CELLS = 5_000_000  # ...coarsened (a multiple of 0.1 s) beyond this many flows x buckets
MAX_FLOWS = 5000  # TCP + UDP
MAX_RATE = 50.0  # per flow, Hz
MAX_MESSAGES_PER_S = 50000  # flows x rate
MAX_DURATION = 3600.0
TICK_S = 0.01  # send schedule granularity
GOLDEN = 0.6180339887
MAX_EXPIRED = 10000  # per UDP flow: lost seqs remembered to recognise late replies


class Run:
    """What all flows share: the clock, the send schedule and the limits.

    One driver sends for every flow (no timer per flow): the period is cut
    into slots of about TICK_S; each flow owns a slot and sends when the
    driver passes it, so each flow sends once per period.  Slots are given
    out by the golden ratio, so any run of consecutive flows (the TCP ones,
    the UDP ones) is spread evenly over the period.  If the driver falls
    behind it catches up at most one period: ticks are skipped, never burst.
    """

    def __init__(self, loop, n_flows, rate, duration, timeout, stall):
        self.loop = loop
        self.n_flows = n_flows
        self.period = 1.0 / rate
        self.timeout = timeout
        self.stall = max(stall, 3 * self.period)
        self.t0 = loop.time()
        self.t0_epoch = time.time()
        self.stop_at = self.t0 + duration
        span = duration + timeout
        self.bucket_s = BUCKET_S * max(1, math.ceil(n_flows * span / BUCKET_S / MAX_CELLS))
        self.n_buckets = int(math.ceil(span / self.bucket_s)) + 1
        self.slots = max(1, round(self.period / TICK_S))
        self.slot_s = self.period / self.slots
        self.wheel = [[] for _ in range(self.slots)]

    def add(self, flow):
        self.wheel[int((flow.index * GOLDEN) % 1.0 * self.slots)].append(flow)

    async def drive(self):
        """Send for all flows until stop_at."""
        tick = 0
        while True:
            now = self.loop.time()
            due = self.t0 + tick * self.slot_s
            if due > now:
                await asyncio.sleep(due - now)
                now = self.loop.time()
            if now >= self.stop_at:
                return
            last = int((now - self.t0) / self.slot_s)
            for k in range(max(tick, last - self.slots + 1), last + 1):
                for flow in self.wheel[k % self.slots]:
                    if flow.ended is None:
                        flow.send(now)
            tick = last + 1


class Flow:
    proto = "?"

    def __init__(self, run, index):
        self.run, self.index = run, index
        self.transport = None
        self.local = None
        self.sent = self.replies = self.lost = self.late = self.errors = 0
        self.max_gap = self.max_rtt = 0.0
        self.created = run.loop.time()
        self.start = None  # when the flow could first send
        self.first_reply = self.last_reply = None
        self.ended = None  # when an error ended it (TCP)
        self.reset, self.error = False, None
        self.closing = False
        self.timeline = [0] * run.n_buckets

    def begin(self, now):
        self.start = now
        self.run.add(self)

    def got_reply(self, now, sent_at):
        self.replies += 1
        rtt = now - sent_at
        self.max_rtt = max(self.max_rtt, rtt)
        self.max_gap = max(self.max_gap, now - (self.last_reply or self.start))
        if self.first_reply is None:
            self.first_reply = now
        self.last_reply = now
        self.timeline[min(int((now - self.run.t0) / self.run.bucket_s), self.run.n_buckets - 1)] += 1

    def outstanding(self):
        return 0

    def close(self):
        self.closing = True
        if self.transport:
            self.transport.close()

    def record(self):
        """The flow's result; call once, after the drain."""
        run = self.run
        self.lost += self.outstanding()
        end = self.ended if self.ended is not None else run.stop_at
        self.max_gap = max(self.max_gap, end - (self.last_reply or self.start or self.created))
        lost_flow = (self.ended is not None or self.last_reply is None
                     or self.last_reply < run.stop_at - run.stall)

        def rel(t):
            return None if t is None else round((t - run.t0) * 1000)
        return {"id": self.index, "proto": self.proto, "local": self.local,
                "sent": self.sent, "replies": self.replies, "lost": self.lost,
                "late": self.late, "max_gap_ms": round(self.max_gap * 1000),
                "max_rtt_ms": round(self.max_rtt * 1000, 1),
                "first_reply_ms": rel(self.first_reply), "last_reply_ms": rel(self.last_reply),
                "ended_ms": rel(self.ended), "reset": self.reset, "error": self.error,
                "errors": self.errors, "lost_flow": lost_flow, "timeline": self.timeline}


class TcpFlow(Flow, asyncio.Protocol):
    proto = "tcp"

    def __init__(self, run, index):
        super().__init__(run, index)
        self.buf = b""
        self.seq = 0
        self.waiting = None  # (seq, sent_at, counted_lost) of the unanswered request

    def connection_made(self, transport):
        self.transport = transport
        self.local = "%s:%d" % transport.get_extra_info("sockname")[:2]

    def data_received(self, data):
        now = self.run.loop.time()
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            self.line_received(now, line)

    def line_received(self, now, line):
        """One line from the server (a subclass may speak another dialect)."""
        if self.start is None:
            if line.startswith(b"220"):
                self.begin(now)
            return
        words = line.split()
        if self.waiting and len(words) == 2 and words[0] == b"250" \
                and words[1] == b"%d" % self.waiting[0]:
            self.answered(now)

    def answered(self, now):
        """The outstanding request got its reply."""
        seq, sent_at, counted = self.waiting
        self.waiting = None
        if now - sent_at > self.run.timeout:
            self.late += 1
            self.lost += not counted
        self.got_reply(now, sent_at)

    def request(self, seq):
        """The bytes of request number seq."""
        return b"NOOP %d\r\n" % seq

    def send(self, now):
        if self.waiting:
            seq, sent_at, counted = self.waiting
            if not counted and now - sent_at > self.run.timeout:
                self.lost += 1
                self.waiting = (seq, sent_at, True)
            return
        self.seq += 1
        self.sent += 1
        self.waiting = (self.seq, now, False)
        self.transport.write(self.request(self.seq))

    def outstanding(self):
        return 1 if self.waiting and not self.waiting[2] else 0

    def connection_lost(self, exc):
        if self.closing:
            return
        self.fail(exc)

    def fail(self, exc, during=""):
        self.ended = self.run.loop.time()
        self.reset = isinstance(exc, ConnectionResetError)
        if exc is None:
            self.error = "closed by peer"
        else:
            self.error = "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
        self.error = during + self.error
        self.errors += 1


class UdpFlow(Flow, asyncio.DatagramProtocol):
    proto = "udp"

    def __init__(self, run, index):
        super().__init__(run, index)
        self.seq = 0
        self.pending = {}  # seq -> sent_at, oldest first
        self.expired = set()  # seqs counted lost, so a late reply is recognised

    def connection_made(self, transport):
        self.transport = transport
        self.local = "%s:%d" % transport.get_extra_info("sockname")[:2]

    def send(self, now):
        self.expire(now)
        self.seq += 1
        self.sent += 1
        self.pending[self.seq] = now
        self.transport.sendto(b"%d %d\n" % (self.index, self.seq))

    def expire(self, now):
        deadline = now - self.run.timeout
        while self.pending:
            seq, sent_at = next(iter(self.pending.items()))
            if sent_at >= deadline:
                break
            del self.pending[seq]
            self.lost += 1
            if len(self.expired) < MAX_EXPIRED:
                self.expired.add(seq)

    def datagram_received(self, data, addr):
        now = self.run.loop.time()
        try:
            seq = int(data.split()[1])
        except (IndexError, ValueError):
            return
        sent_at = self.pending.pop(seq, None)
        if sent_at is None:
            if seq not in self.expired:
                return  # a duplicate, or not ours
            self.expired.discard(seq)
            self.late += 1
            sent_at = now - self.run.timeout  # rtt unknown beyond "more than timeout"
        elif now - sent_at > self.run.timeout:
            self.lost += 1
            self.late += 1
        self.got_reply(now, sent_at)

    def error_received(self, exc):
        self.errors += 1
        self.error = "%s: %s" % (type(exc).__name__, exc)

    def outstanding(self):
        return len(self.pending)
