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
from hep2.settings import get_settings
from hep2.storage import ObjectInfo, ObjectNotFoundError, ObjectStorage

_Row = TypeVar("_Row", Patient, Specimen)

SIDECAR_SUFFIX = ".json"
MAX_SIDECAR_BYTES = 64 * 1024
MAX_SIDECAR_DEPTH = 2  # a sidecar is one flat object; anything deeper is refused before parsing
DATE_LIKE = re.compile(r"(?<!\d)(\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})(?!\d)")
PLAIN_TEXT = r"^[^\x00-\x1f\x7f]*$"


class Sidecar(BaseModel):
    """The optional JSON next to an image (same key + ``.json``).

    Only these fields are accepted (anything else, a name or a date of birth, rejects the slide), and the
    patient and specimen ids must match the pseudonym pattern (``HEP2_PSEUDONYM_PATTERN``). Only the
    validated fields are stored; the raw file never is."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patient_id: str | None = Field(None, max_length=64, description="pseudonymised patient id "
                                                                    "(HEP2_PSEUDONYM_PATTERN)")
    specimen_id: str | None = Field(None, max_length=64, description="pseudonymised specimen id "
                                                                     "(HEP2_PSEUDONYM_PATTERN)")
    well: str | None = Field(None, max_length=16, pattern=r"^[A-Za-z0-9._-]+$")
    dilution: str | None = Field(None, pattern=r"^1:\d{1,6}$", description='e.g. "1:160"')
    exposure_ms: float | None = Field(None, gt=0, le=60_000)
    kit_lot: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$")
    scanner: str | None = Field(None, max_length=128, pattern=PLAIN_TEXT)

    @field_validator("patient_id", "specimen_id")
    @classmethod
    def _pseudonymised(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if DATE_LIKE.search(value):
            raise ValueError("looks like it contains a date (a date of birth?); send a pseudonym only")
        if not re.match(get_settings().pseudonym_pattern, value):
            raise ValueError("must be a pseudonym matching HEP2_PSEUDONYM_PATTERN (no names, no spaces, "
                             "no dates)")
        return value


SIDECAR_FIELDS = ", ".join(Sidecar.model_fields)


class SidecarError(ValueError):
    """The sidecar exists but is not valid JSON or fails validation; the message is readable."""


def is_sidecar(key: str) -> bool:
    return key.endswith(SIDECAR_SUFFIX)


def _nesting(raw: bytes) -> int:
    """The deepest bracket nesting of a JSON text, ignoring strings (no recursion, no parsing)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _problem(error: dict) -> str:
    where = ".".join(map(str, error["loc"])) or "sidecar"
    if error["type"] == "extra_forbidden":
        return (f"{where}: not an allowed sidecar field (allowed: {SIDECAR_FIELDS}); names, dates of birth "
                "and other personal data must never be sent")
    return f"{where}: {error['msg']}"


