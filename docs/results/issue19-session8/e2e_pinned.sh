#!/usr/bin/env bash
# e2e_pinned.sh CODE_DIR LABEL OUT_JSON REDIS_DB PORT : one analysing process on CPU 0, everything else on CPU 1
set -euo pipefail
code=$(cd "$1" && pwd); label=$2; out=$3; rdb=$4; port=$5; shift 5
for p in $(pgrep -f "postgres|redis-server"); do taskset -a -p -c 1 $p >/dev/null 2>&1 || true; done
( # re-pin the analysing worker (queue gpu) and its pool to CPU 0 as soon as it exists
  for i in $(seq 1200); do
    for p in $(pgrep -f "worker -Q gpu" || true); do taskset -a -p -c 0 $p >/dev/null 2>&1 || true; done
    sleep 0.1
  done ) &
pinner=$!
trap "kill $pinner 2>/dev/null; for p in \$(pgrep -f 'postgres|redis-server'); do taskset -a -p -c 0,1 \$p >/dev/null 2>&1 || true; done" EXIT
COUNT=${COUNT:-23} taskset -c 1 bash "$(cd "$(dirname "$0")" && pwd)/../issue19-session7/e2e.sh" "$code" "$label" "$out" "$rdb" "$port" --processes 1 "$@"
