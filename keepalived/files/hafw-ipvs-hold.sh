#!/bin/sh
# Managed by Salt (hafw formula): the load balancers' resync hold.
#
#   hafw-ipvs-hold.sh HOLD_SECONDS MARKER_FILE [VIP ...]
#
# keepalived runs it every second (vrrp_script hafw_ipvs_hold, init_fail)
# and keeps the sync group in FAULT while it fails. In FAULT keepalived runs
# the IPVS backup sync daemon, so a restarted load balancer receives the
# master's connections while it waits; the master re-sends each active one
# about every net.ipv4.vs.sync_refresh_period seconds, and HOLD_SECONDS is
# that period plus the sync thread's flush time (docs/failover-timing.md).
#
# Exit 0 (VRRP may run) when this node holds every VIP given (it is master:
# it does not wait), or when keepalived started at least HOLD_SECONDS ago;
# then MARKER_FILE records keepalived's pid and start time, and the check
# passes at once until keepalived restarts (a restart holds again).
# Exit 1 while holding, 2 for a usage error.
#
# keepalived's start: that of the keepalived that runs this check, the
# topmost keepalived process among its ancestors (the VRRP child runs it,
# the main process started that child), from /proc/PID/stat field 22, its
# start in clock ticks after boot. Only keepalived's own processes are read
# (another node's keepalived, in a lab sharing one kernel, is not this one).
# Tests: HAFW_PROC stands for /proc, HAFW_PPID for the parent's pid; `ip` is
# looked up in PATH first.

PATH=${PATH:+$PATH:}/usr/sbin:/usr/bin:/sbin:/bin
PROC=${HAFW_PROC:-/proc}

hold=${1:-} marker=${2:-}
case $hold in *[!0-9]*) hold='' ;; esac
if [ -z "$hold" ] || [ -z "$marker" ]; then
    echo "usage: ${0##*/} HOLD_SECONDS MARKER_FILE [VIP ...]" >&2
    exit 2
fi
shift 2
vips=$*

# walk up from the parent while the processes are keepalived
pid='' start='' next=${HAFW_PPID:-$PPID}
while [ "$next" -gt 1 ] 2>/dev/null; do
    comm='' stat=''
    { read -r comm <"$PROC/$next/comm"; read -r stat <"$PROC/$next/stat"; } 2>/dev/null
    if [ "$comm" != keepalived ] || [ -z "$stat" ]; then
        break
    fi
    # the fields after "PID (COMM) " (numbers and a state letter, split on
    # purpose): field 4 (parent) is the 2nd of them, field 22 (start) the 20th
    # shellcheck disable=SC2086
    set -- ${stat##*) }
    pid=$next start=${20:-} next=$2
done
if [ -z "$pid" ] || [ -z "$start" ]; then
    echo "holding: not run by keepalived (no keepalived parent process)"
    exit 1
fi

if { read -r m_pid m_start <"$marker"; } 2>/dev/null && [ "$m_pid $m_start" = "$pid $start" ]; then
    exit 0
fi

pass() {
    echo "passed: $*"
    { printf '%s %s\n' "$pid" "$start" >"$marker"; } 2>/dev/null
    exit 0
}

if [ -n "$vips" ]; then
    addrs=$(ip -4 -o addr show 2>/dev/null)
    held=yes
    for vip in $vips; do
        case $addrs in *" inet $vip/"*) ;; *) held=no ;; esac
    done
    [ "$held" = no ] || pass "this node holds its VIPs ($vips)"
fi

# keepalived's age in centiseconds: /proc/uptime "SECONDS.CC ..."
ticks=$(getconf CLK_TCK 2>/dev/null) || ticks=100
read -r up _ <"$PROC/uptime" || exit 1
cs=${up#*.}
cs=${cs#0}
age=$(( ${up%.*} * 100 + cs - start * 100 / ticks ))
age_s=$(( age / 100 )).$(( age % 100 / 10 ))
if [ "$age" -ge $(( hold * 100 )) ]; then
    pass "keepalived (pid $pid) started ${age_s} s ago, hold $hold s"
fi
echo "holding: keepalived (pid $pid) started ${age_s} s ago, hold $hold s"
exit 1
