"""The overlay rendered on first request: checked against the registered image, cached, old rows as they were."""

from __future__ import annotations

import hashlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from analysis.cells import measure_cells
from analysis.decode import decode_upload
from analysis.overlay import overlay_of_upload, render_layer
from analysis.segmentation import ClassicalSegmenter
from db.models import SlideImage, SpecimenResult
from db.session import session_scope
from hep2.storage import ObjectNotFoundError, storage_from_settings
from tests.api.conftest import auth, field_png, seed_specimen

pytestmark = pytest.mark.integration


def seed_with_layer() -> tuple[int, str, str, bytes]:
    """A seeded specimen whose result has an overlay layer, as the worker writes it now (no overlay yet):
    (slide id, image key, overlay key, the overlay layer)."""
    seeded, storage = seed_specimen(), storage_from_settings()
    data = storage.get(seeded.key)
    field = decode_upload(data)
    labels = np.asarray(ClassicalSegmenter().segment(field)).astype(np.int32)
    layer = render_layer(field, labels, measure_cells(field, labels), index=3.2, intensity_class="positive")
    overlay_key = f"overlays/{seeded.slide_id}/attempt-1.png"
    storage.put(f"overlays/{seeded.slide_id}/attempt-1.layer.png", layer, "image/png")
    with session_scope() as session:
        session.get(SlideImage, seeded.slide_id).sha256 = hashlib.sha256(data).hexdigest()
        result = session.get(SpecimenResult, seeded.result_id)
        result.overlay_key, result.overlay_layer_key = overlay_key, f"overlays/{seeded.slide_id}/attempt-1.layer.png"
    return seeded.slide_id, seeded.key, overlay_key, layer


def detail(client: TestClient, key: str, slide_id: int) -> dict:
    response = client.get(f"/v1/specimens/{slide_id}", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


def test_overlay_is_rendered_on_first_request_then_served_from_the_cache(client: TestClient,
                                                                         keys: dict[str, str]) -> None:
    slide_id, image_key, overlay_key, layer = seed_with_layer()
    storage = storage_from_settings()
    original = storage.get(image_key)
    with pytest.raises(ObjectNotFoundError):
        storage.head(overlay_key)  # the worker made no overlay
    first = detail(client, keys["viewer"], slide_id)
    assert first["overlay_problem"] is None
    assert httpx.get(first["overlay_url"]).content == overlay_of_upload(original, layer)  # stored, presigned
    storage.put(image_key, field_png(7))  # the image changes after the overlay was rendered: the cache serves it
    second = detail(client, keys["viewer"], slide_id)
    assert second["overlay_problem"] is None and second["overlay_url"]
    assert httpx.get(second["overlay_url"]).content == overlay_of_upload(original, layer)


def test_changed_image_is_refused_not_rendered(client: TestClient, keys: dict[str, str]) -> None:
    slide_id, image_key, overlay_key, _ = seed_with_layer()
    storage = storage_from_settings()
    storage.put(image_key, field_png(8))  # overwritten before anyone asked for the overlay
    body = detail(client, keys["viewer"], slide_id)
    assert body["overlay_url"] is None and "not the one analysed" in body["overlay_problem"]
    with pytest.raises(ObjectNotFoundError):
        storage.head(overlay_key)  # nothing drawn on the other bytes
    assert body["result"]["pattern"] == "speckled"  # the rest of the page is served


def test_deleted_image_is_reported(client: TestClient, keys: dict[str, str]) -> None:
    slide_id, image_key, _, _ = seed_with_layer()
    storage_from_settings().client.delete_object(Bucket=storage_from_settings().bucket, Key=image_key)
    body = detail(client, keys["viewer"], slide_id)
    assert body["overlay_url"] is None and "no longer exists" in body["overlay_problem"]


def test_old_result_without_layer_serves_the_workers_overlay(client: TestClient, keys: dict[str, str]) -> None:
    seeded = seed_specimen()  # overlay_key holds a full overlay, overlay_layer_key is NULL (before the layer)
    storage = storage_from_settings()
    with session_scope() as session:
        overlay_key = session.get(SpecimenResult, seeded.result_id).overlay_key
    body = detail(client, keys["viewer"], seeded.slide_id)
    assert body["overlay_problem"] is None
    assert httpx.get(body["overlay_url"]).content == storage.get(overlay_key)


def test_specimen_opens_with_a_reason_when_the_storage_cannot_be_reached(client: TestClient, keys: dict[str, str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The overlay is an aid: with the object storage down the specimen page still opens, the result shown,
    the overlay missing with the reason (before rendering on request, the page needed no storage call)."""
    slide_id, _, _, _ = seed_with_layer()
    storage = storage_from_settings()

    def unreachable(*_args: object, **_kwargs: object) -> None:
        raise ConnectionError("connection refused")

    monkeypatch.setattr(type(storage), "head", unreachable)
    body = detail(client, keys["viewer"], slide_id)
    assert body["overlay_url"] is None and "object storage did not answer" in body["overlay_problem"]
    assert body["result"] is not None