def parse_sidecar(raw: bytes) -> Sidecar:
    """Validate a sidecar's bytes; :class:`SidecarError` with a readable reason (never the values) if bad."""
    if len(raw) > MAX_SIDECAR_BYTES:
        raise SidecarError(f"sidecar is {len(raw)} bytes; the limit is {MAX_SIDECAR_BYTES}")
    if _nesting(raw) > MAX_SIDECAR_DEPTH:
        raise SidecarError("sidecar is nested too deeply: it must be one flat JSON object")
    try:
        return Sidecar.model_validate(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SidecarError(f"sidecar is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise SidecarError("sidecar failed validation: " + "; ".join(map(_problem, exc.errors()))) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of 5,000 digits
        raise SidecarError(f"sidecar is not acceptable JSON: {type(exc).__name__}: {str(exc)[:200]}") from None


def read_sidecar(storage: ObjectStorage, image_key: str) -> Sidecar | None:
    """The sidecar of ``image_key``, ``None`` if there is none; :class:`SidecarError` if it is invalid."""
    try:
        raw = storage.get(image_key + SIDECAR_SUFFIX)
    except ObjectNotFoundError:
        return None
    return parse_sidecar(raw)


def register_upload(session: Session, storage: ObjectStorage, key: str) -> tuple[SlideImage, bool]:
    """Record the object at ``key`` once; return ``(slide, created)``.

    Reads the bytes to store their SHA-256 together with the ETag and version of exactly those bytes
    (one read), so the analysis can later read, or verify, the very version registered. A second call for
    the same (bucket, key, etag), from a repeated event or the sweep, returns the existing row and changes
    nothing. An event about an overwritten version registers what is there now (the newer version's own
    event then finds it registered). An invalid sidecar, or one that names another patient for a known
    specimen, records the slide as ``rejected`` with the reason.
    """
    info = storage.head(key)
    existing = _find(session, storage.bucket, key, info.etag)
    if existing is not None:
        return existing, False
    stored = storage.fetch(key)
    if stored.etag != info.etag:  # overwritten between the two requests: register what was read
        existing = _find(session, storage.bucket, key, stored.etag)
        if existing is not None:
            return existing, False

    slide = SlideImage(bucket=storage.bucket, key=key, etag=stored.etag, version_id=stored.version_id,
                       size_bytes=len(stored.data), sha256=hashlib.sha256(stored.data).hexdigest(),
                       status=SlideStatus.RECEIVED)
    try:
        sidecar = read_sidecar(storage, key)
    except SidecarError as exc:
        slide.transition(SlideStatus.REJECTED, str(exc))
        sidecar = None
    if sidecar is not None:
        conflict = _apply_sidecar(session, slide, sidecar)
        if conflict:
            slide.transition(SlideStatus.REJECTED, conflict)
    return _insert(session, slide)


def record_unreadable(session: Session, bucket: str, info: ObjectInfo, reason: str) -> tuple[SlideImage, bool]:
    """Record an upload that cannot be registered (e.g. a key with a newline) as ``rejected`` with the reason,
    once per (bucket, key, etag), so that it shows in the failures list and the sweep stops re-queuing it."""
    existing = _find(session, bucket, info.key, info.etag)
    if existing is not None:
        return existing, False
    slide = SlideImage(bucket=bucket, key=info.key, etag=info.etag, size_bytes=info.size,
                       status=SlideStatus.RECEIVED)
    slide.transition(SlideStatus.REJECTED, reason)
    return _insert(session, slide)


def _insert(session: Session, slide: SlideImage) -> tuple[SlideImage, bool]:
    try:
        with session.begin_nested():
            session.add(slide)
    except IntegrityError:
        # Another worker registered the same object between our look-up and insert.
        existing = _find(session, slide.bucket, slide.key, slide.etag)
        if existing is None:
            raise
        return existing, False
    return slide, True


def _find(session: Session, bucket: str, key: str, etag: str) -> SlideImage | None:
    return session.scalar(select(SlideImage).where(SlideImage.bucket == bucket, SlideImage.key == key,
                                                   SlideImage.etag == etag))


def _apply_sidecar(session: Session, slide: SlideImage, sidecar: Sidecar) -> str | None:
    """Copy the validated fields and link the specimen and patient; the reason to reject the slide when the
    sidecar names another patient for a specimen that already belongs to one (never re-attached)."""
    slide.sidecar = sidecar.model_dump(mode="json", exclude_none=True)
    slide.well, slide.dilution, slide.exposure_ms = sidecar.well, sidecar.dilution, sidecar.exposure_ms
    slide.kit_lot, slide.scanner = sidecar.kit_lot, sidecar.scanner
    specimen = (session.scalar(select(Specimen).where(Specimen.accession == sidecar.specimen_id))
                if sidecar.specimen_id else None)
    if specimen is not None and specimen.patient is not None and sidecar.patient_id is not None \
            and specimen.patient.pseudo_id != sidecar.patient_id:
        return (f"the sidecar names patient {sidecar.patient_id} for specimen {sidecar.specimen_id}, which "
                "belongs to another patient; the image was not linked. Correct the sidecar and upload the "
                "image again")
    patient = _get_or_create(session, Patient, pseudo_id=sidecar.patient_id) if sidecar.patient_id else None
    if sidecar.specimen_id:
        specimen = specimen or _get_or_create(session, Specimen, accession=sidecar.specimen_id)
        if specimen.patient_id is None and patient is not None:
            specimen.patient = patient
        slide.specimen_id = specimen.id  # by id: the slide is not in the session yet (no backref to a row)
    elif patient is not None:
        slide.specimen = Specimen(patient=patient)
    return None


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
