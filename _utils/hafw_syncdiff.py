"""
Would a failover lose connections? The master's kernel table against the
backup's replica, compared without shipping either across the bus.

Each side turns its entries into keys (the original-direction tuple),
hashes them and folds the hashes into a fixed number of buckets (count and
XOR of the hashes per bucket). Equal buckets hold the same keys with
overwhelming probability; only the keys of differing buckets are fetched
and compared. Plain Python: ``conntrack.sync_digest``, ``sync_keys`` and
``sync_health`` run the commands and the peer calls.

Which entries the master replicates is decided by conntrackd's
``Filter From Userspace`` (conntrack-tools src/filter.c): the protocol
list, the TCP state list, and the address list, which is tested against
the original source and the reply source of an entry (the real endpoints,
NAT or not). ``SyncFilter`` applies the same rules to the kernel's entries.
"""

import hashlib
import ipaddress
import re
import socket
import struct

import hafw_ctnetlink as ct
from hafw_ctnetlink import PROTOCOLS

PROTO_NUMBERS = {name: num for num, name in PROTOCOLS.items()}
ICMP = (1, 58)
DEFAULT_BUCKETS = 4096


# ---------------------------------------------------------------------------
# conntrackd's filter
# ---------------------------------------------------------------------------
def _lines(text):
    """conntrackd.conf as (block path, words) per setting; a block on one line ("State Accept { A B }") too."""
    path, out = [], []
    for raw in text.splitlines():
        words = []
        for tok in raw.split("#", 1)[0].replace("{", " { ").replace("}", " } ").split():
            if tok == "{":
                path.append(" ".join(words).lower())
                words = []
            elif tok == "}":
                if words:
                    out.append((tuple(path), words))
                words = []
                if path:
                    path.pop()
            else:
                words.append(tok)
        if words:
            out.append((tuple(path), words))
    return out


class SyncFilter:
    """conntrackd's ``Filter From Userspace``: which kernel entries it replicates."""

    def __init__(self, protocols=None, proto_accept=True, addresses=(), addr_accept=False,
                 tcp_states=None, state_accept=True):
        self.protocols = protocols          # set of numbers, or None: every protocol
        self.proto_accept = proto_accept
        self.nets = [ipaddress.ip_network(a, strict=False) for a in addresses]
        self.single = {n.network_address for n in self.nets if n.num_addresses == 1}
        self.ranges = [n for n in self.nets if n.num_addresses > 1]
        self.single_v4 = {a.packed for a in self.single if a.version == 4}
        self.ranges_v4 = [(int(n.network_address), int(n.netmask)) for n in self.ranges if n.version == 4]
        self.addr_accept = addr_accept
        self.tcp_states = tcp_states        # set of names, or None: every state
        self.state_accept = state_accept

    @classmethod
    def from_config(cls, text):
        """Read the filter of a conntrackd.conf (no filter: everything is replicated)."""
        kw = {}
        addresses = []
        for path, words in _lines(text):
            if not path or not path[-1].endswith(("accept", "ignore")) or not any("filter" in p for p in path):
                continue
            block = path[-1]
            accept = block.endswith("accept")
            if block.startswith("protocol"):
                kw.setdefault("protocols", set())
                kw["proto_accept"] = accept
                for w in words:
                    num = PROTO_NUMBERS.get(w.lower())
                    if num is None and w.isdigit():
                        num = int(w)
                    if num is not None:
                        kw["protocols"].add(num)
            elif block.startswith("address"):
                kw["addr_accept"] = accept
                if len(words) >= 2 and words[0].lower() in ("ipv4_address", "ipv6_address"):
                    addresses.append(words[1])
            elif block.startswith("state"):
                kw["state_accept"] = accept
                kw.setdefault("tcp_states", set())
                kw["tcp_states"].update(w.upper().rstrip(",") for w in words
                                        if w.lower() not in ("for", "tcp") and w.strip(","))
        return cls(addresses=addresses, **kw)

    def _listed_v4(self, packed):
        if packed in self.single_v4:
            return True
        if self.ranges_v4:
            n = int.from_bytes(packed, "big")
            return any(n & mask == net for net, mask in self.ranges_v4)
        return False

    def replicated_v4(self, proto, orig_src, reply_src, tcp_state=None):
        """replicated() for IPv4 addresses as 4 packed bytes (the fast path of table_keys)."""
        if self.protocols is not None and (proto in self.protocols) != self.proto_accept:
            return False
        if self.nets and (self._listed_v4(orig_src) or self._listed_v4(reply_src)) != self.addr_accept:
            return False
        if proto == 6 and self.tcp_states is not None and tcp_state is not None:
            if (tcp_state in self.tcp_states) != self.state_accept:
                return False
        return True

    def _listed(self, address):
        ip = ipaddress.ip_address(address)
        return ip in self.single or any(ip in n for n in self.ranges)

    def replicated(self, proto, orig_src, reply_src, tcp_state=None):
        """Does conntrackd replicate an entry with these fields?"""
        if self.protocols is not None and (proto in self.protocols) != self.proto_accept:
            return False
        if self.nets:
            listed = self._listed(orig_src) or (reply_src is not None and self._listed(reply_src))
            if listed != self.addr_accept:
                return False
        if proto == 6 and self.tcp_states is not None and tcp_state is not None:
            if (tcp_state in self.tcp_states) != self.state_accept:
                return False
        return True


