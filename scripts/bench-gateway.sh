#!/usr/bin/env bash
# Gateway (issue 6): recording a request latency with the lock-free histogram against the
# same buckets behind a Mutex, alone and with a second recording thread, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
raw=$(cargo bench --quiet --bench gateway_latency 2>/dev/null)
echo "#markdown"
echo '```sh'
echo 'cargo bench --bench gateway_latency'
echo '```'
echo
# criterion prints "<id>  time: [low median high]" (a long id stands on the line before).
# Only figures with a baseline in the same run are shown: observe/atomic* against
# observe/mutex_baseline*.
echo "$raw" | awk '
  /time:/ {
    id = ($1 == "time:") ? prev : $1
    line = $0; sub(/^.*\[/, "", line); split(line, p, " ")
    med = p[3]; unit = p[4]
    f = (unit == "ps") ? 0.001 : (unit == "ns") ? 1 : (unit == "ms") ? 1e6 : (unit == "s") ? 1e9 : 1000
    t[id] = med * f; order[n++] = id
    next
  }
  NF { prev = $1 }
  END {
    print "| criterion benchmark (median) | time | baseline (same run) | ratio |"
    print "|---|---|---|---|"
    for (i = 0; i < n; i++) {
      id = order[i]; if (id !~ /atomic/) continue
      base = id; sub(/atomic/, "mutex_baseline", base)
      if (!(base in t)) continue
      printf "| %s | %.1f ns | %s %.1f ns | %.2fx faster |\n", id, t[id], base, t[base], t[base] / t[id]
    }
  }'
