#!/usr/bin/env bash
# The 10M run of issue 9 (a benchmark, not a CI test): store_scale_v2 with 10k against
# NUMA_CACHE_SCALE_BIG (default 10,000,000) entries of 1.5 KiB, populated in-process by many
# threads with default durability, on a sparse btrfs image of its own in /var/tmp (about
# 2.4 KiB of disk per entry: ~24 GiB at 10M), removed on exit whatever happens.
# Prints: RSS per entry (and the peak during open), open after a clean stop (entry-map
# checkpoint) against the index scan, open after a SIGKILL, the clean stop's time, hot-set
# get against the 10k case, uniform get. Usage (root): scripts/bench-scale-10m.sh
set -euo pipefail
cd "$(dirname "$0")/.."
big=${NUMA_CACHE_SCALE_BIG:-10000000}
export NUMA_CACHE_SCALE_BIG=$big
img_dir=${BENCH_IMG_DIR:-/var/tmp}
size_gib=$(( 4 + big * 2600 / (1 << 30) ))
avail_gib=$(( $(df --output=avail -k "$img_dir" | tail -1) / (1 << 20) ))
if (( avail_gib < size_gib + 4 )); then
  echo "bench-scale-10m: $img_dir has $avail_gib GiB free; $big entries need ~$size_gib GiB (+4 spare)" >&2
  exit 2
fi
img=$(mktemp "$img_dir/numa-cache-scale.XXXXXX.img")
mnt=$(mktemp -d)
cleanup() {
  umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  rm -f "$img"
  rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
truncate -s "${size_gib}G" "$img"
mkfs.btrfs -q "$img"
mount -o loop "$img" "$mnt"
export NUMA_CACHE_BENCH_DIR=$mnt
echo "# btrfs image ${size_gib} GiB (sparse) at $img, mounted on $mnt; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# NUMA_CACHE_SCALE_BIG=$big cargo bench --bench store_scale_v2 (10000 and $big entries)"
start=$(date +%s)
cargo bench --quiet --bench store_scale_v2 2>&1 | grep -v '^$'
echo "# disk used on the image: $(df -h --output=used "$mnt" | tail -1 | tr -d ' '); $(( $(date +%s) - start )) s in all"
