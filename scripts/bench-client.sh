#!/usr/bin/env bash
# Round trips through the numa-cache-client crate against numa-cached on a private
# system-like bus (state on a loop-mounted btrfs): Get/Put of 4 KiB, the blocking facade,
# the upstream EmbeddingCache and Get over a direct connection (OpenDirect), each as a ratio
# to the bus Peer.Ping measured in the same run; GetMany/PutMany of 64 x 4 KiB against 64
# single Gets/Puts on the same connection, in keys/s
# (crates/numa-cache-client/examples/bench.rs prints the figures). Targets (issue 12):
# GetMany and PutMany >= 20x, direct get <= 0.6x ping.
#
#   sudo scripts/bench-client.sh [CALLS=2000] [ROUNDS=3]
# NUMA_CACHED=path overrides the daemon binary (default target/release/numa-cached).
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${1:-2000}; ROUNDS=${2:-3}
source scripts/lib/bench-daemon.sh
bench_daemon_up client 1G
cargo build --release --quiet -p numa-cache-client --example bench
BENCH=${CARGO_TARGET_DIR:-target}/release/examples/bench
echo "client round trips, daemon $DAEMON, load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$BENCH" "$CALLS" "$ROUNDS"
