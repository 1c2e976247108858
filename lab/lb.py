"""The load-balancer pair of a live fleet, as the LB tests and make demo-lb look at it."""

LB = ("lb-cent7g", "lb-cent7h")
LB_VIPS = 3  # 192.168.1.50, .60 and 192.168.2.50
VIRTUAL = "192.168.1.60:25"  # virtual_server_group SMTP


def master(fleet):
    """The load balancer holding the pair's VIPs (nopreempt: either), once the pair has settled."""
    fleet.wait_vrrp(timeout=60)
    return next(n for n in LB if len(fleet.vips(n)) == LB_VIPS)


def other(name):
    return next(n for n in LB if n != name)


def weights(fleet, node):
    """{real server addr:port: weight} of the SMTP virtual service on node (ipvsadm -Ln)."""
    out = fleet[node].exec(["ipvsadm", "-Ln", "-t", VIRTUAL], check=False).stdout
    return {f[1]: int(f[3]) for f in (line.split() for line in out.splitlines())
            if len(f) >= 4 and f[0] == "->" and f[3].isdigit()}


def established(fleet, node):
    """Client addr:port of the ESTABLISHED connections to the SMTP VIP in node's IPVS table."""
    out = fleet[node].exec(["ipvsadm", "-Lnc"], check=False).stdout
    return {f[3] for f in (line.split() for line in out.splitlines())
            if len(f) >= 6 and f[2] == "ESTABLISHED" and f[4] == VIRTUAL}
