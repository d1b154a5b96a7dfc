"""API test fixtures: the session's real services, one key per role, seeded specimens with images in S3."""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from db.base import utcnow
from db.models import (
    AnalysisAttempt,
    AttemptOutcome,
    Cell,
    ModelStage,
    ModelTask,
    ModelVersion,
    Patient,
    Role,
    SlideImage,
    SlideStatus,
    Specimen,
    SpecimenResult,
)
from db.session import session_factory, session_scope
from hep2.settings import get_settings
from hep2.storage import storage_from_settings
from hep2.vocabulary import CELL_PATTERNS
from services.keys import create_key

WEBHOOK_TOKEN = "api-tests-webhook-token"
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log


@pytest.fixture(scope="session")
def api_env(service_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The services plus a webhook token, set in this process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEP2_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
        get_settings.cache_clear()
        yield {**service_env, "HEP2_WEBHOOK_TOKEN": WEBHOOK_TOKEN}
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def keys(api_env: dict[str, str]) -> dict[str, str]:
    """One API key per role, plus a revoked one under "revoked"."""
    out = {}
    with session_factory()() as session:  # create_key commits each key itself
        for role in Role:
            out[role.value] = create_key(session, f"test-{role.value}", role, "test")[1]
        row, out["revoked"] = create_key(session, "test-revoked", Role.ADMIN, "test")
        row.revoked_at = utcnow()
        session.commit()
    return out


@pytest.fixture(scope="session")
def client(api_env: dict[str, str]) -> TestClient:
    return TestClient(create_app(), raise_server_exceptions=False)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class SentTasks(list):
    def send_task(self, name: str, args: list[Any] | None = None, **_: Any) -> None:
        self.append((name, *(args or [])))


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> SentTasks:
    """Records the Celery tasks endpoints would send, instead of sending them."""
    recorder = SentTasks()
    monkeypatch.setattr("workers.celery_app.celery_client", lambda settings=None: recorder)
    return recorder


def field_png(seed: int, size: int = 256) -> bytes:
    """A dark field with bright round 'cells' (SYNTHETIC test image)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(20, 4, (size, size)).clip(0, 255)
    yy, xx = np.mgrid[:size, :size]
    for cy, cx in [(48, 48), (48, 160), (150, 80), (180, 190), (110, 220)]:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 20**2] = rng.uniform(120, 220)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([image * 0.2, image, image * 0.2], -1).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Seeded:
    slide_id: int
    result_id: int | None
    cell_ids: list[int] = field(default_factory=list)
    key: str = ""
    accession: str = ""


def seed_specimen(pattern: str = "speckled", intensity: str = "positive", needs_review: bool = False,
                  patient: str | None = None, status: SlideStatus | None = None, with_result: bool = True,
                  received_days_ago: float = 0.0, cells: int = 5) -> Seeded:
    """One slide (image + overlay in storage) with an attempt, a result and cells, written to the database."""
    storage = storage_from_settings()
    tag = secrets.token_hex(4)
    key = f"inbox/api-tests/{tag}.png"
    info = storage.put(key, field_png(int(tag, 16)), "image/png")
    overlay_key = f"overlays/api-tests/{tag}.png"
    storage.put(overlay_key, field_png(int(tag, 16) + 1), "image/png")
    final = status or (SlideStatus.NEEDS_REVIEW if needs_review else SlideStatus.DONE)
    with session_scope() as session:
        specimen = Specimen(accession=f"ACC-{tag}")
        if patient:
            specimen.patient = session.query(Patient).filter_by(pseudo_id=patient).one_or_none() or Patient(
                pseudo_id=patient)
        received = utcnow() - timedelta(days=received_days_ago)
        slide = SlideImage(bucket=storage.bucket, key=key, etag=info.etag, size_bytes=info.size, specimen=specimen,
                           well="A1", dilution="1:160", status=final, received_at=received, updated_at=received,
                           status_reason="decode failed: truncated file" if final is SlideStatus.FAILED else None)
        session.add(slide)
        session.flush()
        if not with_result:
            return Seeded(slide.id, None, key=key, accession=specimen.accession)
        version = session.query(ModelVersion).filter_by(task=ModelTask.CELL_PATTERN, version="test-v1").one_or_none()
        if version is None:
            version = ModelVersion(task=ModelTask.CELL_PATTERN, version="test-v1", stage=ModelStage.PRODUCTION,
                                   artifact_uri="bundled:test", sha256="0" * 64, metrics={"mca": 0.8})
        attempt = AnalysisAttempt(slide_image_id=slide.id, number=1, worker="test@host",
                                  outcome=AttemptOutcome.SUCCEEDED, finished_at=utcnow(), model_versions=[version],
                                  stage_timings_ms={"decode": 12.0, "segment": 340.0, "classify": 95.5})
        session.add(attempt)
        session.flush()
        result = SpecimenResult(attempt_id=attempt.id, slide_image_id=slide.id, intensity_class=intensity,
                                intensity_index=3.2, pattern=pattern, icap_code="AC-2,4,5", confidence=0.71,
                                second_pattern="homogeneous", second_confidence=0.22, cell_count=cells,
                                needs_review=needs_review, review_reason="low confidence" if needs_review else None,
                                overlay_key=overlay_key)
        session.add(result)
        centres = [(48, 48), (48, 160), (150, 80), (180, 190), (110, 220)]
        rows = []
        for i in range(cells):
            cy, cx = centres[i % len(centres)]
            top = CELL_PATTERNS[i % 2].value if pattern not in [p.value for p in CELL_PATTERNS] else pattern
            probs = {p.value: (0.75 if p.value == top else 0.05) for p in CELL_PATTERNS}
            rows.append(Cell(attempt_id=attempt.id, slide_image_id=slide.id, index=i, bbox_x=cx - 24, bbox_y=cy - 24,
                             bbox_w=48, bbox_h=48, centroid_x=float(cx), centroid_y=float(cy), area_px=1250,
                             mean_intensity=150.0, probabilities=probs, predicted_pattern=top, confidence=0.75,
                             mitotic=i == 4))
        session.add_all(rows)
        session.flush()
        return Seeded(slide.id, result.id, [c.id for c in rows], key, specimen.accession)


@pytest.fixture(scope="session")
def specimen(api_env: dict[str, str]) -> Seeded:
    """A shared, analysed specimen that needs review (tests may add reviews to it)."""
    return seed_specimen(needs_review=True, patient="PSEUDO-shared")


@pytest.fixture(scope="package", autouse=True)
def no_fake_models_left_in_production(service_env: dict[str, str]) -> Iterator[None]:
    """These tests put model versions without real artefacts into production and leave training runs
    "running" that no worker runs; the database is shared with the worker tests, whose workers would try to
    load those models and whose scheduler would wait for those runs. Archive and cancel them at the end."""
    yield
    from sqlalchemy import or_, update

    from db.models import RunStatus, TrainingRun

    with session_scope() as session:
        session.execute(update(ModelVersion).where(or_(ModelVersion.artifact_uri == "x",
                                                       ModelVersion.artifact_uri == "bundled:test"))
                        .values(stage=ModelStage.ARCHIVED))
        session.execute(update(TrainingRun).where(TrainingRun.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]))
                        .values(status=RunStatus.CANCELLED, error="test fixture"))
