"""``POST /v1/events/s3``: S3 event notifications (MinIO webhook or AWS) → ingestion tasks.

Authenticated by the bearer token that MinIO's webhook target sends (``HEP2_WEBHOOK_TOKEN``) or a scanner
API key (:class:`api.auth.WebhookOrScanner`). Each created object under the inbox prefix becomes a
``hep2.register_upload`` task; registration is idempotent (unique bucket+key+etag), so repeated and
out-of-order events are harmless.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel, ConfigDict, Field

import workers.celery_app as broker
from api.auth import WebhookOrScanner
from hep2.settings import Settings, get_settings
from hep2.storage import InvalidKeyError, validate_key
from workers.ingest import is_sidecar
from workers.routing import TaskName

router = APIRouter(prefix="/v1/events", tags=["events"])
MAX_RECORDS = 100
"""Records per notification: MinIO and AWS send one; a scanner batching more must split its requests."""


class S3Bucket(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=63)


class S3Object(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    key: str = Field(min_length=1, max_length=3072, description="URL-encoded, as S3 sends it")
    size: int | None = Field(None, ge=0)
    etag: str | None = Field(None, alias="eTag")
    version_id: str | None = Field(None, alias="versionId")


class S3Entity(BaseModel):
    model_config = ConfigDict(extra="allow")
    bucket: S3Bucket
    object: S3Object


class S3Record(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    event_name: str = Field(alias="eventName", min_length=1, max_length=128)
    s3: S3Entity


class S3Event(BaseModel):
    """The notification body MinIO and AWS send (MinIO adds ``EventName`` and ``Key`` at the top)."""

    model_config = ConfigDict(extra="allow")
    Records: list[S3Record] = Field(min_length=1, max_length=MAX_RECORDS)


class RecordOutcome(BaseModel):
    key: str
    action: str = Field(description="queued | ignored")
    reason: str | None = None


class EventResponse(BaseModel):
    queued: int
    records: list[RecordOutcome]


def classify_record(record: S3Record, settings: Settings) -> RecordOutcome:
    """Decide what to do with one record (no side effects)."""
    key = unquote_plus(record.s3.object.key)
    if record.s3.bucket.name != settings.s3_bucket:
        return RecordOutcome(key=key, action="ignored", reason=f"bucket {record.s3.bucket.name!r} is not ours")
    if "ObjectCreated" not in record.event_name:
        return RecordOutcome(key=key, action="ignored", reason=f"event {record.event_name} is not an upload")
    try:
        validate_key(key)
    except InvalidKeyError as exc:
        return RecordOutcome(key=key, action="ignored", reason=str(exc))
    if not key.startswith(settings.inbox_prefix):
        return RecordOutcome(key=key, action="ignored", reason=f"outside the inbox prefix {settings.inbox_prefix}")
    if is_sidecar(key):
        return RecordOutcome(key=key, action="ignored", reason="sidecar: read together with its image")
    return RecordOutcome(key=key, action="queued")


@router.post("/s3", status_code=status.HTTP_202_ACCEPTED, response_model=EventResponse,
             dependencies=[Depends(WebhookOrScanner())])
def s3_event(event: S3Event, settings: Settings = Depends(get_settings)) -> EventResponse:
    """Queue the registration of every uploaded image in the notification."""
    outcomes = [classify_record(record, settings) for record in event.Records]
    to_queue = [o.key for o in outcomes if o.action == "queued"]
    if to_queue:
        app = broker.celery_client(settings)
        for key in dict.fromkeys(to_queue):  # once per key per notification
            app.send_task(TaskName.REGISTER_UPLOAD, args=[key])
    return EventResponse(queued=len(set(to_queue)), records=outcomes)
