#!/usr/bin/env bash
# How fast can any server answer a bus Put that keeps the durability contract, on this machine?
# Rounds alternate between numa-cached and examples/bus_floor.rs, a zbus server (same runtime,
# same zbus) whose Put does only what the contract requires before the reply: one pwrite of
# the record into a file on the same btrfs (fdatasync once a second), no index and no checks;
# and the same server with no write at all. N client processes (dbus-python, each with its own
# connection) call each in turn, as scripts/bench-bus-throughput.sh does. Every rate is divided
# by the Peer.Ping rate of the same round (the aim of issue 9: Put >= 0.6x Ping). The second
# table is each server's own CPU time per call (user + system, from /proc).
#
#   sudo scripts/bench-bus-floor.sh [SECONDS_PER_ROUND=4] [PROCS=8] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-4}; PROCS=${2:-8}; ROUNDS=${3:-3}
/usr/bin/python3 -c 'import dbus' 2>/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-dbus >/dev/null; }
cargo build --release --quiet --example bus_floor
FLOOR=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/bus_floor
source scripts/lib/bench-daemon.sh
bench_daemon_up busfloor 4G OPDBUS_CACHE_MAX_BYTES=3G
ADDR=$DBUS_SYSTEM_BUS_ADDRESS
mkdir -p "$RUN/state/floor"

owned() {
  busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
    NameHasOwner s org.opdbus.NumaCache 2>/dev/null | grep -q true
}
serve() { # serve daemon|write|nowrite: stop whoever holds the name, start that one
  local pid
  pid=$(cat "$RUN/daemon.pid")
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  for _ in $(seq 50); do owned || break; sleep 0.1; done
  if [[ $1 == daemon ]]; then
    env OPDBUS_CACHE_DIR="$RUN/state" OPDBUS_CACHE_MAX_BYTES=3G "$DAEMON" >>"$RUN/daemon.log" 2>&1 &
  else
    "$FLOOR" "$1" "$RUN/state/floor" >>"$RUN/floor.log" 2>&1 &
  fi
  echo $! > "$RUN/daemon.pid"
  for _ in $(seq 100); do owned && return 0; sleep 0.1; done
  echo "$1 did not take the name" >&2; tail -5 "$RUN/daemon.log" "$RUN/floor.log" >&2; exit 1
}
echo "bus Put floor: $PROCS processes x ${SECS}s per round, $ROUNDS rounds, 4 KiB values, $(bus_version)"
echo "numa-cached: ping, put, refused (the same Put refused after parsing its options);"
echo "bus_floor (examples/bus_floor.rs): ping, put with no I/O, put with the contract's one pwrite."
echo "Ratios are to the mean of the round's two Ping rates (both zbus's own Peer.Ping, about 10 s apart)."
echo "round ping/s put/s refused/s floor-ping/s nowrite/s pwrite/s | put refused nowrite pwrite"
for r in $(seq "$ROUNDS"); do
  serve daemon
  p=$(bus_rate ping ping); u=$(bus_rate put put); f=$(bus_rate floor refused)
  serve nowrite
  fp=$(bus_rate ping floor-ping); n=$(bus_rate put nowrite)
  serve write
  w=$(bus_rate put pwrite)
  awk -v r="$r" -v p="$p" -v u="$u" -v f="$f" -v fp="$fp" -v n="$n" -v w="$w" \
    'BEGIN{b = (p + fp) / 2; printf "%d %d %d %d %d %d %d | %.2fx %.2fx %.2fx %.2fx\n", r, p, u, f, fp, n, w, u/b, f/b, n/b, w/b}'
done
echo "server CPU per call (us, user+system, from /proc), by round:"
awk '{v[$1] = v[$1] " " $2} END{n = split("ping put refused floor-ping nowrite pwrite", k, " "); for (i = 1; i <= n; i++) print k[i] v[k[i]]}' "$RUN/cpu"
serve daemon
