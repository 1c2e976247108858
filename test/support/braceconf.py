"""
Flatten keepalived.conf / conntrackd.conf text into a set of setting paths,
so two files can be compared setting by setting whatever their layout:

    Sync { UDP { Port 3780 } }   ->   {"Sync/UDP/Port 3780"}

Comments and quotes are dropped and white space folded; a block's own words
are part of the path (``vrrp_instance VI_1/priority 80``). Keys keep their
case: conntrackd's are case-insensitive, so callers may lower() both sides.
"""

import re


def settings(text):
    out, stack = set(), []
    for raw in text.splitlines():
        line = re.sub(r"[#!].*$", "", raw).replace('"', "").strip()
        line = " ".join(line.split())
        while line:
            if line.startswith("}"):
                stack.pop()
                line = line[1:].strip()
                continue
            head, brace, rest = line.partition("{")
            head = head.strip()
            if brace:
                stack.append(head)
                out.add("/".join(stack) + "/")
                line = rest.strip()
                continue
            head, close, rest = line.partition("}")
            if head.strip():
                out.add("/".join([*stack, head.strip()]))
            if close:
                stack.pop()
            line = rest.strip()
    if stack:
        raise ValueError(f"unclosed block(s): {stack}")
    return out
