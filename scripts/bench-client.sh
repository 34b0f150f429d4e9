#!/usr/bin/env bash
# Round trips through the numa-cache-client crate against numa-cached on a private
# system-like bus (state on a loop-mounted btrfs): Get/Put of 4 KiB, the blocking facade
# and the upstream EmbeddingCache, each as a ratio to Peer.Ping measured in the same run on
# the same connection (crates/numa-cache-client/examples/bench.rs prints the figures).
#
#   sudo scripts/bench-client.sh [CALLS=2000] [ROUNDS=3]
# NUMA_CACHED=path overrides the daemon binary (default target/release/numa-cached).
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${1:-2000}; ROUNDS=${2:-3}
DAEMON=${NUMA_CACHED:-${CARGO_TARGET_DIR:-$PWD/target}/release/numa-cached}
[[ $(id -u) -eq 0 ]] || { echo "run as root (mounts a btrfs image)" >&2; exit 2; }
for pair in dbus-daemon:dbus-daemon mkfs.btrfs:btrfs-progs busctl:systemd; do
  command -v "${pair%%:*}" >/dev/null || { echo "missing ${pair##*:}: apt-get install -y ${pair##*:}" >&2; exit 2; }
done
# Always build (a no-op when current): a stale daemon would be measured otherwise.
[[ -n ${NUMA_CACHED:-} ]] || cargo build --release --quiet --bin numa-cached
cargo build --release --quiet -p numa-cache-client --example bench
BENCH=${CARGO_TARGET_DIR:-target}/release/examples/bench
RUN=$(mktemp -d /tmp/numa-bench-client.XXXXXX)
cleanup() {
  [[ -f $RUN/daemon.pid ]] && kill "$(cat "$RUN/daemon.pid")" 2>/dev/null && sleep 1
  [[ -f $RUN/bus.pid ]] && kill "$(cat "$RUN/bus.pid")" 2>/dev/null
  mountpoint -q "$RUN/state" && umount "$RUN/state"
  rm -rf "$RUN"
}
trap cleanup EXIT
mkdir -p "$RUN/state"
truncate -s 1G "$RUN/state.img"; mkfs.btrfs -q -f "$RUN/state.img" >/dev/null
mount -o loop "$RUN/state.img" "$RUN/state"
sed -e "s|@DIR@|$RUN|" -e "s|@POLICY@|$PWD/dbus/org.opdbus.NumaCache.conf|" \
  tests/dbus/system-bus.conf.in > "$RUN/bus.conf"
dbus-daemon --config-file="$RUN/bus.conf" --nofork >"$RUN/bus.log" 2>&1 & echo $! > "$RUN/bus.pid"
export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$RUN/system_bus_socket
for _ in $(seq 50); do [[ -S $RUN/system_bus_socket ]] && break; sleep 0.1; done
OPDBUS_CACHE_DIR=$RUN/state "$DAEMON" >"$RUN/daemon.log" 2>&1 & echo $! > "$RUN/daemon.pid"
for _ in $(seq 100); do
  busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus NameHasOwner s org.opdbus.NumaCache 2>/dev/null | grep -q true && break
  sleep 0.1
done
echo "client round trips, daemon $DAEMON, load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$BENCH" "$CALLS" "$ROUNDS"
