#!/bin/sh
# Give a kitchen container the interfaces and addresses pillar.example lists
# for its node (veth pairs: the peer ends stay unconfigured), so that the
# formula's checks (keepalived -t) and daemons find them.
set -eu
node=$1
case $node in
    fw-cent7i) links="enp0s3=192.168.0.41/24 enp0s8=192.168.1.41/24 enp0s9=192.168.3.41/24" ;;
    fw-cent7m) links="enp0s3=192.168.0.201/24,192.168.0.202/24 enp0s8=192.168.9.1/24" ;;
    lb-cent7g) links="enp0s3=192.168.1.51/24 enp0s8=192.168.2.51/24" ;;
    *) echo "cable.sh: unknown node $node" >&2; exit 2 ;;
esac
n=0
for link in $links; do
    ifname=${link%%=*}; cidr=${link#*=}  # cidr: one or more, comma-separated; n=$((n + 1))
    ip link show "$ifname" >/dev/null 2>&1 || ip link add "$ifname" type veth peer name "kpeer$n"
    for addr in $(echo "$cidr" | tr , ' '); do ip addr replace "$addr" dev "$ifname"; done
    ip link set "$ifname" up
    ip link set "kpeer$n" up
done
