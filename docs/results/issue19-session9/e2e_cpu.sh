#!/usr/bin/env bash
# Services: local PostgreSQL (trust), Redis; a moto S3 server is started here. PYTHON: the venv python.
# e2e_cpu.sh CODE_DIR LABEL OUT_JSON REDIS_DB PORT  (COUNT fields, default 23; PROCESSES, default 2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
code=$(cd "$1" && pwd); label=$2; out=$3; rdb=$4; port=$5; shift 5
db=hep2_bench_$label
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
redis-cli -n $rdb flushdb >/dev/null
${PYTHON:-python} "$here/../issue19-session7/moto_server.py" $port > ${TMPDIR:-/tmp}/moto_$label.log 2>&1 &
moto=$!
trap "kill $moto 2>/dev/null" EXIT
for i in $(seq 50); do grep -q ready ${TMPDIR:-/tmp}/moto_$label.log && break; sleep 0.2; done
export PYTHONPATH=$code HEP2_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/$db \
  HEP2_BROKER_URL=redis://127.0.0.1:6379/$rdb HEP2_RESULT_BACKEND=redis://127.0.0.1:6379/$rdb \
  HEP2_STORAGE_BACKEND=s3 HEP2_S3_ENDPOINT_URL=http://127.0.0.1:$port HEP2_S3_BUCKET=hep2-bench \
  HEP2_S3_ACCESS_KEY_ID=$(openssl rand -hex 16) HEP2_S3_SECRET_ACCESS_KEY=$(openssl rand -hex 32) \
  HEP2_SIGNING_KEY=$(openssl rand -hex 32)
cd $code
hep2cli() { if [ -d $code/cli ]; then ${PYTHON:-python} -c "from cli.main import app; app()" "$@"; else ${PYTHON:-python} -m hep2.cli "$@"; fi; }
hep2cli db upgrade >/dev/null 2>&1 || true
${PYTHON:-python} "$here/e2e_cpu.py" $out ${COUNT:-23} ${PROCESSES:-2}
