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
DAEMON=${NUMA_CACHED:-${CARGO_TARGET_DIR:-$PWD/target}/release/numa-cached}
[[ $(id -u) -eq 0 ]] || { echo "run as root (mounts a btrfs image)" >&2; exit 2; }
/usr/bin/python3 -c 'import dbus' 2>/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-dbus >/dev/null; }
# Always build (a no-op when current): a stale daemon would be measured otherwise.
[[ -n ${NUMA_CACHED:-} ]] || cargo build --release --quiet --bin numa-cached
RUN=$(mktemp -d /tmp/numa-bench-bus.XXXXXX)
cleanup() {
  [[ -f $RUN/daemon.pid ]] && kill "$(cat "$RUN/daemon.pid")" 2>/dev/null && sleep 1
  [[ -f $RUN/bus.pid ]] && kill "$(cat "$RUN/bus.pid")" 2>/dev/null
  mountpoint -q "$RUN/state" && umount "$RUN/state"
  rm -rf "$RUN"
}
trap cleanup EXIT
mkdir -p "$RUN/state"
truncate -s 4G "$RUN/state.img"; mkfs.btrfs -q -f "$RUN/state.img" >/dev/null
mount -o loop "$RUN/state.img" "$RUN/state"
sed -e "s|@DIR@|$RUN|" -e "s|@POLICY@|$PWD/dbus/org.opdbus.NumaCache.conf|" \
  tests/dbus/system-bus.conf.in > "$RUN/bus.conf"
dbus-daemon --config-file="$RUN/bus.conf" --nofork >"$RUN/bus.log" 2>&1 & echo $! > "$RUN/bus.pid"
ADDR=unix:path=$RUN/system_bus_socket
export DBUS_SYSTEM_BUS_ADDRESS=$ADDR
for _ in $(seq 50); do [[ -S $RUN/system_bus_socket ]] && break; sleep 0.1; done
OPDBUS_CACHE_DIR=$RUN/state OPDBUS_CACHE_MAX_BYTES=3G "$DAEMON" >"$RUN/daemon.log" 2>&1 & echo $! > "$RUN/daemon.pid"
for _ in $(seq 100); do
  busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus NameHasOwner s org.opdbus.NumaCache 2>/dev/null | grep -q true && break
  sleep 0.1
done
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
