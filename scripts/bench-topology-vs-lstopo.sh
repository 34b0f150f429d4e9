#!/usr/bin/env bash
# Whole-process timing of `numacachectl topology --fs-root DIR --json` against hwloc's
# `lstopo-no-graphics --input DIR --of xml` on the same captured trees (the hwloc fixtures
# in tests/data/hwloc-linux and a synthetic 64-node tree), measured in the same run with
# hyperfine. Prints each median and the ratio lstopo/numacachectl (the target is >= 10).
# Also prints the binary's size and what it links (ldd).
# Usage: scripts/bench-topology-vs-lstopo.sh [OUT_DIR]   (hyperfine JSON exports go there)
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pair in hyperfine:hyperfine lstopo-no-graphics:hwloc tar:tar bzip2:bzip2; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
done
if ((${#missing[@]})); then
  echo "missing: ${missing[*]} (install with: apt-get install -y --no-install-recommends ${missing[*]})" >&2
  exit 2
fi

out=${1:-target/bench-topology}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The build numacachectl ships as: without the default `server` feature (it needs none of
# the daemon's stack), the `cli` profile (LTO, no unwinding, stripped), statically linked
# and not position-independent, so exec maps it and jumps in: no dynamic loader, no
# relocations. Most of a run is process start-up, so this is most of the speed.
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  cargo build --quiet --profile cli --no-default-features --bin numacachectl --target "$host"
bin=${CARGO_TARGET_DIR:-target}/$host/cli/numacachectl

fixtures=(128ia64-17n4s2c 16amd64-8n2c 16amd64-8n2c-cpusets 48amd64-4pa2n6c-sparse 32amd64-4s2n4c-cgroup2)
roots=()
for f in "${fixtures[@]}"; do
  mkdir -p "$work/$f"
  tar -xjf "tests/data/hwloc-linux/$f.tar.bz2" -C "$work/$f"
  roots+=("$f=$(find "$work/$f" -mindepth 1 -maxdepth 1 -type d | head -n1)")
done

# A synthetic 64-node machine, 4 CPUs per node, spelled as the kernel spells sysfs (hwloc
# needs each node's cpumap and each CPU's topology/ folder; numacachectl reads cpulist).
syn="$work/synthetic-64n"
nodes=64 per=4
ncpus=$((nodes * per)) nwords=$(((nodes * per + 31) / 32))
mask() { # cpumap of CPUs $1..$2: nwords 32-bit words, most significant first
  local words=() i c v
  for ((i = nwords - 1; i >= 0; i--)); do
    v=0
    for ((c = $1; c <= $2; c++)); do ((c / 32 == i)) && v=$((v | (1 << (c % 32)))); done
    words+=("$(printf '%08x' "$v")")
  done
  (IFS=,; echo "${words[*]}")
}
mkdir -p "$syn/sys/devices/system/node" "$syn/sys/devices/system/cpu" "$syn/proc"
echo "0-$((nodes - 1))" >"$syn/sys/devices/system/node/online"
echo "0-$((ncpus - 1))" >"$syn/sys/devices/system/cpu/online"
echo "MemTotal: $((nodes * 16777216)) kB" >"$syn/proc/meminfo"
for ((n = 0; n < nodes; n++)); do
  d="$syn/sys/devices/system/node/node$n"
  mkdir -p "$d"
  echo "$((n * per))-$((n * per + per - 1))" >"$d/cpulist"
  mask $((n * per)) $((n * per + per - 1)) >"$d/cpumap"
  row=()
  for ((m = 0; m < nodes; m++)); do if ((m == n)); then row+=(10); else row+=(20); fi; done
  echo "${row[*]}" >"$d/distance"
  printf 'Node %d MemTotal:       16777216 kB\nNode %d MemFree:        8388608 kB\n' "$n" "$n" >"$d/meminfo"
done
for ((c = 0; c < ncpus; c++)); do
  t="$syn/sys/devices/system/cpu/cpu$c/topology"
  mkdir -p "$t"
  echo "$((c / per))" >"$t/physical_package_id"
  echo "$((c % per))" >"$t/core_id"
  mask $c $c >"$t/thread_siblings"
  mask $((c / per * per)) $((c / per * per + per - 1)) >"$t/core_siblings"
done
roots+=("synthetic-64n=$syn")

field() { # field $3 (median|user|system) of result $2 (0: numacachectl, 1: lstopo) in $1, in ms
  awk -v want="$2" -v key="\"$3\":" '$1 == key { gsub(/[",]/, "", $2); if (i++ == want) printf "%.3f", $2 * 1000 }' "$1"
}
cpu() { # user + system time of result $2 in export $1, in ms
  awk -v a="$(field "$1" "$2" user)" -v b="$(field "$1" "$2" system)" 'BEGIN { printf "%.3f", a + b }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b / a }'; }

# Wall time is what a user waits for; CPU time (user + system) is steadier on a shared,
# loaded machine, where run-queue waits inflate wall times of whichever command ran then.
printf '\n%-24s %14s %10s %7s   %14s %10s %7s\n' tree "ours wall ms" "lstopo ms" ratio "ours cpu ms" "lstopo ms" ratio
for entry in "${roots[@]}"; do
  name=${entry%%=*} root=${entry#*=}
  hyperfine -N --warmup 5 --min-runs 30 --style none --export-json "$out/$name.json" \
    "$bin topology --fs-root $root --json" \
    "lstopo-no-graphics --input $root --of xml" >/dev/null
  ow=$(field "$out/$name.json" 0 median) lw=$(field "$out/$name.json" 1 median)
  oc=$(cpu "$out/$name.json" 0) lc=$(cpu "$out/$name.json" 1)
  printf '%-24s %14s %10s %6sx   %14s %10s %6sx\n' "$name" "$ow" "$lw" "$(ratio "$ow" "$lw")" \
    "$oc" "$lc" "$(ratio "$oc" "$lc")"
done

# Where a run's time goes beyond the floor is mostly system calls (a few hundred small files):
# count them for the 17-node capture, when strace is there.
if command -v strace >/dev/null; then
  root17=${roots[0]#*=}
  strace -f -c -o "$out/strace-17n.txt" "$bin" topology --fs-root "$root17" --json >/dev/null
  echo
  echo "system calls of one numacachectl run on ${fixtures[0]}: $(awk '$NF == "total" { print $4 }' "$out/strace-17n.txt")" \
    "($(awk '$NF ~ /^(openat|read|close|statx|getdents64)$/ { printf "%s%s %s", sep, $NF, $4; sep = ", " }' "$out/strace-17n.txt"))"
fi

# The floor: starting any process at all on this machine (what no reader can go below).
hyperfine -N --warmup 5 --min-runs 30 --style none --export-json "$out/floor.json" true >/dev/null
echo
echo "process start floor (true): wall $(field "$out/floor.json" 0 median) ms, cpu $(cpu "$out/floor.json" 0) ms"
echo "wall: medians, cpu: mean user+system, of hyperfine -N --warmup 5 (JSON in $out/); ratio = lstopo / numacachectl"
echo "numacachectl ($bin): $(stat -c %s "$bin") bytes ($(du -h "$bin" | cut -f1)), $(size "$bin" 2>/dev/null | awk 'NR == 2 { printf "text %s, data %s, bss %s", $1, $2, $3 }')"
echo "links:"
{ ldd "$bin" 2>&1 || true; } | sed 's/^/  /'
file -b "$bin" | sed 's/^/  /'
