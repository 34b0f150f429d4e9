#!/usr/bin/env bash
# Storage engine v2 benchmarks (issue 9) on a loop-mounted btrfs, each figure printed with its
# baseline from the same run: store_v2 (puts, sync puts, gets against cacache and the
# fdatasync limit) and store_scale_v2 (10k against NUMA_CACHE_SCALE_BIG entries of 1.5 KiB).
# Usage (root): scripts/bench-store.sh            NUMA_CACHE_SCALE_BIG=10000000 for the full
# 10M run (needs ~25 GiB free for the image; default 2,000,000); scripts/bench-scale-10m.sh
# runs only the scale part, at 10M by default.
set -euo pipefail
cd "$(dirname "$0")/.."
big=${NUMA_CACHE_SCALE_BIG:-2000000}
export NUMA_CACHE_SCALE_BIG=$big
img_dir=${BENCH_IMG_DIR:-/var/tmp}
img=$(mktemp "$img_dir/numa-cache-bench.XXXXXX.img")
mnt=$(mktemp -d)
cleanup() { umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; rm -f "$img"; rmdir "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
size_gib=$(( 4 + big * 2600 / (1 << 30) ))
truncate -s "${size_gib}G" "$img"
mkfs.btrfs -q "$img"
mount -o loop "$img" "$mnt"
export NUMA_CACHE_BENCH_DIR=$mnt
echo "# btrfs image ${size_gib} GiB at $img, mounted on $mnt"
echo "# cargo bench --bench store_v2"
cargo bench --quiet --bench store_v2 2>&1 | grep -v '^$'
echo "# cargo bench --bench store_scale_v2 (10000 and $big entries)"
cargo bench --quiet --bench store_scale_v2 2>&1 | grep -v '^$'
