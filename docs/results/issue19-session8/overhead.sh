set -euo pipefail
cd "$(dirname "$0")/../../.."
db=hep2_ovh; port=9411
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
redis-cli -n 7 flushdb >/dev/null
.venv/bin/python docs/results/issue19-session7/moto_server.py $port > ${TMPDIR:-/tmp}/moto_ovh.log 2>&1 &
moto=$!; trap "kill $moto" EXIT
for i in $(seq 50); do grep -q ready ${TMPDIR:-/tmp}/moto_ovh.log && break; sleep 0.2; done
export PYTHONPATH=${CODE:-$PWD} HEP2_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/$db \
  HEP2_BROKER_URL=redis://127.0.0.1:6379/7 HEP2_RESULT_BACKEND=redis://127.0.0.1:6379/7 \
  HEP2_STORAGE_BACKEND=s3 HEP2_S3_ENDPOINT_URL=http://127.0.0.1:$port HEP2_S3_BUCKET=hep2-bench \
  HEP2_S3_ACCESS_KEY_ID=$(openssl rand -hex 16) HEP2_S3_SECRET_ACCESS_KEY=$(openssl rand -hex 32) \
  HEP2_SIGNING_KEY=$(openssl rand -hex 32)
.venv/bin/python docs/results/issue19-session8/overhead.py
