#!/usr/bin/env bash
# rounds.sh OUT_DIR ROUNDS: per round, session 9's e2e_cpu.sh (models alone, then end to end with CPU by process;
# 23 AGH fields) in four set-ups, alternating so that the shared host's drift hits them alike:
#   shared-w2 / shared-w3: everything on both cores; models alone 2 processes; the analysing worker 2 or 3
#   pinned-w1 / pinned-w2: models alone 1 process on CPU 0; the analysing worker (1 or 2 processes) on CPU 0,
#                          everything else (PostgreSQL, Redis, moto, service worker, uploads) on CPU 1
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); main=$(cd "$here/../../.." && pwd); out=$1
s9=$here/../issue19-session9
export PYTHON=$main/.venv/bin/python HEP2_SHARED_DATA=${HEP2_SHARED_DATA:-/work/shared/data} COUNT=23
for r in $(seq "$2"); do
  for run in ${RUNS:-shared-w2 shared-w3 pinned-w1 pinned-w2}; do
    workers=${run##*-w}
    case $run in
      shared-*) WORKER_PROCESSES=$workers PROCESSES=2 bash "$s9/e2e_cpu.sh" "$main" s10$r "$out/$run-$r.json" 0 9531 ;;
      pinned-*) WORKER_PROCESSES=$workers bash "$s9/e2e_cpu_pinned.sh" "$main" s10$r "$out/$run-$r.json" 0 9532 ;;
    esac > "$out/$run-$r.log" 2>&1
    echo "$(date -u +%H:%M:%S) $run-$r $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['ratio'], d.get('ratio_bracketed'), d['fields_per_s'], d['models_alone_fields_per_s'], d.get('models_alone_after_fields_per_s'))" "$out/$run-$r.json")"
  done
done
