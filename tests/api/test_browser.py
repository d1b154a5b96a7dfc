"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright, against uvicorn on
localhost with the real PostgreSQL and S3 (moto). Log in with a key, find a specimen by accession and open it
from the keyboard, check that the cell boxes sit on the image (also zoomed), correct the result with an ICAP
code, correct a cell and undo it, see the models page (card metrics, promote dialog) and the training page.
Screenshots go to the test's tmp dir and, if ``HEP2_TEST_ARTEFACTS`` is set, to that folder too
(install: ``apt-get install -y chromium``)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn

from api.app import create_app
from db.base import utcnow
from db.models import FoldMetrics, ModelStage, ModelTask, ModelVersion, RunStatus, SlideStatus, TrainingRun
from db.session import session_scope
from tests.api.conftest import Seeded, seed_specimen
from tests.conftest import free_port

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
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


class Shots:
    """Screenshots under the test's tmp dir, copied to ``$HEP2_TEST_ARTEFACTS`` when it is set."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.copy_to = Path(os.environ["HEP2_TEST_ARTEFACTS"]) if os.environ.get("HEP2_TEST_ARTEFACTS") else None

    def __call__(self, page: object, name: str) -> None:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        if self.copy_to:
            self.copy_to.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, self.copy_to / path.name)


def _models_and_runs() -> None:
    """A candidate with a training run (folds, confusion), the bundled classifier (metrics only in its card) and
    a run queued long ago that no training worker took."""
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
        session.add(ModelVersion(task=ModelTask.CELL_PATTERN, version="bundled-card", stage=ModelStage.CANDIDATE,
                                 artifact_uri="x", sha256="1" * 64, metrics={}))
        session.add(TrainingRun(task=ModelTask.CELL_PATTERN, trigger="api", status=RunStatus.QUEUED,
                                requested_by="key:ops", created_at=utcnow() - timedelta(minutes=2)))
    with session_scope() as session:  # the bundled weights' card, read by the API (the fixture archives "x")
        version = session.query(ModelVersion).filter_by(version="bundled-card").one()
        version.artifact_uri = "bundled:cells-default.safetensors"


def test_log_in_open_correct_and_see_the_change(base_url: str, browser: object, keys: dict[str, str],
                                                 tmp_path: Path) -> None:
    shots = Shots(tmp_path)
    target: Seeded = seed_specimen(pattern="speckled", intensity="positive", needs_review=True,
                                   patient="PSEUDO-browser")
    seed_specimen(pattern="homogeneous", patient="PSEUDO-browser-2")
    seed_specimen(status=SlideStatus.FAILED, with_result=False)
    _models_and_runs()
    page = browser.new_page(viewport={"width": 1360, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        walk_through(page, base_url, keys, target, shots)
    except Exception:
        shots(page, "failure")
        raise
    finally:
        with session_scope() as session:  # leave no bundled-card candidate for the worker tests
            session.query(ModelVersion).filter_by(version="bundled-card").update({"stage": ModelStage.ARCHIVED})
    assert errors == []


def box_offsets(page: object, cell_id: int) -> dict[str, float]:
    """Where the cell's SVG box is drawn vs. where its bbox lies on the displayed image (CSS px)."""
    return page.evaluate("""(id) => {
        const img = document.querySelector('#field-image').getBoundingClientRect();
        const svg = document.querySelector('#cell-boxes');
        const [, , w, h] = svg.getAttribute('viewBox').split(' ').map(Number);
        const rect = document.querySelector(`#cell-boxes rect[data-cell='${id}']`);
        const box = rect.getBoundingClientRect();
        const sx = img.width / w, sy = img.height / h;
        const x = Number(rect.getAttribute('x')), y = Number(rect.getAttribute('y'));
        return {dx: box.left - (img.left + x * sx), dy: box.top - (img.top + y * sy),
                dw: box.width - Number(rect.getAttribute('width')) * sx, viewbox_w: w,
                right: box.right - img.right, bottom: box.bottom - img.bottom};
    }""", cell_id)  # type: ignore[attr-defined]


