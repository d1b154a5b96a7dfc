"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright, against uvicorn on
localhost with the real PostgreSQL and S3 (moto). Log in with a key, open a specimen, correct it, see the
change. Screenshots go to test-artifacts/ (install: ``apt-get install -y chromium``)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from api.app import create_app
from db.models import FoldMetrics, ModelStage, ModelTask, ModelVersion, RunStatus, SlideStatus, TrainingRun
from db.session import session_scope
from tests.api.conftest import Seeded, seed_specimen
from tests.conftest import REPO_ROOT, free_port

expect = pytest.importorskip("playwright.sync_api", reason="pip install playwright").expect

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "dashboard"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def base_url(api_env: dict[str, str]) -> Iterator[str]:
    """The API served by uvicorn on a free localhost port, in a thread of this process."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install -y chromium); skipping the browser test")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def _model_with_folds() -> None:
    with session_scope() as session:
        run = TrainingRun(task=ModelTask.CELL_PATTERN, trigger="api", status=RunStatus.RUNNING, folds=3,
                          current_fold=2, current_epoch=4, progress_pct=55.0, requested_by="key:ops")
        session.add(run)
        session.flush()
        labels = ["homogeneous", "speckled", "nucleolar", "centromere", "nuclear_membrane", "golgi"]
        for fold, mca in enumerate((0.78, 0.83, 0.8)):
            matrix = [[30 if i == j else 2 for j in range(6)] for i in range(6)]
            session.add(FoldMetrics(run_id=run.id, fold=fold, mean_class_accuracy=mca, accuracy=mca + 0.02,
                                    metrics={"confusion": {"labels": labels, "matrix": matrix}}, test_groups=[fold],
                                    finished_at=run.created_at))
        session.add(ModelVersion(task=ModelTask.CELL_PATTERN, version="browser-cand", stage=ModelStage.CANDIDATE,
                                 artifact_uri="x", sha256="0" * 64, metrics={"mca": 0.8}, training_run_id=run.id))


def test_log_in_open_correct_and_see_the_change(base_url: str, browser: object, keys: dict[str, str]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target: Seeded = seed_specimen(pattern="speckled", intensity="positive", needs_review=True,
                                   patient="PSEUDO-browser")
    seed_specimen(pattern="homogeneous", patient="PSEUDO-browser-2")
    seed_specimen(status=SlideStatus.FAILED, with_result=False)
    _model_with_folds()
    page = browser.new_page(viewport={"width": 1360, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        walk_through(page, base_url, keys, target)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        raise
    assert errors == []


def walk_through(page: object, base_url: str, keys: dict[str, str], target: Seeded) -> None:
    page.goto(f"{base_url}/")
    page.fill("#apikey", keys["reviewer"])
    page.click("#login")
    page.wait_for_selector(f"#worklist tr[data-id='{target.slide_id}']")
    # locator waits, not wait_for_function: the dashboard's CSP forbids the eval a string predicate needs
    expect(page.locator(".chip").nth(1)).to_be_attached()  # the overview counts
    page.screenshot(path=str(ARTIFACTS / "1-worklist.png"), full_page=True)
    assert page.locator("#worklist tbody tr").first.get_attribute("data-id")  # needs-review first
    page.click(f"#worklist tr[data-id='{target.slide_id}']")
    page.wait_for_selector("#gallery canvas")
    expect(page.locator("#gallery canvas")).to_have_count(5)
    assert page.inner_text("#final-pattern") == "speckled"
    page.screenshot(path=str(ARTIFACTS / "2-specimen.png"), full_page=True)
    page.select_option("#correct-pattern", "nucleolar")
    page.select_option("#correct-intensity", "intermediate")
    page.fill("#comment", "nucleoli clearly stained")
    page.click("#save-correction")
    expect(page.locator("#final-pattern")).to_have_text("nucleolar")
    assert page.inner_text("#final-intensity") == "intermediate"
    assert "nucleoli clearly stained" in page.inner_text("#review")
    page.screenshot(path=str(ARTIFACTS / "3-corrected.png"), full_page=True)
    page.goto(f"{base_url}/dashboard/#/worklist")
    row = page.locator(f"#worklist tr[data-id='{target.slide_id}']")
    row.wait_for()
    assert "nucleolar" in row.inner_text() and "reviewed" in row.inner_text()
    # an ops key sees the models page (fold chart, confusion matrix), training progress and failures
    page.evaluate("sessionStorage.clear()")
    page.goto(f"{base_url}/dashboard/#/login")
    page.fill("#apikey", keys["ops"])
    page.click("#login")
    page.wait_for_selector("#worklist")
    page.goto(f"{base_url}/dashboard/#/models")
    page.get_by_text("browser-cand").click()
    page.wait_for_selector("#fold-chart rect")
    page.wait_for_selector("#confusion")
    page.screenshot(path=str(ARTIFACTS / "4-models.png"), full_page=True)
    page.goto(f"{base_url}/dashboard/#/training")
    page.wait_for_selector(".progress")
    page.screenshot(path=str(ARTIFACTS / "5-training.png"), full_page=True)
    page.goto(f"{base_url}/dashboard/#/failures")
    page.wait_for_selector("#failures button")
    page.screenshot(path=str(ARTIFACTS / "6-failures.png"), full_page=True)
