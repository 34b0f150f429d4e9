#!/usr/bin/env bash
# Throughput through the bus: N client processes (dbus-python, each with its own connection)
# call Peer.Ping, Cache.Get (4 KiB), Cache.Put (4 KiB, default durability) and Put with
# sync=true against numa-cached on a loop-mounted btrfs, in alternating rounds, and print each
# rate with the same-run Ping rate as the baseline. The second table is the daemon's own CPU
# time (user + system, from /proc) per call of each kind: the machine's cores are shared with
# the clients and dbus-daemon, so this is the figure the daemon can change.
# The floor round sends the same 4 KiB Put with an option the daemon refuses after parsing
# (InvalidArgument, no store work): the bus + zbus + client cost of a Put, the most put/ping
# can reach on this machine; put/floor is how close the store's share lets Put come to it.
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

echo "bus throughput: $PROCS processes x ${SECS}s per round, $ROUNDS rounds, 4 KiB values, daemon $DAEMON"
echo "round ping/s get/s floor/s put/s put-sync/s get/ping floor/ping put/ping put-sync/ping put/floor"
for r in $(seq "$ROUNDS"); do
  p=$(bus_rate ping); g=$(bus_rate get); f=$(bus_rate floor); u=$(bus_rate put); s=$(bus_rate put-sync)
  awk -v r="$r" -v p="$p" -v g="$g" -v f="$f" -v u="$u" -v s="$s" \
    'BEGIN{printf "%d %d %d %d %d %d %.2fx %.2fx %.2fx %.2fx %.2fx\n", r, p, g, f, u, s, g/p, f/p, u/p, s/p, (f > 0 ? u/f : 0)}'
done
echo "daemon CPU per call (us, user+system), by round: ping get floor put put-sync"
awk '{v[$1] = v[$1] " " $2} END{print "ping" v["ping"]; print "get" v["get"]; print "floor" v["floor"]; print "put" v["put"]; print "put-sync" v["put-sync"]}' "$RUN/cpu"
grep -ci "error\|panic" "$RUN/daemon.log" >/dev/null && { echo "daemon log:"; tail -5 "$RUN/daemon.log"; } || true