def wait_until(page: object, expression: str, timeout_s: float = 30.0) -> None:
    """Poll a JavaScript condition with page.evaluate (DevTools evaluation): the dashboard's CSP forbids
    the eval that Playwright's string predicates (wait_for_function) need, and the test keeps the CSP on."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(f"() => Boolean({expression})"):  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout_s} s: {expression}")
        time.sleep(0.1)


def walk_through(page: object, base_url: str, keys: dict[str, str], target: Seeded, shots: Shots) -> None:
    page.goto(f"{base_url}/")
    page.fill("#apikey", keys["reviewer"])
    page.click("#login")
    page.wait_for_selector(f"#worklist tr[data-id='{target.slide_id}']")
    wait_until(page, "document.querySelectorAll('.chip').length > 1")  # the overview counts
    row = page.locator(f"#worklist tr[data-id='{target.slide_id}']")
    text = row.inner_text()
    assert target.key.rsplit("/", 1)[-1] in text and "A1" in text and "1:160" in text and "AC-2,4,5" in text
    assert "low confidence" in text  # the review reason
    shots(page, "1-worklist")
    # filter by accession, then open the row from the keyboard (Tab to it, Enter)
    accession = page.locator(f"#worklist tr[data-id='{target.slide_id}'] td").nth(1).inner_text()
    page.fill("#filter-accession", accession)
    page.click("#filter")
    wait_until(page, "document.querySelectorAll('#worklist tbody tr').length === 1")
    page.focus("#filter")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.id") == str(target.slide_id)
    page.keyboard.press("Enter")
    page.wait_for_selector("#gallery canvas")
    assert page.url.endswith(f"#/specimen/{target.slide_id}")
    wait_until(page, "document.querySelectorAll('#gallery canvas').length === 5")
    wait_until(page, "document.querySelectorAll('#cell-boxes rect').length === 5")
    assert page.inner_text("#final-pattern") == "speckled" and page.inner_text("#final-icap") == "AC-2,4,5"
    assert "fluorescence index" in page.inner_text("#fluorescence-index")
    assert "fixed scale" in page.inner_text("#view-caption")
    # the boxes lie on the image (not shifted by the card's padding), also when zoomed in
    for cell_id in target.cell_ids:
        off = box_offsets(page, cell_id)
        assert off["viewbox_w"] == 256 and abs(off["dx"]) < 1.5 and abs(off["dy"]) < 1.5 and abs(off["dw"]) < 1.5, off
        assert off["right"] < 1 and off["bottom"] < 1, off
    shots(page, "2-specimen")
    page.click("#zoom-in")
    page.click("#zoom-in")
    assert page.inner_text("#zoom-level") == "2×"
    off = box_offsets(page, target.cell_ids[0])
    assert abs(off["dx"]) < 1.5 and abs(off["dy"]) < 1.5, off
    assert page.evaluate("document.querySelector('#field').getBoundingClientRect().width") > \
        1.9 * page.evaluate("document.querySelector('#viewer').clientWidth")
    shots(page, "3-zoomed")
    page.click("#view-stretched")
    wait_until(page, "document.querySelector('#view-caption').innerText.includes('NOT comparable')")
    page.click("#zoom-out")
    page.click("#zoom-out")
    # correct the result with an ICAP code: the code follows everywhere
    page.select_option("#correct-icap", "AC-8")
    page.select_option("#correct-intensity", "intermediate")
    page.fill("#comment", "nucleoli clearly stained")
    page.click("#save-correction")
    wait_until(page, "document.querySelector('#final-pattern')?.innerText === 'nucleolar'")
    assert page.inner_text("#final-icap") == "AC-8"
    assert page.inner_text("#final-intensity") == "intermediate"
    assert "nucleoli clearly stained" in page.inner_text("#review")
    shots(page, "4-corrected")
    # a cell: choosing a label does not save it; Save does; Undo takes it back; the history shows both
    page.wait_for_selector("#gallery canvas")
    cell = target.cell_ids[0]
    page.select_option(f"select[data-cell='{cell}']", "not_a_cell")
    history_before = page.locator("#review-history tr").count()
    assert page.locator("#review-history td", has_text="cell #").count() == 0  # nothing recorded yet
    page.click(f"button[data-save='{cell}']")
    page.wait_for_selector(f"button[data-undo='{cell}']")
    assert "not a cell ✓" in page.inner_text(f"[data-cell-label='{cell}']")
    wait_until(page, f"document.querySelectorAll('#review-history tr').length === {history_before + 1}")
    assert "cell #0" in page.inner_text("#review-history")
    shots(page, "5-cell-corrected")
    page.click(f"button[data-undo='{cell}']")
    wait_until(page, f"!document.querySelector(\"button[data-undo='{cell}']\")")
    assert "model:" in page.inner_text(f"[data-cell-label='{cell}']")
    page.wait_for_selector("#review-history tr.undone")
    assert "undone by test-reviewer" in page.inner_text("#review-history")
    shots(page, "6-cell-undone")
    page.goto(f"{base_url}/dashboard/#/worklist")
    row = page.locator(f"#worklist tr[data-id='{target.slide_id}']")
    row.wait_for()
    assert "nucleolar" in row.inner_text() and "reviewed" in row.inner_text() and "AC-8" in row.inner_text()
    # an ops key: models (card metrics of the bundled model, promote dialog), training, failures
    page.evaluate("sessionStorage.clear()")
    page.goto(f"{base_url}/dashboard/#/login")
    page.fill("#apikey", keys["ops"])
    page.click("#login")
    page.wait_for_selector("#worklist")
    page.goto(f"{base_url}/dashboard/#/models")
    page.get_by_text("bundled-card").click()
    wait_until(page, "document.querySelector('#model-detail h2')?.innerText.includes('bundled-card')")
    page.wait_for_selector("#fold-chart rect")
    page.wait_for_selector("#confusion")
    assert page.inner_text("#model-mca").startswith("0.8")
    assert page.locator("#fold-chart rect").count() == 5
    shots(page, "7-models-card")
    page.get_by_text("browser-cand").click()
    wait_until(page, "document.querySelector('#model-detail h2')?.innerText.includes('browser-cand')")
    page.wait_for_selector("#fold-chart rect")
    page.locator("tr[data-version] button", has_text="Promote").first.click()
    page.wait_for_selector("#promote-dialog[open]")
    shots(page, "8-promote-dialog")
    page.click("#promote-cancel")
    wait_until(page, "!document.querySelector('#promote-dialog')")
    with session_scope() as session:
        stages = {v.version: v.stage for v in session.query(ModelVersion).filter(
            ModelVersion.version.in_(["browser-cand", "bundled-card"]))}
    assert stages == {"browser-cand": ModelStage.CANDIDATE, "bundled-card": ModelStage.CANDIDATE}  # Cancel: nothing
    page.goto(f"{base_url}/dashboard/#/training")
    page.wait_for_selector(".progress")
    assert page.eval_on_selector_all("#training-task option", "os => os.map(o => o.value)") == ["cell_pattern"]
    page.wait_for_selector("#worker-hint:not([hidden])")
    assert "hep2 worker -Q training" in page.inner_text("#worker-hint")
    shots(page, "9-training")
    page.goto(f"{base_url}/dashboard/#/failures")
    page.wait_for_selector("#failures button")
    shots(page, "10-failures")
