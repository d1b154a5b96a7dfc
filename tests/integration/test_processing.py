"""Upload-triggered processing on real services: events -> worker -> results in PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from db.models import AnalysisAttempt, ModelVersion, SlideImage, SlideStatus
from db.session import session_scope
from hep2.settings import get_settings
from hep2.storage import storage_from_settings
from tests.integration import uploads as up
from workers.celery_app import create_celery_app
from workers.jobs import succeeded_timings

pytestmark = pytest.mark.integration


@pytest.fixture
def api(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("HEP2_WEBHOOK_TOKEN", up.WEBHOOK_TOKEN)
    get_settings.cache_clear()
    yield TestClient(create_app())
    monkeypatch.undo()
    get_settings.cache_clear()


def test_twenty_uploads_sent_twice_give_twenty_results(api: TestClient, celery_worker: str) -> None:
    storage = storage_from_settings()
    uploads = up.upload(storage, ((f"inbox/batch20/field-{i:02d}.png", up.small_field(i)) for i in range(20)))
    up.send_events(api, storage.bucket, uploads)
    up.send_events(api, storage.bucket, dict(reversed(uploads.items())))  # every event again, out of order

    final = up.wait_final(list(uploads))
    assert set(final.values()) <= {"done", "needs_review"}, final
    counts = up.counts(list(uploads))
    assert counts["slides"] == 20 and counts["results"] == 20 and counts["cells"] > 20 * 3, counts
    with session_scope() as session:
        attempts = session.scalars(select(AnalysisAttempt).join(SlideImage)
                                   .where(SlideImage.key.in_(list(uploads)))).all()
        assert len(attempts) == 20  # no second analysis
        assert all(a.stage_timings_ms and "segment" in a.stage_timings_ms for a in attempts)
        assert all(len(a.model_versions) == 2 for a in attempts)
        assert {mv.task.value for mv in session.scalars(select(ModelVersion))} >= {"segmentation", "cell_pattern"}
        segmenter = next(mv for mv in attempts[0].model_versions if mv.task.value == "segmentation")
        if segmenter.parameters.get("name") == "classical":  # identified by its settings (no weights file)
            assert segmenter.version.startswith("classical-") and "dot_radius" in segmenter.parameters["params"]


def test_sweep_finds_uploads_whose_events_were_dropped(api: TestClient, celery_worker: str) -> None:
    storage = storage_from_settings()
    with_events = up.upload(storage, ((f"inbox/dropped/ok-{i}.png", up.small_field(i)) for i in range(3)))
    without = up.upload(storage, ((f"inbox/dropped/lost-{i}.png", up.small_field(i + 3)) for i in range(5)))
    up.send_events(api, storage.bucket, with_events)
    up.wait_final(list(with_events))
    assert up.statuses(without) == {}

    create_celery_app().send_task("hep2.sweep_inbox").get(timeout=60)

    final = up.wait_final(list(without))
    assert set(final.values()) <= {"done", "needs_review"}
    assert up.counts(list(without))["results"] == 5


def test_bad_uploads_are_rejected_with_reasons_and_good_ones_still_run(api: TestClient, celery_worker: str) -> None:
    storage = storage_from_settings()
    bad = up.upload(storage, ((f"inbox/bad/{name}", data) for name, data in up.bad_inputs().items()))
    good = up.upload(storage, [("inbox/bad/good-1.png", up.small_field(1))])
    up.send_events(api, storage.bucket, {**bad, **good})

    final = up.wait_final([*bad, *good])
    assert {k: final[k] for k in bad} == dict.fromkeys(bad, "rejected")
    assert {final[k] for k in good} <= {"done", "needs_review"}, final
    with session_scope() as session:
        reasons = {s.key.rsplit("/", 1)[-1]: s.status_reason
                   for s in session.scalars(select(SlideImage).where(SlideImage.key.in_(list(bad))))}
    assert all(reason and len(reason) > 10 and "Traceback" not in reason for reason in reasons.values()), reasons
    assert "pixels" in reasons["bomb.png"] or "large" in reasons["bomb.png"], reasons["bomb.png"]
    assert "16-bit" in reasons["sixteen-bit.png"] and "HEP2_ACCEPT_16BIT" in reasons["sixteen-bit.png"]
    with session_scope() as session:  # what hep2 bench reads back: the succeeded attempts' stage times only
        timings = succeeded_timings(session, [*bad, *good])
    assert len(timings) == 1 and {"download", "decode", "segment", "classify"} <= set(timings[0]), timings


def test_failed_job_can_be_rerun_from_the_cli(api: TestClient, celery_worker: str,
                                             service_env: dict[str, str]) -> None:
    storage = storage_from_settings()
    key = "inbox/rerun/field.png"
    up.upload(storage, [(key, up.small_field(4))])
    create_celery_app().send_task("hep2.register_upload", args=[key]).get(timeout=60)
    up.wait_final([key])
    with session_scope() as session:  # arrange: the state a job is left in after its retries ran out
        slide = session.scalar(select(SlideImage).where(SlideImage.key == key))
        slide.status, slide.status_reason = SlideStatus.FAILED, "simulated: S3 unreachable after 5 retries"
        slide_id = slide.id

    listed = subprocess.run([sys.executable, "-m", "cli.main", "jobs", "list", "--status", "failed"],
                            env={**os.environ, **service_env}, capture_output=True, text=True, timeout=60)
    assert key in listed.stdout and "S3 unreachable" in listed.stdout
    rerun = subprocess.run([sys.executable, "-m", "cli.main", "jobs", "rerun", str(slide_id)],
                           env={**os.environ, **service_env}, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr

    assert up.wait_final([key])[key] in {"done", "needs_review"}
    with session_scope() as session:
        attempts = session.scalars(select(AnalysisAttempt).where(AnalysisAttempt.slide_image_id == slide_id)).all()
        assert len(attempts) == 2 and all(a.outcome.value == "succeeded" for a in attempts)
