"""The traffic tool's server: an SMTP-like TCP responder and a UDP echo, on asyncio.

TCP: each session is greeted with `220 hafw-traffic ready`; every line the
client sends is answered with `250 <seq>`, where <seq> is the line's second
word (the client sends `NOOP <seq>`), or the session's line count if the line
has none.  `QUIT` is answered with `221 bye` and closes the session.
UDP: every datagram is sent back unchanged to its sender.

Nothing is logged per message or per session.  On exit (SIGTERM, SIGINT or
--max-seconds) one line of totals goes to stdout.  The server ends by itself
after --max-seconds (default one hour), so a forgotten one does not linger.
"""
import asyncio
import json
import os
import resource
import signal
import socket
import time

GREETING = b"220 hafw-traffic ready\r\n"
MAX_LINE = 1024  # a longer line without newline ends the session
MAX_SESSIONS = 20000
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; not in the socket module


def raise_fd_limit():
    """Soft RLIMIT_NOFILE up to the hard limit: thousands of sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def big_receive_buffer(sock, size=8 << 20):
    """One UDP socket takes every flow's datagrams: a 208 KiB default buffer
    overflows (drops) as soon as the server is descheduled for ~0.2 s."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)  # root: over rmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class Stats:
    def __init__(self):
        self.sessions = self.open = self.refused = self.lines = self.datagrams = 0


class SmtpLike(asyncio.Protocol):
    """One TCP session."""

    def __init__(self, stats):
        self.stats = stats
        self.transport = None
        self.buf = b""
        self.count = 0

    def connection_made(self, transport):
        self.transport = transport
        self.stats.sessions += 1
        self.stats.open += 1
        if self.stats.open > MAX_SESSIONS:
            self.stats.refused += 1
            transport.write(b"421 too many sessions\r\n")
            transport.close()
            return
        transport.write(GREETING)

    def data_received(self, data):
        self.buf += data
        if b"\n" not in self.buf:
            if len(self.buf) > MAX_LINE:
                self.transport.abort()
            return
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for line in lines:
            self.count += 1
            words = line.split()
            if words and words[0].upper() == b"QUIT":
                out.append(b"221 bye\r\n")
                self.transport.write(b"".join(out))
                self.transport.close()
                self.stats.lines += len(out)
                return
            seq = words[1] if len(words) > 1 else str(self.count).encode()
            out.append(b"250 " + seq + b"\r\n")
        self.stats.lines += len(out)
        self.transport.write(b"".join(out))

    def connection_lost(self, exc):
        self.stats.open -= 1


class Echo(asyncio.DatagramProtocol):
    def __init__(self, stats):
        self.stats = stats
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.stats.datagrams += 1
        self.transport.sendto(data, addr)

    def error_received(self, exc):  # e.g. ICMP unreachable for an earlier reply
        pass


async def serve(tcp_port, udp_port, bind, max_seconds):
    loop = asyncio.get_running_loop()
    stats = Stats()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers, transports = [], []
    if tcp_port is not None:
        servers.append(await loop.create_server(lambda: SmtpLike(stats), bind, tcp_port,
                                                backlog=4096, reuse_address=True))
    if udp_port is not None:
        transport, _ = await loop.create_datagram_endpoint(lambda: Echo(stats),
                                                           local_addr=(bind, udp_port))
        big_receive_buffer(transport.get_extra_info("socket"))
        transports.append(transport)
    started = time.monotonic()
    print("ready tcp=%s udp=%s bind=%s pid=%d" % (tcp_port, udp_port, bind, os.getpid()),
          flush=True)
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
        why = "signal"
    except TimeoutError:
        why = "max-seconds"
    for server in servers:
        server.close()
    for transport in transports:
        transport.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("stopped " + json.dumps({
        "why": why, "seconds": round(time.monotonic() - started, 1),
        "sessions": stats.sessions, "open": stats.open, "refused": stats.refused,
        "lines": stats.lines, "datagrams": stats.datagrams,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}), flush=True)


def main(args):
    if args.tcp is None and args.udp is None:
        raise SystemExit("serve: give --tcp PORT and/or --udp PORT")
    raise_fd_limit()
    asyncio.run(serve(args.tcp, args.udp, args.bind, args.max_seconds))
    return 0