# ---------------------------------------------------------------------------
# keys, hashes, buckets
# ---------------------------------------------------------------------------
def key(proto, src, dst, a, b):
    """An entry's identity: protocol and original-direction tuple (ports, or ICMP id and type.code)."""
    return f"{proto} {src} {dst} {a} {b}"


def key_of_entry(entry):
    """The key of a ``hafw_ctnetlink.decode`` entry."""
    o = entry["orig"]
    proto = o.get("proto")
    if proto in ICMP:
        return key(proto, o.get("src"), o.get("dst"), o.get("icmp_id"), f"{o.get('icmp_type')}.{o.get('icmp_code')}")
    return key(proto, o.get("src"), o.get("dst"), o.get("sport"), o.get("dport"))


# CTA_TUPLE_ORIG of an IPv4 TCP/UDP entry as the kernel writes it: the IP nest (source, destination),
# the protocol nest (number, source port, destination port); lengths and types checked before use
_V4_PORTS = struct.Struct("=HHHH4sHH4sHHHHB3xHHHxxHHHxx")
_V4_SRC = struct.Struct("=HHHH4s")  # the start of CTA_TUPLE_REPLY: its source address


def _fast_v4(buf, a, b):
    """(proto, src, dst, sport, dport) of an IPv4 TCP/UDP original tuple, or None for any other layout."""
    if b - a < _V4_PORTS.size:
        return None
    f = _V4_PORTS.unpack_from(buf, a)
    if (f[1] & ct.NLA_TYPE_MASK, f[2], f[3], f[6], f[9] & ct.NLA_TYPE_MASK, f[11], f[13], f[14], f[16], f[17]) != (
            ct.CTA_TUPLE_IP, 8, ct.CTA_IP_V4_SRC, ct.CTA_IP_V4_DST, ct.CTA_TUPLE_PROTO, ct.CTA_PROTO_NUM,
            6, ct.CTA_PROTO_SRC_PORT, 6, ct.CTA_PROTO_DST_PORT):
        return None
    return f[12], f[4], f[7], socket.ntohs(f[15]), socket.ntohs(f[18])


def _reply_v4_src(buf, a, b):
    """The reply tuple's IPv4 source (4 packed bytes), or None."""
    if b - a < _V4_SRC.size:
        return None
    f = _V4_SRC.unpack_from(buf, a)
    return f[4] if f[1] & ct.NLA_TYPE_MASK == ct.CTA_TUPLE_IP and f[2] == 8 and f[3] == ct.CTA_IP_V4_SRC else None


