"""
Fill a namespace's conntrack table fast: ESTABLISHED, ASSURED TCP entries
created over ctnetlink in batches (stdlib only; ~80k entries/s here).

Used to give a failover a realistically large table: entries made on the
primary are replicated by conntrackd to the backup's external cache, which
the takeover must commit. Run it inside the host whose table to fill:

    python -m lab.ctfill COUNT [--batch 256] [--rate ENTRIES_PER_S] [--start N]

It prints {"count", "seconds", "rate", "errors"} as JSON. The i-th entry is
10.99.x.y:sport -> 172.31.0.1:443 (no lab host has those addresses).
"""

import argparse
import errno
import json
import socket
import struct
import time

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 1, 4, 0x200, 0x400
NLMSG_ERROR = 2
IPCTNL_MSG_CT_NEW = (1 << 8) | 0  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
NLA_F_NESTED = 0x8000


def _nla(atype, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * (-n % 4)


def _tuple(atype, src, dst, proto, sport, dport):
    ip = _nla(NLA_F_NESTED | 1, _nla(1, socket.inet_aton(src)) + _nla(2, socket.inet_aton(dst)))
    pr = _nla(NLA_F_NESTED | 2, _nla(1, bytes([proto])) + _nla(2, struct.pack("!H", sport))
              + _nla(3, struct.pack("!H", dport)))
    return _nla(NLA_F_NESTED | atype, ip + pr)


def ct_new_msg(seq, src, dst, sport, dport, timeout, ack=False):
    """IPCTNL_MSG_CT_NEW for an ESTABLISHED, ASSURED TCP entry src:sport -> dst:dport."""
    body = struct.pack("=BBH", socket.AF_INET, 0, 0)
    body += _tuple(1, src, dst, 6, sport, dport)  # CTA_TUPLE_ORIG
    body += _tuple(2, dst, src, 6, dport, sport)  # CTA_TUPLE_REPLY
    # CTA_STATUS: SEEN_REPLY | ASSURED, and CONFIRMED: the kernel sets it on a
    # created entry before applying CTA_STATUS and answers EBUSY to a change of it
    body += _nla(3, struct.pack("!I", 0x2 | 0x4 | 0x8))
    body += _nla(7, struct.pack("!I", timeout))  # CTA_TIMEOUT
    body += _nla(NLA_F_NESTED | 4, _nla(NLA_F_NESTED | 1, _nla(1, bytes([3]))))  # TCP ESTABLISHED
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | (NLM_F_ACK if ack else 0)
    return struct.pack("=IHHII", 16 + len(body), IPCTNL_MSG_CT_NEW, flags, seq, 0) + body


def extra_tuple(i):
    """The i-th extra connection: 10.99.x.y:sport -> 172.31.0.1:443."""
    host = i // 40000
    return "10.99.%d.%d" % (host // 250, host % 250 + 1), "172.31.0.1", 20000 + i % 40000, 443


def fill(count, batch=256, rate=0.0, timeout_s=3600, start=0):
    """Insert `count` entries, `batch` messages per sendmsg; rate limit (entries/s) if > 0."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((0, 0))
    errors = {}
    t0 = time.time()
    seq = 0
    done = 0
    while done < count:
        n = min(batch, count - done)
        buf = bytearray()
        for k in range(n):
            seq += 1
            src, dst, sport, dport = extra_tuple(start + done + k)
            buf += ct_new_msg(seq, src, dst, sport, dport, timeout_s, ack=(k == n - 1))
        s.send(bytes(buf))
        last = seq
        for _ in range(n + 1):  # errors for failed messages, then the last one's ack
            data = s.recv(1 << 16)
            off, got_last = 0, False
            while off + 16 <= len(data):
                ln, typ, _, sq, _ = struct.unpack_from("=IHHII", data, off)
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    if err:
                        errors[errno.errorcode.get(err, str(err))] = errors.get(
                            errno.errorcode.get(err, str(err)), 0) + 1
                    if sq == last:
                        got_last = True
                off += (ln + 3) & ~3
            if got_last:
                break
        done += n
        if rate > 0:
            ahead = done / rate - (time.time() - t0)
            if ahead > 0:
                time.sleep(ahead)
    secs = time.time() - t0
    return {"count": count, "seconds": round(secs, 3), "rate": round(count / secs), "errors": errors}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab.ctfill", description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("count", type=int)
    parser.add_argument("--rate", type=float, default=0.0, help="entries/s (0: as fast as possible)")
    parser.add_argument("--batch", type=int, default=256, help="messages per sendmsg")
    parser.add_argument("--start", type=int, default=0, help="index of the first entry")
    parser.add_argument("--timeout", type=int, default=3600, help="the entries' conntrack timeout (s)")
    args = parser.parse_args(argv)
    print(json.dumps(fill(args.count, args.batch, args.rate, args.timeout, args.start)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
