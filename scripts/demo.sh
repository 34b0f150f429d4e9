#!/usr/bin/env bash
# The README's first command: bring numa-cached up on this machine and show it working.
#
#   sudo scripts/demo.sh         install what is missing (apt-get), build, start, demonstrate
#   sudo scripts/demo.sh stop    stop everything this script started and undo its mounts
#
# State lives on a loop-mounted btrfs image (a plain directory when that is impossible, e.g.
# in a container without loop devices). When no system bus runs (containers, CI), a private
# bus configured like the system bus is started with polkitd on it; otherwise our bus policy
# and polkit actions are installed on the real one. Everything started is recorded in
# $RUN so `stop` ends exactly those processes.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUN=${NUMA_CACHE_DEMO_DIR:-/run/numa-cache-demo}
NAME=org.opdbus.NumaCache
OBJ=/org/opdbus/NumaCache

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

stop_pid() { # stop_pid FILE: SIGTERM the recorded pid, wait for it, forget it
  local f=$1 pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop() {
  [[ -d $RUN ]] || { echo "nothing to stop ($RUN does not exist)"; return 0; }
  stop_pid "$RUN/daemon.pid"
  stop_pid "$RUN/polkitd.pid"
  stop_pid "$RUN/dbus.pid"
  if mountpoint -q "$RUN/state" 2>/dev/null; then umount "$RUN/state"; fi
  if [[ -f $RUN/installed ]]; then
    while read -r f; do rm -f "$f"; done < "$RUN/installed"
    [[ -S /run/dbus/system_bus_socket ]] && busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig >/dev/null 2>&1 || true
  fi
  rm -rf "$RUN"
  echo "numa-cache demo stopped; state and private bus removed"
}

if [[ ${1:-start} == stop ]]; then
  [[ $(id -u) -eq 0 ]] || die "run as root: sudo scripts/demo.sh stop"
  stop
  exit 0
fi
[[ ${1:-start} == start ]] || die "usage: scripts/demo.sh [start|stop]"
[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages, mounts a btrfs image and starts a system service): sudo scripts/demo.sh"
[[ -e $RUN/daemon.pid ]] && die "already running (stop it first: sudo scripts/demo.sh stop)"

say "checking what is installed"
need=(
  "dbus-daemon:dbus-daemon" "/usr/lib/polkit-1/polkitd:polkitd" "busctl:systemd"
  "mkfs.btrfs:btrfs-progs" "losetup:mount" "cc:gcc" "pkg-config:pkg-config" "curl:curl"
)
missing=()
for pair in "${need[@]}"; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  if [[ $cmd == /* ]]; then [[ -e $cmd ]] || missing+=("$pkg"); else command -v "$cmd" >/dev/null || missing+=("$pkg"); fi
done
if ! command -v cargo >/dev/null && [[ ! -x $HOME/.cargo/bin/cargo ]]; then missing+=(cargo); fi
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null
fi
export PATH=$HOME/.cargo/bin:$PATH

say "building (cargo build --release)"
cargo build --release --bins --quiet
DAEMON=$REPO/target/release/numa-cached
CTL=$REPO/target/release/numacachectl

mkdir -p "$RUN"
chmod 755 "$RUN"
: > "$RUN/installed"

say "state directory"
mkdir -p "$RUN/state"
if truncate -s 1G "$RUN/state.img" && mkfs.btrfs -q -f "$RUN/state.img" >/dev/null 2>&1 \
   && mount -o loop "$RUN/state.img" "$RUN/state" 2>/dev/null; then
  echo "loop-mounted btrfs at $RUN/state (shards become subvolumes, snapshots are btrfs snapshots)"
else
  rm -f "$RUN/state.img"
  echo "no loop device or btrfs here: using the plain directory $RUN/state (the cache works the same; stats say \"btrfs\": false)"
fi

install_file() { # install_file SRC DST: copy and remember to remove it at stop
  if [[ ! -e $2 ]]; then install -Dm0644 "$1" "$2"; echo "$2" >> "$RUN/installed"; fi
}
install_file "$REPO/polkit/org.opdbus.NumaCache.policy" /usr/share/polkit-1/actions/org.opdbus.NumaCache.policy

bus_up() { busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetId >/dev/null 2>&1; }
has_owner() { [[ $(busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus NameHasOwner s "$1" 2>/dev/null) == "b true" ]]; }

say "system bus"
PRIVATE=no
if bus_up; then
  echo "a system bus runs: installing our bus policy on it"
  install_file "$REPO/dbus/org.opdbus.NumaCache.conf" /usr/share/dbus-1/system.d/org.opdbus.NumaCache.conf
  busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig >/dev/null
else
  PRIVATE=yes
  sed -e "s|@DIR@|$RUN|" -e "s|@POLICY@|$REPO/dbus/org.opdbus.NumaCache.conf|" \
    "$REPO/tests/dbus/system-bus.conf.in" > "$RUN/bus.conf"
  dbus-daemon --config-file="$RUN/bus.conf" --nofork >"$RUN/dbus.log" 2>&1 &
  echo $! > "$RUN/dbus.pid"
  export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$RUN/system_bus_socket
  for _ in $(seq 50); do bus_up && break; sleep 0.1; done
  bus_up || die "the private bus did not start; see $RUN/dbus.log"
  echo "no system bus here: started a private one ($DBUS_SYSTEM_BUS_ADDRESS) with our policy"
fi
if ! has_owner org.freedesktop.PolicyKit1; then
  /usr/lib/polkit-1/polkitd --no-debug >"$RUN/polkitd.log" 2>&1 &
  echo $! > "$RUN/polkitd.pid"
  for _ in $(seq 50); do has_owner org.freedesktop.PolicyKit1 && break; sleep 0.1; done
  has_owner org.freedesktop.PolicyKit1 || die "polkitd did not start; see $RUN/polkitd.log"
  echo "started polkitd on that bus"
fi

say "starting numa-cached"
# The optional HTTP gateway on a unix socket (reads for anyone, POSTs checked with polkit).
OPDBUS_CACHE_DIR=$RUN/state "$DAEMON" --http-socket "$RUN/http.sock" >"$RUN/daemon.log" 2>&1 &
echo $! > "$RUN/daemon.pid"
for _ in $(seq 100); do has_owner $NAME && break; sleep 0.1; done
has_owner $NAME || { cat "$RUN/daemon.log" >&2; die "numa-cached did not start"; }
echo "numa-cached runs (pid $(cat "$RUN/daemon.pid"), log $RUN/daemon.log)"

run() { printf '\n$ %s\n' "$*"; "$@"; }
say "it works"
run "$CTL" topology
printf 'hello from numa-cache\n' > "$RUN/hello.txt"
run "$CTL" put demo greeting "$RUN/hello.txt"
run "$CTL" get demo greeting
run "$CTL" lookup demo greeting
run "$CTL" stats

say "the same over D-Bus with busctl (copy these)"
[[ $PRIVATE == yes ]] && echo "export DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SYSTEM_BUS_ADDRESS"
run busctl --system call $NAME $OBJ $NAME.Topology GetTopology
run busctl --system call $NAME $OBJ $NAME.Cache Put 'ssaya{sv}' demo hello 5 104 101 108 108 111 0
run busctl --system call $NAME $OBJ $NAME.Cache Get ss demo hello
run busctl --system get-property $NAME $OBJ $NAME.CacheStats Entries Hits Misses
run busctl --system call $NAME $OBJ $NAME.Strategy SetStrategy si round_robin -- -1
run busctl --system tree $NAME

say "the same over HTTP (the gateway, --http-socket $RUN/http.sock)"
run curl -sS --unix-socket "$RUN/http.sock" http://localhost/api/v1/numa/cache/stats
echo
run curl -sS --unix-socket "$RUN/http.sock" -X POST -H 'Content-Type: application/json' \
  --data '{"strategy":"local_node","node_preference":-1}' http://localhost/api/v1/numa/strategy
echo
printf '\n$ curl -sS --unix-socket %s http://localhost/metrics | grep request_duration_seconds_count\n' "$RUN/http.sock"
curl -sS --unix-socket "$RUN/http.sock" http://localhost/metrics | grep request_duration_seconds_count
printf '\n$ %s stats --prometheus | sed -n 1,4p   # for node_exporter'"'"'s textfile collector\n' "$CTL"
"$CTL" stats --prometheus | sed -n 1,4p

cat <<EOF

numa-cached is running. Try more:
  $CTL --help
  $CTL monitor            # live signals and property changes
Stop it with:
  sudo scripts/demo.sh stop
EOF
