#!/usr/bin/env bash
# Throughput through the bus: N client processes (dbus-python, each with its own connection)
# call Peer.Ping, Cache.Get (4 KiB), Cache.Put (4 KiB, default durability) and Put with
# sync=true against numa-cached on a loop-mounted btrfs, in alternating rounds, and print each
# rate with the same-run Ping rate as the baseline.
#
#   sudo scripts/bench-bus-throughput.sh [SECONDS_PER_ROUND=4] [PROCS=8] [ROUNDS=2]
# NUMA_CACHED=path overrides the daemon binary (default target/release/numa-cached).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-4}; PROCS=${2:-8}; ROUNDS=${3:-2}
/usr/bin/python3 -c 'import dbus' 2>/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-dbus >/dev/null; }
source scripts/lib/bench-daemon.sh
bench_daemon_up bus 4G OPDBUS_CACHE_MAX_BYTES=3G
ADDR=$DBUS_SYSTEM_BUS_ADDRESS
/usr/bin/python3 scripts/bench_bus_client.py "$ADDR" seed 0 0 >/dev/null

rate() { # rate MODE -> calls per second over all processes
  local pids=() total=0 f
  for w in $(seq "$PROCS"); do
    /usr/bin/python3 scripts/bench_bus_client.py "$ADDR" "$1" "$SECS" "$w$RANDOM" > "$RUN/out.$1.$w" & pids+=($!)
  done
  wait "${pids[@]}"
  for f in "$RUN"/out."$1".*; do total=$((total + $(cat "$f" 2>/dev/null || echo 0))); done
  rm -f "$RUN"/out."$1".*
  echo $((total / ${SECS%.*}))
}
echo "bus throughput: $PROCS processes x ${SECS}s per round, $ROUNDS rounds, 4 KiB values, daemon $DAEMON"
echo "round ping/s get/s put/s put-sync/s get/ping put/ping put-sync/ping"
for r in $(seq "$ROUNDS"); do
  p=$(rate ping); g=$(rate get); u=$(rate put); s=$(rate put-sync)
  awk -v r="$r" -v p="$p" -v g="$g" -v u="$u" -v s="$s" \
    'BEGIN{printf "%d %d %d %d %d %.2fx %.2fx %.2fx\n", r, p, g, u, s, g/p, u/p, s/p}'
done
grep -ci "error\|panic" "$RUN/daemon.log" >/dev/null && { echo "daemon log:"; tail -5 "$RUN/daemon.log"; } || true
