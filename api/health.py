"""Liveness and readiness. Readiness checks each dependency the service cannot work without."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import text

import workers.celery_app as broker
from db.session import get_engine
from hep2.storage import storage_from_settings

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
def live() -> dict[str, str]:
    """The process is up (no dependency checked)."""
    return {"status": "ok"}


@router.get("/ready")
def ready(response: Response) -> dict[str, object]:
    """Database, broker and object storage all answer; 503 with the failing parts otherwise."""
    checks = {"database": _check_database, "broker": _check_broker, "storage": _check_storage}
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # a readiness probe reports every failure, whatever its type
            results[name] = f"error: {type(exc).__name__}"
    healthy = all(value == "ok" for value in results.values())
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ok" if healthy else "unavailable", "checks": results}


def _check_database() -> None:
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1"))


def _check_broker() -> None:
    with broker.celery_client().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


def _check_storage() -> None:
    storage = storage_from_settings()
    next(iter(storage.list("health-check/")), None)
