#!/bin/sh
# One-shot MinIO set-up for the HEp-2 reader, run by the minio/mc image (docker-compose service
# `minio-init`). Idempotent: every step either checks first or overwrites with the same value, so it is
# safe to run on every `docker compose up`.
#
#   1. the bucket (HEP2_S3_BUCKET)
#   2. the application's own MinIO user (HEP2_S3_ACCESS_KEY_ID) with read/write on that bucket only
#   3. optionally a scanner user (MINIO_SCANNER_ACCESS_KEY) that may only PUT under the inbox prefix
#   4. the webhook notify target `hep2`: POST to the API (WEBHOOK_ENDPOINT) with
#      `Authorization: Bearer $HEP2_WEBHOOK_TOKEN`; queue_dir makes MinIO keep undelivered events on disk
#      and replay them when the API is back
#   5. the bucket notification: object-created events under HEP2_INBOX_PREFIX -> that target
#
# Only POSIX sh and mc are used: the minio/mc image has no grep/sed/curl.
set -eu

: "${MINIO_URL:=http://minio:9000}"
: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is required}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is required}"
: "${HEP2_S3_BUCKET:=hep2}"
: "${HEP2_INBOX_PREFIX:=inbox/}"
: "${HEP2_S3_ACCESS_KEY_ID:?HEP2_S3_ACCESS_KEY_ID is required}"
: "${HEP2_S3_SECRET_ACCESS_KEY:?HEP2_S3_SECRET_ACCESS_KEY is required}"
: "${HEP2_WEBHOOK_TOKEN:?HEP2_WEBHOOK_TOKEN is required}"
: "${WEBHOOK_ENDPOINT:=http://api:8000/v1/events/s3}"
: "${WEBHOOK_QUEUE_DIR:=/var/lib/minio-events}"
: "${WEBHOOK_QUEUE_LIMIT:=100000}"
: "${MINIO_SCANNER_ACCESS_KEY:=}"
: "${MINIO_SCANNER_SECRET_KEY:=}"

ALIAS=hep2
TARGET_ID=hep2                                   # notify_webhook:hep2
ARN="arn:minio:sqs::${TARGET_ID}:webhook"
export MC_CONFIG_DIR="${MC_CONFIG_DIR:-/tmp/.mc}" # writable whatever user the container runs as

case "$HEP2_WEBHOOK_TOKEN" in
  *" "*) echo "HEP2_WEBHOOK_TOKEN must be one word (MinIO sends it as 'Authorization: Bearer <token>')" >&2
         exit 1 ;;
esac

log() { echo "minio-init: $*"; }

wait_ready() {
  i=0
  until mc ready "$ALIAS" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -ge 120 ]; then
      log "MinIO at $MINIO_URL not ready after 120 s" >&2
      exit 1
    fi
    sleep 1
  done
}

# --- connect -----------------------------------------------------------------------------------------
i=0
until mc alias set "$ALIAS" "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -ge 60 ]; then
    log "cannot log in to $MINIO_URL as MINIO_ROOT_USER" >&2
    exit 1
  fi
  sleep 2
done
wait_ready

# --- 1. bucket ---------------------------------------------------------------------------------------
mc mb --ignore-existing "$ALIAS/$HEP2_S3_BUCKET"
mc anonymous set none "$ALIAS/$HEP2_S3_BUCKET" >/dev/null   # private, always
log "bucket $HEP2_S3_BUCKET ready"

# --- 2./3. users and policies ------------------------------------------------------------------------
policy_file=$(mktemp)
trap 'rm -f "$policy_file"' EXIT

attach() {  # attach POLICY to USER; a second attach fails with "already in effect", which is fine
  if out=$(mc admin policy attach "$ALIAS" "$1" --user "$2" 2>&1); then
    return 0
  fi
  case "$out" in
    *"already in effect"*) return 0 ;;
  esac
  echo "$out" >&2
  return 1
}

