#!/usr/bin/env bash
# Services: local PostgreSQL (trust), Redis; a moto S3 server is started here. PYTHON: the venv python.
# e2e.sh CODE_DIR LABEL OUT_JSON REDIS_DB PORT [extra hep2 bench args]
# E2E_SCRIPT=script.py: run `python script.py OUT_JSON [extra args]` there instead of hep2 bench
set -euo pipefail
code=$(cd "$1" && pwd); label=$2; out=$3; rdb=$4; port=$5; shift 5
db=hep2_bench_$label
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
redis-cli -n $rdb flushdb >/dev/null
${PYTHON:-python} "$(dirname "$0")/moto_server.py" $port > ${TMPDIR:-/tmp}/moto_$label.log 2>&1 &
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
if [ -n "${E2E_SCRIPT:-}" ]; then  # another measurement in the same set-up (session 9's e2e_cpu.py)
  ${PYTHON:-python} "$E2E_SCRIPT" "$out" "$@"
else
  hep2cli bench --json $out --count ${COUNT:-8} --data ${HEP2_SHARED_DATA:-../shared/data}/agh-fields "$@"
fi
