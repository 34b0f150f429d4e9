#!/usr/bin/env bash
# Memory tier (issue 13): what keeping the tier in node-bound memory (mbind'd arenas, which
# NUMA balancing cannot migrate) costs against the heap tier it replaced, and against the
# other design (each hit served on the node's worker), all in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "#markdown"
echo '```sh'
echo 'cargo bench --bench memtier'
echo '```'
echo
cargo bench --quiet --bench memtier 2>/dev/null
echo
echo "Where the tier's pages are is measured, not assumed, by the NUMA lab (\`cargo test --test"
echo "numa_lab\`, section \`tier\`, kernel counters in a 2-node and a 3-node VM): see tests/lab/README.md."
