# Sourced by the bench scripts that measure a running numa-cached (bench-client.sh,
# bench-bus-throughput.sh): `bench_daemon_up NAME IMAGE_SIZE [VAR=VALUE...]` builds the
# daemon (a no-op when current; NUMA_CACHED=path uses that binary instead), loop-mounts a
# btrfs image of IMAGE_SIZE, starts a private system-like bus and the daemon on it with the
# given environment, and waits for its name. Sets RUN, DAEMON and DBUS_SYSTEM_BUS_ADDRESS;
# everything is stopped and removed at exit.
#
# BUS=daemon (default) runs dbus-daemon; BUS=broker runs dbus-broker (Debian package
# dbus-broker) with the same configuration file. Its launcher takes the listening socket by
# socket activation (systemd-socket-activate provides it without systemd as PID 1), logs to
# /run/systemd/journal/socket (a sink, socat, on a tmpfs over /run/systemd in a private mount
# namespace, so the host's /run is untouched) and connects to the bus it serves as its
# "system bus".
bench_daemon_up() {
  local name=$1 size=$2; shift 2
  DAEMON=${NUMA_CACHED:-${CARGO_TARGET_DIR:-$PWD/target}/release/numa-cached}
  [[ $(id -u) -eq 0 ]] || { echo "run as root (mounts a btrfs image)" >&2; exit 2; }
  local pair
  BUS=${BUS:-daemon}
  local need="mkfs.btrfs:btrfs-progs busctl:systemd"
  case $BUS in
    daemon) need+=" dbus-daemon:dbus-daemon" ;;
    broker) need+=" dbus-broker-launch:dbus-broker systemd-socket-activate:systemd socat:socat unshare:util-linux" ;;
    *) echo "BUS=$BUS: use BUS=daemon (dbus-daemon) or BUS=broker (dbus-broker)" >&2; exit 2 ;;
  esac
  for pair in $need; do
    command -v "${pair%%:*}" >/dev/null || { echo "missing ${pair##*:}: apt-get install -y ${pair##*:}" >&2; exit 2; }
  done
  # Always build unless told which binary: a stale daemon would be measured otherwise.
  [[ -n ${NUMA_CACHED:-} ]] || cargo build --release --quiet --bin numa-cached
  RUN=$(mktemp -d "/tmp/numa-bench-$name.XXXXXX")
  trap bench_daemon_down EXIT
  mkdir -p "$RUN/state"
  truncate -s "$size" "$RUN/state.img"; mkfs.btrfs -q -f "$RUN/state.img" >/dev/null
  mount -o loop "$RUN/state.img" "$RUN/state"
  sed -e "s|@DIR@|$RUN|" -e "s|@POLICY@|$PWD/dbus/org.opdbus.NumaCache.conf|" \
    tests/dbus/system-bus.conf.in > "$RUN/bus.conf"
  export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$RUN/system_bus_socket
  if [[ $BUS == daemon ]]; then
    dbus-daemon --config-file="$RUN/bus.conf" --nofork >"$RUN/bus.log" 2>&1 & echo $! > "$RUN/bus.pid"
  else
    # The launcher execs in place of the shell (bus.pid is its pid); the broker is its child
    # and dies with it (PDEATHSIG); the sink is stopped by its own pid.
    unshare -m --propagation private bash -c '
      mkdir -p /run/systemd && mount -t tmpfs -o mode=0755 tmpfs /run/systemd &&
        mkdir /run/systemd/journal || exit 1
      socat -u UNIX-RECV:/run/systemd/journal/socket OPEN:"$1/journal.log",creat,append &
      echo $! > "$1/sink.pid"
      for _ in $(seq 50); do [[ -S /run/systemd/journal/socket ]] && break; sleep 0.1; done
      exec systemd-socket-activate -E DBUS_SYSTEM_BUS_ADDRESS -l "$1/system_bus_socket" \
        dbus-broker-launch --scope system --config-file "$1/bus.conf"' bus "$RUN" \
      >"$RUN/bus.log" 2>&1 & echo $! > "$RUN/bus.pid"
  fi
  for _ in $(seq 50); do [[ -S $RUN/system_bus_socket ]] && break; sleep 0.1; done
  env OPDBUS_CACHE_DIR="$RUN/state" "$@" "$DAEMON" >"$RUN/daemon.log" 2>&1 & echo $! > "$RUN/daemon.pid"
  for _ in $(seq 100); do
    busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus NameHasOwner s org.opdbus.NumaCache 2>/dev/null | grep -q true && return 0
    sleep 0.1
  done
  echo "numa-cached did not take its name; see $RUN/daemon.log" >&2
  exit 1
}

bench_daemon_down() {
  [[ -f $RUN/daemon.pid ]] && kill "$(cat "$RUN/daemon.pid")" 2>/dev/null && sleep 1
  [[ -f $RUN/bus.pid ]] && kill "$(cat "$RUN/bus.pid")" 2>/dev/null
  [[ -f $RUN/sink.pid ]] && kill "$(cat "$RUN/sink.pid")" 2>/dev/null
  mountpoint -q "$RUN/state" && umount "$RUN/state"
  rm -rf "$RUN"
}

# The running bus's program and version, for the figures' header.
bus_version() {
  case ${BUS:-daemon} in
    daemon) dbus-daemon --version | head -1 ;;
    broker) dbus-broker --version | head -1 ;;
  esac
}

# The pid of the process that routes the messages: dbus-daemon, or the dbus-broker that the
# launcher (bus.pid) runs.
bus_pid() {
  case ${BUS:-daemon} in
    daemon) cat "$RUN/bus.pid" ;;
    broker) pgrep -P "$(cat "$RUN/bus.pid")" -x dbus-broker ;;
  esac
}

# Calls per second of PROCS dbus-python clients (scripts/bench_bus_client.py), each calling
# MODE for SECS seconds on ADDR; appends "LABEL us-per-call" (default LABEL: MODE) to
# $RUN/cpu: the user+system CPU, from /proc, of the server whose pid is in $RUN/daemon.pid.
bus_rate() {
  local mode=$1 label=${2:-$1} pids=() total=0 f w t0 t1 pid
  pid=$(cat "$RUN/daemon.pid")
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  for w in $(seq "$PROCS"); do
    /usr/bin/python3 scripts/bench_bus_client.py "$ADDR" "$mode" "$SECS" "$w$RANDOM" > "$RUN/out.$mode.$w" & pids+=($!)
  done
  wait "${pids[@]}"
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  for f in "$RUN"/out."$mode".*; do total=$((total + $(cat "$f" 2>/dev/null || echo 0))); done
  rm -f "$RUN"/out."$mode".*
  echo "$label $(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) / (total > 0 ? total : 1) ))" >> "$RUN/cpu"
  echo $((total / ${SECS%.*}))
}
