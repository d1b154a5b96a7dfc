"""Specimens (filters, keyset pagination, detail, cells), review semantics, presigned URLs, metrics, errors."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from api.app import create_app
from db.base import utcnow
from db.models import Cell, Review, SlideStatus, SpecimenResult
from db.session import session_scope
from hep2.settings import get_settings
from hep2.storage import storage_from_settings
from tests.api.conftest import Seeded, auth, seed_specimen

pytestmark = pytest.mark.integration


def pages(client: TestClient, key: str, **params: object) -> list[list[dict]]:
    out, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/specimens", params=query, headers=auth(key)).json()
        out.append(body["items"])
        cursor = body["next_cursor"]
        if not cursor:
            return out


def test_filters_and_cursor_pagination(client: TestClient, keys: dict[str, str]) -> None:
    patient = f"P-{secrets.token_hex(3)}"
    seeded = [seed_specimen(pattern=p, intensity=i, needs_review=n, patient=patient, received_days_ago=d)
              for p, i, n, d in [("speckled", "positive", False, 0), ("homogeneous", "positive", True, 1),
                                 ("centromere", "intermediate", False, 2), ("speckled", "negative", True, 3),
                                 ("negative", "negative", False, 4), ("golgi", "positive", False, 5),
                                 ("speckled", "positive", False, 6)]]
    viewer = keys["viewer"]
    got = pages(client, viewer, patient=patient, limit=3)
    assert [len(p) for p in got] == [3, 3, 1]
    ids = [s["id"] for p in got for s in p]
    # needs review (unreviewed) first, then newest first; no duplicates across pages
    assert ids == [seeded[i].slide_id for i in (1, 3, 0, 2, 4, 5, 6)]

    def ids_for(**params: object) -> set[int]:
        return {s["id"] for p in pages(client, viewer, patient=patient, **params) for s in p}

    assert ids_for(pattern="speckled") == {seeded[i].slide_id for i in (0, 3, 6)}
    assert ids_for(pattern=["golgi", "centromere"]) == {seeded[i].slide_id for i in (2, 5)}
    assert ids_for(intensity="negative") == {seeded[i].slide_id for i in (3, 4)}
    assert ids_for(needs_review="true") == {seeded[i].slide_id for i in (1, 3)}
    assert ids_for(status="needs_review") == {seeded[i].slide_id for i in (1, 3)}
    items = pages(client, viewer, patient=patient)[0]
    middle = items[3]["received_at"]
    assert ids_for(received_to=middle) == {seeded[i].slide_id for i in (3, 4, 5, 6)}
    assert ids_for(received_from=middle) == {seeded[i].slide_id for i in (0, 1, 2)}
    assert pages(client, viewer, patient="nobody-else") == [[]]
    # a review moves the item out of the needs-review head and changes what the pattern filter sees
    client.post(f"/v1/specimens/{seeded[1].slide_id}/review", json={"action": "correct", "pattern": "speckled"},
                headers=auth(keys["reviewer"]))
    assert ids_for(pattern="speckled") == {seeded[i].slide_id for i in (0, 1, 3, 6)}
    assert [s["id"] for s in pages(client, viewer, patient=patient)[0]][:2] == [seeded[3].slide_id,
                                                                               seeded[0].slide_id]
    for bad in ({"cursor": "!!"}, {"limit": 0}, {"pattern": "bogus"}, {"patient": "has space"}):
        response = client.get("/v1/specimens", params=bad, headers=auth(viewer))
        assert response.status_code in (400, 422) and "Traceback" not in response.text


def test_detail_cells_and_overview(client: TestClient, keys: dict[str, str], specimen: Seeded) -> None:
    detail = client.get(f"/v1/specimens/{specimen.slide_id}", headers=auth(keys["viewer"])).json()
    assert detail["result"]["intensity_index"] == 3.2 and detail["result"]["second_pattern"] == "homogeneous"
    assert detail["model_versions"][0]["version"] == "test-v1"
    assert detail["attempts"][0]["stage_timings_ms"]["segment"] == 340.0
    cells = client.get(f"/v1/specimens/{specimen.slide_id}/cells", headers=auth(keys["viewer"])).json()
    assert len(cells) == 5 and set(cells[0]["probabilities"]) >= {"speckled", "golgi"}
    assert {"bbox_x", "bbox_y", "bbox_w", "bbox_h"} <= set(cells[0])
    overview = client.get("/v1/specimens/overview", headers=auth(keys["viewer"])).json()
    assert overview["total"] >= 1 and overview["per_day"] and overview["per_pattern"]
    assert client.get("/v1/specimens/2147483647", headers=auth(keys["viewer"])).status_code == 404


def test_review_never_overwrites_the_model(client: TestClient, keys: dict[str, str]) -> None:
    seeded = seed_specimen(pattern="speckled", intensity="positive", needs_review=True)
    reviewer = auth(keys["reviewer"])
    url = f"/v1/specimens/{seeded.slide_id}/review"
    body = client.post(url, json={"action": "correct", "pattern": "nucleolar", "comment": "clear nucleoli"},
                       headers=reviewer).json()
    assert body["final"] == {"pattern": "nucleolar", "intensity": "positive", "icap": "AC-8,9,10"}
    assert body["result"]["pattern"] == "speckled"  # the model's own output is still there
    body = client.post(url, json={"action": "correct", "intensity": "intermediate"}, headers=reviewer).json()
    assert body["final"] == {"pattern": "nucleolar", "intensity": "intermediate", "icap": "AC-8,9,10"}
    body = client.post(url, json={"action": "confirm"}, headers=reviewer).json()
    assert body["final"] == {"pattern": "nucleolar", "intensity": "intermediate", "icap": "AC-8,9,10"}
    assert client.post(url, json={"action": "correct"}, headers=reviewer).status_code == 422
    assert client.post(url, json={"action": "correct", "pattern": "plaid"}, headers=reviewer).status_code == 422
    cell_id = seeded.cell_ids[0]
    assert client.post(f"/v1/cells/{cell_id}/review", json={"pattern": "golgi"},
                       headers=reviewer).json()["final_pattern"] == "golgi"
    with session_scope() as session:
        result = session.get(SpecimenResult, seeded.result_id)
        assert (result.pattern, result.intensity_class) == ("speckled", "positive")
        assert session.get(Cell, cell_id).predicted_pattern != "golgi"
        reviews = session.scalars(select(Review).where((Review.specimen_result_id == seeded.result_id)
                                                       | (Review.cell_id == cell_id)).order_by(Review.id)).all()
        assert [(r.field, r.old_value, r.new_value) for r in reviews] == [
            ("pattern", "speckled", "nucleolar"), ("icap", "AC-2,4,5", "AC-8,9,10"),
            ("intensity", "positive", "intermediate"),
            ("pattern", "nucleolar", "nucleolar"), ("icap", "AC-8,9,10", "AC-8,9,10"),
            ("intensity", "intermediate", "intermediate"),
            ("cell_pattern", reviews[-1].old_value, "golgi")]
        assert all(r.reviewer == "test-reviewer" and r.created_at for r in reviews)
    cells = client.get(f"/v1/specimens/{seeded.slide_id}/cells", headers=auth(keys["viewer"])).json()
    assert next(c for c in cells if c["id"] == cell_id)["reviewed"] is True
    history = client.get(f"/v1/specimens/{seeded.slide_id}/reviews", headers=auth(keys["viewer"])).json()
    assert len(history) == 7


def test_corrections_take_icap_codes_and_cell_corrections_can_be_undone(client: TestClient,
                                                                         keys: dict[str, str]) -> None:
    seeded = seed_specimen(pattern="speckled", intensity="positive", needs_review=True)
    reviewer, viewer = auth(keys["reviewer"]), auth(keys["viewer"])
    url = f"/v1/specimens/{seeded.slide_id}/review"
    body = client.post(url, json={"action": "correct", "icap": ["AC-21"]}, headers=reviewer).json()
    assert body["final"] == {"pattern": "other", "intensity": "positive", "icap": "AC-21"}  # cytoplasmic: other
    assert body["item"]["icap"] == "AC-21" and body["item"]["model_icap"] == "AC-2,4,5"
    body = client.post(url, json={"action": "correct", "icap": ["AC-1", "AC-22"]}, headers=reviewer).json()
    assert body["final"]["pattern"] == "homogeneous" and body["final"]["icap"] == "AC-1+AC-22"  # mixed
    body = client.post(url, json={"action": "correct", "pattern": "nucleolar"}, headers=reviewer).json()
    assert body["final"]["icap"] == "AC-8,9,10"  # the code follows a pattern-only correction too
    listed = client.get("/v1/specimens", params={"accession": body["item"]["accession"]}, headers=viewer).json()
    assert [(i["id"], i["icap"], i["pattern"]) for i in listed["items"]] == [(seeded.slide_id, "AC-8,9,10",
                                                                              "nucleolar")]
    assert listed["items"][0]["file_name"] == seeded.key.rsplit("/", 1)[-1]
    assert listed["items"][0]["review_reason"] == "low confidence"
    for bad in ({"icap": ["AC-99"]}, {"icap": ["AC-1", "AC-1"]}, {"icap": ["AC-1"], "pattern": "golgi"},
                {"icap": ["AC-1", "AC-2", "AC-3"]}):
        assert client.post(url, json={"action": "correct", **bad}, headers=reviewer).status_code == 422, bad
    # a cell: "not a cell", then undo: back to the model's call, the history keeps both, marked
    cell_id = seeded.cell_ids[1]
    predicted = client.get(f"/v1/specimens/{seeded.slide_id}/cells", headers=viewer).json()[1]["final_pattern"]
    out = client.post(f"/v1/cells/{cell_id}/review", json={"pattern": "not_a_cell"}, headers=reviewer).json()
    assert out["final_pattern"] == "not_a_cell" and out["review_id"]
    undone = client.post(f"/v1/reviews/{out['review_id']}/undo", headers=reviewer)
    assert undone.status_code == 200 and undone.json()["undone_by"] == "test-reviewer"
    assert client.post(f"/v1/reviews/{out['review_id']}/undo", headers=reviewer).status_code == 409
    assert client.post(f"/v1/reviews/{out['review_id']}/undo", headers=viewer).status_code == 403
    cell = next(c for c in client.get(f"/v1/specimens/{seeded.slide_id}/cells", headers=viewer).json()
                if c["id"] == cell_id)
    assert (cell["final_pattern"], cell["reviewed"], cell["review_id"]) == (predicted, False, None)
    detail = client.get(f"/v1/specimens/{seeded.slide_id}", headers=viewer).json()
    cell_reviews = [r for r in detail["reviews"] if r["cell_id"] == cell_id]
    assert [(r["new_value"], r["undone_at"] is not None) for r in cell_reviews] == [("not_a_cell", True)]
    # aware UTC everywhere: every timestamp the API returns carries an offset
    for stamp in (detail["item"]["received_at"], detail["result"]["created_at"], cell_reviews[0]["created_at"],
                  cell_reviews[0]["undone_at"]):
        assert stamp.endswith(("Z", "+00:00")), stamp


def test_undone_and_non_class_cell_reviews_are_not_training_labels(keys: dict[str, str]) -> None:
    from training.snapshot import reviewed_cells

    seeded = seed_specimen(pattern="speckled")
    with session_scope() as session:
        labels = ["golgi", "not_a_cell", "other", "centromere"]
        rows = [Review(cell_id=c, reviewer="r", field="cell_pattern", new_value=v)
                for c, v in zip(seeded.cell_ids, labels, strict=False)]
        session.add_all(rows)
        session.flush()
        rows[3].undone_at = rows[3].created_at or utcnow()
    got = {c.cell_id: c.label for c in reviewed_cells_of(seeded.cell_ids, reviewed_cells)}
    assert got == {seeded.cell_ids[0]: "golgi"}


def reviewed_cells_of(cell_ids: list[int], reader: object) -> list:
    with session_scope() as session:
        return [c for c in reader(session) if c.cell_id in cell_ids]  # type: ignore[operator]


def test_rerun_refuses_rejected_input(client: TestClient, keys: dict[str, str], sent: list) -> None:
    seeded = seed_specimen(status=SlideStatus.REJECTED, with_result=False)
    response = client.post(f"/v1/jobs/{seeded.slide_id}/rerun", headers=auth(keys["ops"]))
    assert response.status_code == 409 and sent == []
    jobs = client.get("/v1/jobs", headers=auth(keys["viewer"])).json()
    assert seeded.slide_id in {j["slide_id"] for j in jobs}
    assert set(client.get("/v1/queues", headers=auth(keys["viewer"])).json()) == {"gpu", "cpu", "training", "lis"}


def test_presigned_overlay_url_over_s3(client: TestClient, keys: dict[str, str], specimen: Seeded) -> None:
    detail = client.get(f"/v1/specimens/{specimen.slide_id}", headers=auth(keys["viewer"])).json()
    assert "Expires=" in detail["overlay_url"] or "X-Amz-Expires" in detail["overlay_url"]
    response = httpx.get(detail["overlay_url"])
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")


def test_presigned_url_in_embedded_mode(api_env: dict[str, str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEP2_STORAGE_BACKEND", "local")
    monkeypatch.setenv("HEP2_STORAGE_ROOT", str(tmp_path))
    get_settings.cache_clear()
    try:
        storage = storage_from_settings()
        storage.put("overlays/x/attempt 1.png", b"\x89PNG local")
        url = storage.presigned_url("overlays/x/attempt 1.png", 60)
        local = TestClient(create_app(), raise_server_exceptions=False)
        response = local.get(url)
        assert response.status_code == 200 and response.content == b"\x89PNG local"
        assert response.headers["content-type"] == "image/png"
        assert local.get(url.replace("signature=", "signature=0")).status_code in (403, 422)
        tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
        assert local.get(tampered).status_code == 403
        expired = storage.presigned_url("overlays/x/attempt 1.png", -5)
        assert local.get(expired).status_code == 403
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_metrics_format(client: TestClient, specimen: Seeded) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["hep2_slides"].type == "gauge"
    statuses = {s.labels["status"]: s.value for s in families["hep2_slides"].samples}
    assert set(statuses) == {s.value for s in SlideStatus} and statuses["needs_review"] >= 1
    latency = families["hep2_stage_latency_seconds"]
    assert latency.type == "histogram"
    counts = {s.labels["stage"]: s.value for s in latency.samples if s.name.endswith("_count")}
    assert counts["segment"] >= 1
    assert {s.labels["queue"] for s in families["hep2_queue_depth"].samples} == {"gpu", "cpu", "training", "lis"}


def test_errors_are_generic(api_env: dict[str, str], keys: dict[str, str]) -> None:
    app = create_app()

    @app.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    response = TestClient(app, raise_server_exceptions=False).get("/v1/boom")
    assert response.status_code == 500
    assert response.json()["detail"] == "internal server error" and len(response.json()["error_id"]) == 12
    assert "secret" not in response.text and "Traceback" not in response.text


def test_dashboard_is_served(client: TestClient) -> None:
    assert client.get("/", follow_redirects=False).headers["location"] == "/dashboard/"
    page = client.get("/dashboard/")
    assert page.status_code == 200 and "app.js" in page.text
    assert client.get("/openapi.json").json()["components"]["securitySchemes"]


def test_api_docs_are_served_without_a_cdn(client: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200
        assert "cdn" not in page.text.lower() and "https://" not in page.text.split("<body")[-1], path
        for src in (s.split('"')[0] for s in page.text.split('src="')[1:]):
            assert src.startswith("/") and client.get(src).status_code == 200, src
