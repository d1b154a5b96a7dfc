"""Running a claimed analysis and writing everything it produced in one transaction."""

from __future__ import annotations

import hashlib
import json
from time import perf_counter
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from analysis.analyze import Models, SlideAnalysis, analyze_field
from analysis.config import PipelineConfig
from analysis.types import InvalidImageError
from db.models import AttemptOutcome, Cell, ModelStage, ModelTask, ModelVersion, SlideStatus, SpecimenResult
from db.session import session_scope
from hep2.settings import get_settings
from hep2.storage import ObjectNotFoundError, ObjectStorage, StoredObject
from hep2.vocabulary import CELL_PATTERNS
from workers import jobs

DOWNLOAD_STAGE = "download"
"""The worker's own stage in an attempt's ``stage_timings_ms``, beside ``analyze_field``'s stages."""


def run_claimed_analysis(claim: jobs.Claim, storage: ObjectStorage, models: Models,
                         config: PipelineConfig) -> dict[str, Any]:
    """Download the registered version, analyse, upload the overlay layer, then commit the results, or reject the
    slide with the reason (bad image, or not the bytes that were registered).

    Transient faults (storage, database) propagate so that the task retries.
    """
    started = perf_counter()
    try:
        stored = storage.fetch(claim.key, version_id=claim.version_id)
        problem = changed_since_registration(claim, stored)
    except ObjectNotFoundError:
        stored, problem = None, ("the object registered no longer exists (deleted, or its version removed) "
                                 f"under {claim.key!r}; upload it again")
    download_ms = round((perf_counter() - started) * 1000.0, 1)
    if problem is not None or stored is None:
        return _reject(claim, problem or "unreadable", download_ms)
    sidecar = dict(claim.sidecar or {})
    settings = get_settings()
    try:
        analysis = analyze_field(stored.data, models, sidecar=sidecar, config=config,
                                 accept_16bit=settings.accept_16bit)
    except InvalidImageError as exc:
        return _reject(claim, str(exc), download_ms)

    keys = overlay_keys(claim.slide_id, claim.attempt_number)
    storage.put(keys[1], analysis.overlay_layer, "image/png")  # the overlay itself: rendered on request
    timings = {DOWNLOAD_STAGE: download_ms, **analysis.timings_ms}
    with session_scope() as session:
        status = save_analysis(session, claim, analysis, keys, timings)
    return {"status": status.value if status else "superseded", "cells": len(analysis.cells)}


def overlay_keys(slide_id: int, attempt_number: int) -> tuple[str, str]:
    """(overlay, overlay layer) keys of an attempt: the worker stores the layer, the service renders the
    overlay on first request (``services/overlays.py``)."""
    base = f"overlays/{slide_id}/attempt-{attempt_number}"
    return f"{base}.png", f"{base}.layer.png"


def changed_since_registration(claim: jobs.Claim, stored: StoredObject) -> str | None:
    """Why ``stored`` is not the object version registered for the slide (None: it is).

    With a version id recorded (versioned bucket) the registered version itself was read; the ETag and
    SHA-256 are checked either way, so an overwrite of an unversioned key is refused, never analysed
    under the first upload's patient."""
    sha256 = hashlib.sha256(stored.data).hexdigest()
    if stored.etag == claim.etag and (claim.sha256 is None or sha256 == claim.sha256):
        return None
    return (f"the object changed after it was registered: {claim.key!r} had ETag {claim.etag} "
            f"(sha256 {(claim.sha256 or '?')[:16]}…) when registered and has ETag {stored.etag} (sha256 "
            f"{sha256[:16]}…) now. The newer upload is registered and analysed on its own; use a new key per "
            "image, or a versioned bucket (docs/deployment.md)")


def _reject(claim: jobs.Claim, reason: str, download_ms: float) -> dict[str, Any]:
    with session_scope() as session:
        jobs.finish_attempt(session, claim, AttemptOutcome.REJECTED, SlideStatus.REJECTED, reason,
                            {DOWNLOAD_STAGE: download_ms})
    return {"status": SlideStatus.REJECTED.value, "reason": reason}


