"""The slide state machine, the sidecar rules and the settings defaults."""

from __future__ import annotations

import pytest

from db.models import ALLOWED_TRANSITIONS, InvalidTransitionError, SlideImage, SlideStatus
from hep2.settings import Settings
from hep2.vocabulary import CELL_PATTERNS, ICAP_CODES, Pattern, parse_pattern
from workers.ingest import Sidecar


def slide(status: SlideStatus) -> SlideImage:
    return SlideImage(bucket="b", key="k", etag="e", size_bytes=1, status=status)


def test_happy_path_stamps_timestamps() -> None:
    s = slide(SlideStatus.RECEIVED)
    for to in (SlideStatus.QUEUED, SlideStatus.RUNNING, SlideStatus.DONE):
        s.transition(to)
    assert s.status is SlideStatus.DONE
    assert s.queued_at and s.started_at and s.finished_at and s.queued_at <= s.started_at <= s.finished_at


def test_requeue_clears_run_timestamps() -> None:
    s = slide(SlideStatus.RECEIVED)
    s.transition(SlideStatus.QUEUED)
    s.transition(SlideStatus.RUNNING)
    s.transition(SlideStatus.FAILED, "S3 unreachable after 8 retries")
    assert s.status_reason == "S3 unreachable after 8 retries"
    s.transition(SlideStatus.QUEUED)
    assert s.started_at is None and s.finished_at is None and s.status_reason is None


@pytest.mark.parametrize(("start", "to"), [
    (SlideStatus.RECEIVED, SlideStatus.DONE),
    (SlideStatus.REJECTED, SlideStatus.QUEUED),
    (SlideStatus.QUEUED, SlideStatus.DONE),
    (SlideStatus.DONE, SlideStatus.RUNNING),
])
def test_illegal_transitions_raise(start: SlideStatus, to: SlideStatus) -> None:
    with pytest.raises(InvalidTransitionError, match=f"{start.value} -> {to.value}"):
        slide(start).transition(to)


def test_every_status_has_a_rule() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(SlideStatus)


def test_sidecar_rejects_names_and_bad_values() -> None:
    good = Sidecar.model_validate({"patient_id": "P-0001", "dilution": "1:160", "exposure_ms": 300})
    assert good.dilution == "1:160"
    for bad in ({"patient_id": "Jane Doe"}, {"dilution": "160"}, {"exposure_ms": -1}, {"well": "x" * 40}):
        with pytest.raises(ValueError):
            Sidecar.model_validate(bad)


def test_embedded_defaults_need_no_server(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "BROKER_URL", "RESULT_BACKEND", "STORAGE_BACKEND"):
        monkeypatch.delenv(f"HEP2_{name}", raising=False)
    settings = Settings(state_dir=tmp_path, _env_file=None)
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.resolved_broker_url == "filesystem://"
    assert settings.resolved_result_backend.startswith("db+sqlite:///")
    assert settings.storage_backend == "local" and settings.resolved_storage_root == (tmp_path / "bucket").resolve()


def test_settings_read_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEP2_DATABASE_URL", "postgresql+psycopg://db/hep2")
    monkeypatch.setenv("HEP2_STORAGE_BACKEND", "s3")
    settings = Settings(_env_file=None)
    assert settings.resolved_database_url == "postgresql+psycopg://db/hep2" and settings.storage_backend == "s3"
    monkeypatch.setenv("HEP2_STORAGE_BACKEND", "ftp")
    with pytest.raises(ValueError):
        Settings(_env_file=None)


def test_vocabulary() -> None:
    assert len(CELL_PATTERNS) == 6 and all(p in ICAP_CODES for p in CELL_PATTERNS)
    assert parse_pattern("NuMem") is Pattern.NUCLEAR_MEMBRANE and parse_pattern("golgi") is Pattern.GOLGI
    with pytest.raises(ValueError, match="unknown cell pattern"):
        parse_pattern("cytoplasmic")


def test_readme_documents_every_setting() -> None:
    from tests.conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    missing = [f"HEP2_{name.upper()}" for name in Settings.model_fields if f"`HEP2_{name.upper()}`" not in readme]
    assert missing == [], f"README's settings table lacks {missing}"
