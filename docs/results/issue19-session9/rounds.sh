#!/usr/bin/env bash
# rounds.sh OUT_DIR ROUNDS: per round, hep2 bench --count 23 of 8641889 (OLD, an extracted tree) and of this
# tree, then e2e_cpu_pinned.sh of this tree; alternating so that the host's drift hits them alike.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); main=$(cd "$here/../../.." && pwd); out=$1
export PYTHON=$main/.venv/bin/python HEP2_SHARED_DATA=${HEP2_SHARED_DATA:-/work/shared/data} COUNT=23
for r in $(seq "$2"); do
  for run in old new pinned; do
    mkdir -p "$out/$run-$r"
    case $run in
      old) bash "$main/docs/results/issue19-session7/e2e.sh" "${OLD:-/tmp/old8641889}" old$r "$out/$run-$r/bench.json" 9 9521 ;;
      new) bash "$main/docs/results/issue19-session7/e2e.sh" "$main" new$r "$out/$run-$r/bench.json" 9 9522 ;;
      pinned) bash "$here/e2e_cpu_pinned.sh" "$main" pinned$r "$out/$run-$r/e2e.json" 9 9523 ;;
    esac > "$out/$run-$r/out.log" 2>&1
    echo "$(date -u +%H:%M:%S) $run-$r done"
  done
done
