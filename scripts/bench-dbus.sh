#!/usr/bin/env bash
# D-Bus (issue 5): Get round trips against Peer.Ping on the same private bus and daemon,
# throughput by client count, GetFd against memcpy, in the same run. Needs root (a private
# system bus with polkitd, as the D-Bus tests start).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "needs root: it starts a private system bus and numa-cached" >&2; exit 2; }
echo "#markdown"
echo '```sh'
echo 'cargo bench --bench dbus'
echo '```'
echo
cargo bench --quiet --bench dbus 2>/dev/null
