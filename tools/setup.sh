#!/usr/bin/env bash
# Idempotent developer/CI setup (`make setup`): Debian packages the lab and
# tests use, then .venv with requirements-dev.txt. Installs only what is
# missing; a second run takes about a second and changes nothing.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
VENV=$REPO/.venv
STAMP=$VENV/.requirements.sha256
LOG=$(mktemp "${TMPDIR:-/tmp}/hafw-setup.XXXXXX")
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=
SUDO=()
cleanup() {
    rm -f "$LOG"
    if [ -n "$OWN_POLICY" ]; then "${SUDO[@]}" rm -f "$POLICY"; fi
}
trap cleanup EXIT

# kmod: modprobe/lsmod; the rest are the services and tools the formula manages.
# They are installed here, in the root filesystem the lab hosts share, so that
# the formula's pkg.installed states are no-ops inside the lab (a lab host's
# /usr is the real one: an install there would write outside the lab).
# postfix: the mail servers behind the load balancers (the lab configures and starts
# its own, per host); qemu-system-x86: the guest that gives the load balancers IPVS
# (this kernel has none; lab/guest/).
APT_PACKAGES=(keepalived conntrackd conntrack iptables iptables-persistent nftables ipvsadm
              openssh-server checkpolicy semodule-utils iproute2 util-linux procps kmod iputils-ping
              postfix qemu-system-x86)

say() { printf 'setup: %s\n' "$*"; }
fail() {
    printf 'setup: FAILED: %s\n' "$1" >&2
    if [ -s "$LOG" ]; then grep -v 'is ignored: it is neither a file' "$LOG" | tail -n 40 >&2; fi
    exit 1
}

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

pick_python() {
    local p
    for p in /root/.pyenv/versions/3.11.7/bin/python "$(command -v python3.11 || true)" \
             "$(command -v python3 || true)"; do
        [ -n "$p" ] && [ -x "$p" ] && { echo "$p"; return; }
    done
    echo /usr/bin/python3  # Debian's, installed below
}

PYTHON=$(pick_python)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do installed "$pkg" || missing+=("$pkg"); done
if [ ! -x "$PYTHON" ]; then
    missing+=(python3 python3-venv)
elif [[ $PYTHON == /usr/bin/* ]] && ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
    missing+=(python3-venv)  # Debian's python3 has no venv/ensurepip without it
fi

# 1. Debian packages
if [ ${#missing[@]} -eq 0 ]; then
    say "debian packages present (${#APT_PACKAGES[@]})"
else
    say "installing debian packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || fail "not root and no sudo: install ${missing[*]}"
        SUDO=(sudo)
    fi
    # Keep package scripts from starting the daemons (the lab starts its own,
    # in namespaces); docker-like images already ship this file.
    if [ ! -e "$POLICY" ]; then
        OWN_POLICY=1
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
        "${SUDO[@]}" chmod 755 "$POLICY"
    fi
    export DEBIAN_FRONTEND=noninteractive
    # iptables-persistent asks whether to save the current rules: it must not;
    # postfix gets no system-wide configuration (each lab mail server has its own)
    printf '%s\n' 'iptables-persistent iptables-persistent/autosave_v4 boolean false' \
        'iptables-persistent iptables-persistent/autosave_v6 boolean false' \
        'postfix postfix/main_mailer_type select No configuration' |
        "${SUDO[@]}" debconf-set-selections
    status=0
    { "${SUDO[@]}" apt-get update -q &&
      "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
          --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"; } >"$LOG" 2>&1 || status=$?
    if [ -n "$OWN_POLICY" ]; then "${SUDO[@]}" rm -f "$POLICY"; OWN_POLICY=; fi
    [ "$status" -eq 0 ] || fail "apt-get install ${missing[*]}"
    : >"$LOG"
fi
PYTHON=$(pick_python)

# 2. virtualenv (recreated if its interpreter is gone, e.g. a removed pyenv)
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    say "venv present ($("$VENV/bin/python" -V 2>&1))"
else
    say "creating .venv with $PYTHON ($("$PYTHON" -V 2>&1))"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" >"$LOG" 2>&1 || fail "python -m venv"
fi

# 3. Python requirements, only when requirements*.txt changed since last install
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    say "python requirements up to date"
else
    say "installing requirements-dev.txt into .venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q \
        -r requirements-dev.txt >"$LOG" 2>&1 || fail "pip install -r requirements-dev.txt"
    "$VENV/bin/python" -m pip check >"$LOG" 2>&1 || fail "pip check"
    echo "$want" >"$STAMP"
fi