if [ "$HEP2_S3_ACCESS_KEY_ID" != "$MINIO_ROOT_USER" ]; then
  cat >"$policy_file" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow",
     "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
     "Resource": ["arn:aws:s3:::${HEP2_S3_BUCKET}"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::${HEP2_S3_BUCKET}/*"]}
  ]
}
JSON
  mc admin policy create "$ALIAS" hep2-app "$policy_file" >/dev/null
  mc admin user add "$ALIAS" "$HEP2_S3_ACCESS_KEY_ID" "$HEP2_S3_SECRET_ACCESS_KEY" >/dev/null
  attach hep2-app "$HEP2_S3_ACCESS_KEY_ID"
  log "application user $HEP2_S3_ACCESS_KEY_ID has read/write on $HEP2_S3_BUCKET"
fi

if [ -n "$MINIO_SCANNER_ACCESS_KEY" ]; then
  : "${MINIO_SCANNER_SECRET_KEY:?MINIO_SCANNER_SECRET_KEY is required with MINIO_SCANNER_ACCESS_KEY}"
  cat >"$policy_file" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow",
     "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::${HEP2_S3_BUCKET}/${HEP2_INBOX_PREFIX}*"]}
  ]
}
JSON
  mc admin policy create "$ALIAS" hep2-scanner "$policy_file" >/dev/null
  mc admin user add "$ALIAS" "$MINIO_SCANNER_ACCESS_KEY" "$MINIO_SCANNER_SECRET_KEY" >/dev/null
  attach hep2-scanner "$MINIO_SCANNER_ACCESS_KEY"
  log "scanner user $MINIO_SCANNER_ACCESS_KEY may upload to $HEP2_S3_BUCKET/$HEP2_INBOX_PREFIX"
fi

# --- 4. webhook notify target ------------------------------------------------------------------------
# A named target (not the default `_`) may be offline when it is configured: the API need not be up yet,
# and events wait in queue_dir until it answers.
mc admin config set "$ALIAS" "notify_webhook:${TARGET_ID}" \
  endpoint="$WEBHOOK_ENDPOINT" \
  auth_token="$HEP2_WEBHOOK_TOKEN" \
  queue_dir="$WEBHOOK_QUEUE_DIR" \
  queue_limit="$WEBHOOK_QUEUE_LIMIT" >/dev/null
log "notify_webhook:${TARGET_ID} -> $WEBHOOK_ENDPOINT (queue_dir $WEBHOOK_QUEUE_DIR)"

# Notification targets are read at start-up: restart so that the (possibly changed) target is loaded.
# Restarting is harmless when nothing changed; undelivered events stay in queue_dir.
mc admin service restart "$ALIAS"
sleep 2
wait_ready
log "MinIO restarted with the webhook target"

# --- 5. bucket notification --------------------------------------------------------------------------
# `mc event add` refuses a rule that overlaps an existing one: add it only when it is missing, and
# replace it when HEP2_INBOX_PREFIX changed.
existing=$(mc --json --no-color event ls "$ALIAS/$HEP2_S3_BUCKET" "$ARN" 2>/dev/null || true)
has_arn=no
has_prefix=no
case "$existing" in *"$ARN"*) has_arn=yes ;; esac
case "$existing" in *"\"$HEP2_INBOX_PREFIX\""*) has_prefix=yes ;; esac
if [ "$has_arn" = yes ] && [ "$has_prefix" = yes ]; then
  log "bucket event $ARN (prefix $HEP2_INBOX_PREFIX) already configured"
else
  if [ "$has_arn" = yes ]; then
    mc event rm "$ALIAS/$HEP2_S3_BUCKET" "$ARN"   # stale rule with another prefix
  fi
  mc event add "$ALIAS/$HEP2_S3_BUCKET" "$ARN" --event put --prefix "$HEP2_INBOX_PREFIX"
  log "bucket event: put under $HEP2_INBOX_PREFIX -> $ARN"
fi

mc event ls "$ALIAS/$HEP2_S3_BUCKET"
log "done"
