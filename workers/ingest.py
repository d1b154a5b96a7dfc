"""Registering an uploaded slide image: once per (bucket, key, etag), with its sidecar metadata.

Pure functions over a database session and an object store, so the Celery tasks, the webhook endpoint and
the inbox sweep share them.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Patient, SlideImage, SlideStatus, Specimen
from hep2.storage import ObjectNotFoundError, ObjectStorage

_Row = TypeVar("_Row", Patient, Specimen)

SIDECAR_SUFFIX = ".json"
MAX_SIDECAR_BYTES = 64 * 1024
PSEUDO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class Sidecar(BaseModel):
    """The optional JSON next to an image (same key + ``.json``). Patient ids must be pseudonymised."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    patient_id: str | None = Field(None, description="pseudonymised patient id (no names, no spaces)")
    specimen_id: str | None = Field(None, max_length=64)
    well: str | None = Field(None, max_length=16)
    dilution: str | None = Field(None, pattern=r"^1:\d{1,6}$", description='e.g. "1:160"')
    exposure_ms: float | None = Field(None, gt=0, le=60_000)
    kit_lot: str | None = Field(None, max_length=64)
    scanner: str | None = Field(None, max_length=128)

    @field_validator("patient_id")
    @classmethod
    def _pseudonymised(cls, value: str | None) -> str | None:
        if value is not None and not PSEUDO_ID.match(value):
            raise ValueError("must be a pseudonymised id: 1-64 letters, digits or . _ : - "
                             "(no spaces, no names)")
        return value


class SidecarError(ValueError):
    """The sidecar exists but is not valid JSON or fails validation; the message is readable."""


def is_sidecar(key: str) -> bool:
    return key.endswith(SIDECAR_SUFFIX)


def read_sidecar(storage: ObjectStorage, image_key: str) -> Sidecar | None:
    """The sidecar of ``image_key``, ``None`` if there is none; :class:`SidecarError` if it is invalid."""
    try:
        raw = storage.get(image_key + SIDECAR_SUFFIX)
    except ObjectNotFoundError:
        return None
    if len(raw) > MAX_SIDECAR_BYTES:
        raise SidecarError(f"sidecar is {len(raw)} bytes; the limit is {MAX_SIDECAR_BYTES}")
    try:
        return Sidecar.model_validate(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SidecarError(f"sidecar is not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'sidecar'}: {e['msg']}" for e in exc.errors())
        raise SidecarError(f"sidecar failed validation: {problems}") from None


def register_upload(session: Session, storage: ObjectStorage, key: str) -> tuple[SlideImage, bool]:
    """Record the object at ``key`` once; return ``(slide, created)``.

    Reads the bytes to store their SHA-256 and the sidecar's metadata. A second call for the same
    (bucket, key, etag), from a repeated event or the sweep, returns the existing row and changes nothing.
    The ETag is the object's current one: an event about an overwritten version registers what is there
    now (the newer version's own event then finds it registered). An invalid sidecar records the slide as
    ``rejected`` with the reason.
    """
    info = storage.head(key)
    existing = _find(session, storage.bucket, key, info.etag)
    if existing is not None:
        return existing, False

    data = storage.get(key)
    slide = SlideImage(bucket=storage.bucket, key=key, etag=info.etag, version_id=info.version_id,
                       size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                       status=SlideStatus.RECEIVED)
    try:
        sidecar = read_sidecar(storage, key)
    except SidecarError as exc:
        slide.transition(SlideStatus.REJECTED, str(exc))
        sidecar = None
    if sidecar is not None:
        _apply_sidecar(session, slide, sidecar)

    try:
        with session.begin_nested():
            session.add(slide)
    except IntegrityError:
        # Another worker registered the same object between our look-up and insert.
        existing = _find(session, storage.bucket, key, info.etag)
        if existing is None:
            raise
        return existing, False
    return slide, True


def _find(session: Session, bucket: str, key: str, etag: str) -> SlideImage | None:
    return session.scalar(select(SlideImage).where(SlideImage.bucket == bucket, SlideImage.key == key,
                                                   SlideImage.etag == etag))


def _apply_sidecar(session: Session, slide: SlideImage, sidecar: Sidecar) -> None:
    slide.sidecar = sidecar.model_dump(mode="json", exclude_none=True)
    slide.well, slide.dilution, slide.exposure_ms = sidecar.well, sidecar.dilution, sidecar.exposure_ms
    slide.kit_lot, slide.scanner = sidecar.kit_lot, sidecar.scanner
    patient = _get_or_create(session, Patient, pseudo_id=sidecar.patient_id) if sidecar.patient_id else None
    if sidecar.specimen_id:
        specimen = _get_or_create(session, Specimen, accession=sidecar.specimen_id)
        if specimen.patient_id is None and patient is not None:
            specimen.patient = patient
        slide.specimen = specimen
    elif patient is not None:
        slide.specimen = Specimen(patient=patient)


def _get_or_create(session: Session, model: type[_Row], **unique: str) -> _Row:
    row = session.scalar(select(model).filter_by(**unique))
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = model(**unique)
            session.add(row)
    except IntegrityError:
        row = session.scalar(select(model).filter_by(**unique))
        assert row is not None
    return row
