"""Helpers for the processing tests: uploads, events through the API, waiting for results, bad files."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote_plus

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from db.models import Cell, SlideImage, SpecimenResult
from db.session import session_scope
from hep2.storage import ObjectStorage
from hep2.synthetic import SYNTHETIC_PATTERNS, synthetic_field, synthetic_png
from workers.celery_app import create_celery_app
from workers.jobs import slide_statuses, wait_for_final
from workers.routing import TaskName

FINAL = {"done", "needs_review", "rejected", "failed"}
WEBHOOK_TOKEN = "test-webhook-token"


def small_field(i: int) -> bytes:
    """A small SYNTHETIC field (fast to analyse on a CPU)."""
    return synthetic_png(SYNTHETIC_PATTERNS[i % len(SYNTHETIC_PATTERNS)], seed=100 + i, size=(320, 400), cells=10)


def upload(storage: ObjectStorage, keys_and_data: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    """Put the objects; return key -> etag."""
    return {key: storage.put(key, data).etag for key, data in keys_and_data}


def event_body(bucket: str, uploads: dict[str, str]) -> dict[str, Any]:
    return {"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {
        "bucket": {"name": bucket}, "object": {"key": quote_plus(key), "size": 1, "eTag": etag}}}
        for key, etag in uploads.items()]}


def send_events(client: TestClient, bucket: str, uploads: dict[str, str]) -> None:
    response = client.post("/v1/events/s3", json=event_body(bucket, uploads),
                           headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
    assert response.status_code == 202, response.text


def statuses(keys: Iterable[str]) -> dict[str, str]:
    with session_scope() as session:
        return {key: status.value for key, status in slide_statuses(session, list(keys)).items()}


def wait_final(keys: list[str], timeout_s: float = 300.0) -> dict[str, str]:
    """Wait until every key has a slide in a final state; return key -> status."""
    return {key: status.value for key, status in wait_for_final(keys, timeout_s).items()}


def analyse_upload(storage: ObjectStorage, key: str, data: bytes) -> str:
    """Upload one field, send ``register_upload`` as the S3 event does, wait for its analysis; its final status."""
    upload(storage, [(key, data)])
    create_celery_app().send_task(TaskName.REGISTER_UPLOAD, args=[key])
    return wait_final([key])[key]


def counts(keys: list[str]) -> dict[str, int]:
    """Slides, specimen results and cells stored for these keys."""
    with session_scope() as session:
        ids = select(SlideImage.id).where(SlideImage.key.in_(keys))
        return {
            "slides": session.scalar(select(func.count()).select_from(SlideImage).where(SlideImage.key.in_(keys))),
            "results": session.scalar(select(func.count()).where(SpecimenResult.slide_image_id.in_(ids))),
            "cells": session.scalar(select(func.count()).where(Cell.slide_image_id.in_(ids))),
        }


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` 8-bit gray pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 1024))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def png16(i: int) -> bytes:
    """A 16-bit grayscale PNG of a SYNTHETIC field (the signal spread over 16 bits)."""
    green = synthetic_field(SYNTHETIC_PATTERNS[i % len(SYNTHETIC_PATTERNS)], size=(320, 400), cells=10, seed=7 + i)
    buffer = io.BytesIO()
    Image.fromarray(green[..., 1].astype(np.uint16) * 257).save(buffer, format="PNG")
    return buffer.getvalue()


def bad_inputs() -> dict[str, bytes]:
    good = small_field(0)
    return {
        "corrupt.png": good[:64] + bytes(range(256)) * 20,
        "truncated.png": good[: len(good) // 2],
        "empty.png": b"",
        "not-an-image.png": b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n",
        "bomb.png": png_bomb(),
        "sixteen-bit.png": png16(2),  # rejected unless HEP2_ACCEPT_16BIT=true
    }
