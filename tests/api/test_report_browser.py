"""The specimen report page in Debian's chromium (headless, Playwright), against uvicorn with the real
PostgreSQL and S3: from a specimen to its report (images side by side, titer table, representative cells),
sign-out, the print version (print media and a PDF). Screenshots in the test's tmp dir and
``$HEP2_TEST_ARTEFACTS`` when set."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import update

from db.models import SlideImage, SpecimenResult
from db.session import session_scope
from tests.api.conftest import SentTasks, seed_specimen
from tests.api.test_browser import Shots, base_url, browser, wait_until  # noqa: F401 (fixtures: uvicorn and chromium)


def seed_series() -> tuple[str, list[int]]:
    """Three analysed wells of one accession at 1:80, 1:160 (speckled) and 1:320 (negative)."""
    seeded = [seed_specimen(pattern="speckled", patient="PSEUDO-report-page"),
              seed_specimen(pattern="speckled", patient="PSEUDO-report-page"),
              seed_specimen(pattern="negative", intensity="negative", patient="PSEUDO-report-page")]
    accession = seeded[0].accession
    with session_scope() as session:
        specimen_id = session.get(SlideImage, seeded[0].slide_id).specimen_id
        for item, (well, dilution) in zip(seeded, [("A1", "1:80"), ("A2", "1:160"), ("A3", "1:320")], strict=True):
            session.execute(update(SlideImage).where(SlideImage.id == item.slide_id)
                            .values(specimen_id=specimen_id, well=well, dilution=dilution))
        session.execute(update(SpecimenResult).where(SpecimenResult.id == seeded[2].result_id)
                        .values(second_pattern=None, icap_code="AC-0"))
    return accession, [s.slide_id for s in seeded]


def test_report_page_sign_out_and_print(base_url: str, browser: object, keys: dict[str, str],  # noqa: F811
                                        sent: SentTasks, tmp_path: Path) -> None:
    shots = Shots(tmp_path)
    accession, slides = seed_series()
    page = browser.new_page(viewport={"width": 1360, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{base_url}/")
        page.fill("#apikey", keys["reviewer"])
        page.click("#login")
        page.wait_for_selector("#worklist")
        page.goto(f"{base_url}/dashboard/#/specimen/{slides[0]}")
        page.click("#report-link")  # specimen page -> its accession's report
        page.wait_for_selector("#titer-table")
        wait_until(page, "document.querySelectorAll('#images img').length === 3")
        wait_until(page, "document.querySelectorAll('#cells canvas').length > 0")
        assert page.inner_text("#report-accession") == accession
        assert page.inner_text("#report-result") == "positive" and page.inner_text("#report-titer") == "1:160"
        assert "speckled" in page.inner_text("#patterns") and "AC-2,4,5" in page.inner_text("#patterns")
        assert page.inner_text("#report-status") == "draft"
        page.wait_for_timeout(300)  # the cell thumbnails are drawn when the overlays have loaded
        shots(page, "1-report-draft")

        page.click("#sign-out")
        wait_until(page, "document.querySelector('#report-status')?.innerText === 'final'")
        assert "Signed out by test-reviewer" in page.inner_text("#signed-out")
        assert "pending" in page.inner_text("#lis") and page.locator("#sign-out").count() == 0
        assert [name for name, *_ in sent] == ["hep2.send_to_lis"]  # queued for the LIS
        page.click("#show-hl7")
        wait_until(page, "document.querySelector('#message')?.innerText.includes('ORU^R01')")
        shots(page, "2-report-signed-out")

        page.emulate_media(media="print")  # the print stylesheet: no navigation, buttons or sign-out form
        assert not page.locator("header").is_visible() and not page.locator("#show-hl7").is_visible()
        assert "signed out by test-reviewer" in page.inner_text("#print-footer")
        shots(page, "3-report-print")
        page.pdf(path=str(tmp_path / "report.pdf"), format="A4", print_background=True)
        if shots.copy_to:
            shutil.copy2(tmp_path / "report.pdf", shots.copy_to / "report.pdf")

        page.emulate_media(media="screen")  # the list of reports (latest version of each), filtered by status
        page.goto(f"{base_url}/dashboard/report.html#")
        row = page.locator(f"#reports tr[data-accession='{accession}']")
        row.wait_for()
        assert "final" in row.inner_text() and "1:160" in row.inner_text()
        page.select_option("#report-status-filter", "draft")
        row.wait_for(state="detached")
        page.select_option("#report-status-filter", "final")
        row.wait_for()
        shots(page, "4-reports-list")
    except Exception:
        shots(page, "failure")
        raise
    assert errors == []