def table_keys(conf_text, messages):
    """
    Keys of the kernel entries that conntrackd's filter replicates.
    ``messages``: ``hafw_ctnetlink.dump(raw=True)``. IPv4 TCP and UDP
    entries are read with one unpack each; any other entry is decoded.
    """
    filt = SyncFilter.from_config(conf_text)
    unpack, ntoa, need_state = ct._ATTR.unpack_from, socket.inet_ntoa, filt.tcp_states is not None
    for buf, off, end in messages:
        orig = reply = info = None
        pos = off
        while pos + 4 <= end:
            length, kind = unpack(buf, pos)
            if length < 4:
                break
            kind &= ct.NLA_TYPE_MASK
            if kind == ct.CTA_TUPLE_ORIG:
                orig = (pos + 4, pos + length)
            elif kind == ct.CTA_TUPLE_REPLY:
                reply = (pos + 4, pos + length)
            elif kind == ct.CTA_PROTOINFO:
                info = (pos + 4, pos + length)
            pos += (length + 3) & ~3
        fast = _fast_v4(buf, *orig) if orig and reply else None
        reply_src = _reply_v4_src(buf, *reply) if fast else None
        if reply_src:
            state = None
            if need_state and fast[0] == 6 and info:
                state = ct.decode(buf, off, end).get("tcp_state")
            if filt.replicated_v4(fast[0], fast[1], reply_src, state):
                yield key(fast[0], ntoa(fast[1]), ntoa(fast[2]), fast[3], fast[4])
            continue
        entry = ct.decode(buf, off, end)
        o, r = entry["orig"], entry["reply"]
        if filt.replicated(o.get("proto"), o.get("src"), r.get("src"), entry.get("tcp_state")):
            yield key_of_entry(entry)


_FIELD = re.compile(r"(src|dst|sport|dport|type|code|id)=(\S+)")


def parse_cache_line(line):
    """
    One entry of ``conntrackd -i`` / ``-e`` (conntrack -L's format): (key,
    proto, orig src, reply src, tcp state), or None for a line that is not
    an entry.
    """
    words = line.split()
    if len(words) < 3 or not words[1].isdigit():
        return None
    proto = int(words[1])
    orig, reply = {}, {}
    for name, value in _FIELD.findall(line):
        side = orig if name not in orig else reply
        if name in side:  # a third occurrence: not a conntrack line
            continue
        side[name] = value
    if "src" not in orig or "dst" not in orig:
        return None
    state = words[2] if proto == 6 and words[2].isupper() and "=" not in words[2] else None
    if proto in ICMP:
        k = key(proto, orig["src"], orig["dst"], orig.get("id"), f"{orig.get('type')}.{orig.get('code')}")
    else:
        k = key(proto, orig["src"], orig["dst"], orig.get("sport"), orig.get("dport"))
    return k, proto, orig["src"], reply.get("src"), state


def key_hash(k):
    return int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little")


class Digest:
    """Per bucket: how many keys, and the XOR of their hashes."""

    def __init__(self, buckets=DEFAULT_BUCKETS):
        if not 1 <= int(buckets) <= 1 << 16:
            raise ValueError(f"buckets: {buckets!r} must be 1-65536")
        self.n = int(buckets)
        self.counts = [0] * self.n
        self.xors = [0] * self.n
        self.total = 0

    def add(self, k):
        h = key_hash(k)
        i = h % self.n
        self.counts[i] += 1
        self.xors[i] ^= h
        self.total += 1

    def as_data(self):
        """Plain data for the bus: only the non-empty buckets, as {index: "count:xor-hex"}."""
        return {"buckets": self.n, "total": self.total,
                "digest": {str(i): f"{c}:{x:x}"
                           for i, (c, x) in enumerate(zip(self.counts, self.xors, strict=True)) if c}}


def bucket_of(k, buckets):
    return key_hash(k) % int(buckets)


def differing_buckets(a, b):
    """Bucket indexes where two ``Digest.as_data`` results differ (same bucket count required)."""
    if a["buckets"] != b["buckets"]:
        raise ValueError(f"the digests have {a['buckets']} and {b['buckets']} buckets")
    da, db = a["digest"], b["digest"]
    return sorted(int(i) for i in set(da) | set(db) if da.get(i) != db.get(i))


def bucket_counts(data, indexes):
    """Sum of the key counts of some buckets of a ``Digest.as_data`` result."""
    return sum(int(data["digest"][str(i)].split(":")[0]) for i in indexes if str(i) in data["digest"])
