"""``GET /metrics``: Prometheus text format, collected from the database and the broker at scrape time.

* ``hep2_slides{status}`` (gauge): slide images per status.
* ``hep2_stage_latency_seconds{stage}`` (histogram): pipeline stage timings of finished attempts, summed
  incrementally per process (attempt ids only grow; running attempts are counted once they finish).
* ``hep2_queue_depth{queue}`` (gauge): messages waiting per queue.

Unauthenticated like most exporters: aggregates only, no patient data.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select

from api.operations import queue_depths
from db.models import AnalysisAttempt, AttemptOutcome, SlideImage, SlideStatus
from db.session import session_scope

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)
BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class StageHistograms:
    """Cumulative per-stage histograms over finished attempts, advanced by attempt id."""

    def __init__(self) -> None:
        self.after_id = 0
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self.lock = threading.Lock()

    def advance(self) -> None:
        with self.lock, session_scope() as session:
            first_running = session.scalar(select(func.min(AnalysisAttempt.id))
                                           .where(AnalysisAttempt.outcome == AttemptOutcome.RUNNING,
                                                  AnalysisAttempt.id > self.after_id))
            query = select(AnalysisAttempt.id, AnalysisAttempt.stage_timings_ms).where(
                AnalysisAttempt.id > self.after_id).order_by(AnalysisAttempt.id)
            if first_running is not None:
                query = query.where(AnalysisAttempt.id < first_running)
            for attempt_id, timings in session.execute(query):
                for stage, ms in (timings or {}).items():
                    if isinstance(ms, int | float):
                        self.add(str(stage), float(ms) / 1000.0)
                self.after_id = attempt_id

    def add(self, stage: str, seconds: float) -> None:
        counts = self.counts.setdefault(stage, [0] * (len(BUCKETS_S) + 1))
        for i, bound in enumerate((*BUCKETS_S, float("inf"))):
            if seconds <= bound:
                counts[i] += 1
        self.sums[stage] = self.sums.get(stage, 0.0) + seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily("hep2_stage_latency_seconds", "Pipeline stage latency of finished attempts",
                                       labels=["stage"])
        for stage, counts in sorted(self.counts.items()):
            buckets = [(repr(b) if b != float("inf") else "+Inf", c)
                       for b, c in zip((*BUCKETS_S, float("inf")), counts, strict=True)]
            family.add_metric([stage], buckets, self.sums[stage])
        return family


class ServiceCollector:
    """Collects on every scrape; a failing source is logged and left out, never a 500."""

    def __init__(self) -> None:
        self.stages = StageHistograms()

    def collect(self) -> Iterator[Metric]:
        try:
            with session_scope() as session:
                query = select(SlideImage.status, func.count()).group_by(SlideImage.status)
                counts = dict(session.execute(query).all())
            slides = GaugeMetricFamily("hep2_slides", "Slide images per status", labels=["status"])
            for state in SlideStatus:
                slides.add_metric([state.value], counts.get(state, 0))
            yield slides
            self.stages.advance()
            yield self.stages.family()
        except Exception:  # the exporter must answer even when the database does not
            log.exception("metrics: database collection failed")
        try:

            depth = GaugeMetricFamily("hep2_queue_depth", "Messages waiting per queue", labels=["queue"])
            for queue, n in queue_depths().items():
                if n is not None:
                    depth.add_metric([queue], n)
            yield depth
        except Exception:
            log.exception("metrics: broker collection failed")


registry = CollectorRegistry()
registry.register(ServiceCollector())  # type: ignore[arg-type]


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics() -> Response:
    """Prometheus exposition format."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
