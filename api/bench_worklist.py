"""Benchmark (not a test): the worklist page with N specimens in the configured database.

Seeds SYNTHETIC rows (keys under ``bench/``: patient, specimen, slide, attempt, result, 10 % reviewed, 20 %
needs review) until ``specimens`` exist, then times ``GET /v1/specimens`` through the whole ASGI stack
(auth, query, serialisation): the first worklist page, a page deep in the cursor chain, and two filtered
pages. Reports p50/p95 in milliseconds.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from api.app import create_app
from db.base import utcnow
from db.models import (
    AnalysisAttempt,
    AttemptOutcome,
    Patient,
    Review,
    Role,
    SlideImage,
    SlideStatus,
    Specimen,
    SpecimenResult,
)
from db.session import get_engine, session_scope
from hep2.jsonio import write_json
from hep2.vocabulary import CELL_PATTERNS, INTENSITY_CLASSES
from services.keys import create_key

CHUNK = 1000


def seed(total: int) -> int:
    """Add bench rows until ``total`` bench slides exist; returns how many were added."""
    with session_scope() as session:
        have = session.scalar(select(func.count()).select_from(SlideImage).where(SlideImage.key.like("bench/%"))) or 0
    rng = random.Random(have)
    patterns = [p.value for p in CELL_PATTERNS]
    now = utcnow()
    for start in range(have, total, CHUNK):
        with session_scope() as session:
            for i in range(start, min(start + CHUNK, total)):
                patient = Patient(pseudo_id=f"BENCH-{i:06d}")
                received = now - timedelta(minutes=i * 7)
                needs = rng.random() < 0.2
                slide = SlideImage(bucket="bench", key=f"bench/{i:06d}.tif", etag=f"{i:032x}", size_bytes=1,
                                   specimen=Specimen(accession=f"BENCH-{i:06d}", patient=patient), well="A1",
                                   status=SlideStatus.NEEDS_REVIEW if needs else SlideStatus.DONE,
                                   received_at=received, finished_at=received)
                attempt = AnalysisAttempt(slide=slide, number=1, outcome=AttemptOutcome.SUCCEEDED,
                                          stage_timings_ms={"segment": 300.0})
                result = SpecimenResult(attempt=attempt, slide=slide, intensity_class=rng.choice(INTENSITY_CLASSES),
                                        intensity_index=rng.uniform(0, 10), pattern=rng.choice(patterns),
                                        confidence=rng.random(), cell_count=50, needs_review=needs)
                session.add_all([slide, attempt, result])
                if rng.random() < 0.1:
                    session.flush()
                    session.add(Review(specimen_result_id=result.id, reviewer="bench", field="pattern",
                                       old_value=result.pattern, new_value=rng.choice(patterns)))
    return max(total - have, 0)


def _timed(client: Any, url: str, headers: dict[str, str], n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        times.append((time.perf_counter() - started) * 1000.0)
        response.raise_for_status()
    times.sort()
    return {"p50": round(statistics.median(times), 1), "p95": round(times[int(0.95 * (len(times) - 1))], 1),
            "n": n}


def run(specimens: int, requests: int, json_out: Path) -> dict[str, Any]:
    """Seed, then time the worklist endpoint; writes and returns the report."""
    from fastapi.testclient import TestClient  # needs httpx, a dev dependency


    started = time.perf_counter()
    added = seed(specimens)
    seed_s = time.perf_counter() - started
    with session_scope() as session:
        key = create_key(session, "bench-api", Role.VIEWER, actor="bench-api")[1]
        total = session.scalar(select(func.count()).select_from(SlideImage))
    headers = {"Authorization": f"Bearer {key}"}
    client = TestClient(create_app())
    cursor = None
    for _ in range(20):  # 20 pages down the chain (1,000 rows)
        cursor = client.get("/v1/specimens", params={"limit": 50, **({"cursor": cursor} if cursor else {})},
                            headers=headers).json()["next_cursor"]
    report = {
        "what": "GET /v1/specimens (worklist page of 50) through the ASGI stack, in process",
        "database": _database_version(),
        "specimens": total, "seeded_now": added, "seed_s": round(seed_s, 1),
        "first_page_ms": _timed(client, "/v1/specimens?limit=50", headers, requests),
        "page_21_ms": _timed(client, f"/v1/specimens?limit=50&cursor={cursor}", headers, max(requests // 4, 10)),
        "filtered_pattern_needs_review_ms": _timed(
            client, "/v1/specimens?limit=50&pattern=speckled&needs_review=true", headers, max(requests // 4, 10)),
        "filtered_patient_ms": _timed(client, "/v1/specimens?patient=BENCH-004321", headers, max(requests // 4, 10)),
        "load_average_1m": round(os.getloadavg()[0], 2), "date": utcnow().date().isoformat(),
        "python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus(),
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    write_json(json_out, report)
    return report


def _database_version() -> str:
    engine = get_engine()
    with engine.connect() as connection:
        info = engine.dialect.server_version_info or ()
    del connection
    return f"{engine.dialect.name} {'.'.join(map(str, info))}".strip()


def _cpus() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
