#!/usr/bin/env bash
# Round trips through the numa-cache-client crate against numa-cached on a private
# system-like bus (state on a loop-mounted btrfs): Get/Put of 4 KiB, the blocking facade,
# the upstream EmbeddingCache and Get over a direct connection (OpenDirect), each as a ratio
# to the bus Peer.Ping measured in the same run; GetMany/PutMany of 64 x 4 KiB against 64
# single Gets/Puts on the same connection, in keys/s
# (crates/numa-cache-client/examples/bench.rs prints the figures). Targets (issue 12):
# GetMany and PutMany >= 20x, direct get <= 0.6x ping.
#
# Each bus the machine has is measured in turn, each against its own single calls: dbus-daemon,
# then dbus-broker (package dbus-broker; skipped with a note when absent, unless CI=true).
# dbus-daemon reads a message in 2 KiB pieces, one main-loop turn per 4 KiB, so its cost
# grows with the bytes of a GetMany/PutMany nearly as with 64 single calls; dbus-broker reads
# whole messages.
#
#   sudo scripts/bench-client.sh [CALLS=2000] [ROUNDS=3]
# NUMA_CACHED=path overrides the daemon binary (default target/release/numa-cached);
# BUSES="daemon" (or "broker") measures one bus only.
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${1:-2000}; ROUNDS=${2:-3}
source scripts/lib/bench-daemon.sh
cargo build --release --quiet -p numa-cache-client --example bench
BENCH=${CARGO_TARGET_DIR:-target}/release/examples/bench
BUSES=${BUSES:-daemon broker}
for BUS in $BUSES; do
  if [[ $BUS == broker ]] && ! command -v dbus-broker-launch >/dev/null; then
    [[ ${CI:-} != true ]] || { echo "missing dbus-broker: apt-get install -y dbus-broker" >&2; exit 2; }
    echo "dbus-broker not installed (apt-get install -y dbus-broker): its figures are left out"
    continue
  fi
  # A subshell per bus: its EXIT trap stops that bus and daemon before the next starts.
  (
    bench_daemon_up client 1G
    echo "client round trips on $BUS ($(bus_version)), daemon $DAEMON, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    # The processes whose CPU per call the batch figures give: the bus (for dbus-broker the
    # broker, the launcher's child) and numa-cached.
    BENCH_BUS_PID=$(bus_pid) BENCH_DAEMON_PID=$(cat "$RUN/daemon.pid") "$BENCH" "$CALLS" "$ROUNDS"
  )
done
