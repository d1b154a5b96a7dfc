#!/usr/bin/env bash
# e2e_cpu_pinned.sh CODE_DIR LABEL OUT_JSON REDIS_DB PORT: e2e_cpu.sh with one analysing process on CPU 0 and
# everything else (PostgreSQL, Redis, moto, service worker, uploads) on CPU 1; models alone on CPU 0 too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for p in $(pgrep -f "postgres|redis-server"); do taskset -a -p -c 1 $p >/dev/null 2>&1 || true; done
# re-pin the analysing worker (queue gpu) and its pool to CPU 0 as soon as it exists; the pinner itself runs
# on CPU 1 (session 8's e2e_pinned.sh ran it anywhere: its pgrep every 0.1 s took ~40 ms CPU per field)
taskset -c 1 bash -c 'for i in $(seq 600); do
    for p in $(pgrep -f "worker -Q gpu" || true); do taskset -a -p -c 0 $p >/dev/null 2>&1 || true; done
    sleep 0.2
  done' &
pinner=$!
trap "kill $pinner 2>/dev/null; for p in \$(pgrep -f 'postgres|redis-server'); do taskset -a -p -c 0,1 \$p >/dev/null 2>&1 || true; done" EXIT
PIN_MODELS_ALONE=0 PROCESSES=1 taskset -c 1 bash "$here/e2e_cpu.sh" "$@"