def save_analysis(session: Session, claim: jobs.Claim, analysis: SlideAnalysis, overlay: tuple[str, str],
                  timings_ms: dict[str, float]) -> SlideStatus | None:
    """Cells, the specimen result and the model versions of one attempt; None if the attempt lost the slide.
    ``overlay``: the (overlay, layer) keys from :func:`overlay_keys`."""
    owned = jobs.owned_attempt(session, claim)
    if owned is None:
        return None
    slide, attempt = owned
    attempt.model_versions = model_version_rows(session, analysis.model_versions)
    classified = [c for c in analysis.cells if c.probabilities is not None]
    if classified:  # one executemany, no ORM objects (~4× less time than add_all for a field's ~60 cells)
        session.execute(insert(Cell), [_cell_row(claim, index, cell) for index, cell in enumerate(classified)])
    spec, intensity = analysis.specimen, analysis.intensity
    session.add(SpecimenResult(
        attempt_id=claim.attempt_id, slide_image_id=claim.slide_id, intensity_class=intensity.intensity_class,
        intensity_index=intensity.index, pattern=spec.pattern, icap_code=spec.icap, confidence=spec.confidence,
        second_pattern=spec.second_pattern, second_confidence=spec.second_confidence, cell_count=len(classified),
        needs_review=spec.needs_review, review_reason="; ".join(spec.reasons) or None, overlay_key=overlay[0],
        overlay_layer_key=overlay[1], quality=analysis.quality.to_dict() if analysis.quality else None))
    status = SlideStatus.NEEDS_REVIEW if spec.needs_review else SlideStatus.DONE
    jobs.close_owned(slide, attempt, AttemptOutcome.SUCCEEDED, status, timings_ms=timings_ms)
    return status


def _cell_row(claim: jobs.Claim, index: int, cell: Any) -> dict[str, Any]:
    """The ``cells`` row of one classified cell."""
    y0, x0, y1, x1 = cell.bbox
    probabilities = dict(zip((p.value for p in CELL_PATTERNS), map(float, cell.probabilities), strict=True))
    return dict(attempt_id=claim.attempt_id, slide_image_id=claim.slide_id, index=index, bbox_x=x0, bbox_y=y0,
                bbox_w=x1 - x0, bbox_h=y1 - y0, centroid_x=float(cell.centroid[1]), centroid_y=float(cell.centroid[0]),
                area_px=int(cell.area), mean_intensity=float(cell.mean_intensity), probabilities=probabilities,
                predicted_pattern=cell.pattern or max(probabilities, key=probabilities.__getitem__),
                confidence=max(probabilities.values()), mitotic=bool(cell.mitotic))


_TASK_OF = {"segmenter": ModelTask.SEGMENTATION, "classifier": ModelTask.CELL_PATTERN}


def _parameters_hash(info: dict[str, Any]) -> str:
    """Identity of a model without weights (the classical segmenter): sha256 of its name and parameters, so
    results from different settings point at different registry rows; "" when it has no parameters."""
    if not info.get("params"):
        return ""
    return hashlib.sha256(json.dumps({"name": info.get("name"), "params": info["params"]},
                                     sort_keys=True).encode()).hexdigest()


def model_version_rows(session: Session, versions: dict[str, Any]) -> list[ModelVersion]:
    """The registry rows of the models that produced a result; bundled models are registered on first use.

    A bundled model becomes ``production`` only when its task has no production version yet.
    """
    rows = []
    for role, info in versions.items():
        task = _TASK_OF.get(role)
        if task is None or not info.get("name"):
            continue
        sha = info.get("sha256") or _parameters_hash(info)
        version = f"{info.get('name')}-{sha[:12]}" if sha else str(info["name"])
        row = session.scalar(select(ModelVersion).where(ModelVersion.task == task, ModelVersion.sha256 == sha)
                             .order_by(ModelVersion.id).limit(1)) if sha else None
        row = row or session.scalar(select(ModelVersion).where(ModelVersion.task == task,
                                                                ModelVersion.version == version))
        if row is None:
            has_production = session.scalar(select(ModelVersion.id).where(
                ModelVersion.task == task, ModelVersion.stage == ModelStage.PRODUCTION)) is not None
            row = ModelVersion(task=task, version=version, sha256=sha or "0" * 64,
                               artifact_uri=f"bundled:{info.get('weights') or info['name']}",
                               stage=ModelStage.CANDIDATE if has_production else ModelStage.PRODUCTION,
                               stage_reason="bundled with the code", parameters=info)
            session.add(row)
            session.flush()
        rows.append(row)
    return rows
