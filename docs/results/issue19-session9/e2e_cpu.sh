#!/usr/bin/env bash
# e2e_cpu.sh CODE_DIR LABEL OUT_JSON REDIS_DB PORT: e2e_cpu.py in session 7's e2e.sh set-up (local PostgreSQL and
# Redis, a moto S3 server started there); COUNT fields (default 23), PROCESSES analysing processes (default 2).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
E2E_SCRIPT=$here/e2e_cpu.py exec bash "$here/../issue19-session7/e2e.sh" "$1" "$2" "$3" "$4" "$5" "${COUNT:-23}" \
  "${PROCESSES:-2}"
