#!/usr/bin/env bash
# Placement (issue 3): affinity and a memory policy for 64 threads with numa-cache's raw
# syscalls, against the seed design's `taskset -p` per thread, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v taskset >/dev/null || { echo "missing: taskset (apt-get install -y util-linux)" >&2; exit 2; }
echo "#markdown"
echo '```sh'
echo 'cargo bench --bench affinity'
echo '```'
echo
cargo bench --quiet --bench affinity 2>/dev/null | sed 's/^/    /'
