"""The FastAPI application: health, events, results, review, operations, metrics and the dashboard."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from api import audit, events, health, keys, metrics, objects, operations, reports, review, specimens
from api.middleware import RequestGuard, SecurityHeaders
from hep2 import __version__
from hep2.settings import require_secure_settings

log = logging.getLogger("hep2.api")
DASHBOARD = Path(__file__).parent / "dashboard"


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """500 with an id to quote; the traceback goes to the log, never to the client."""
    error_id = uuid.uuid4().hex[:12]
    log.error("unhandled error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error", "error_id": error_id}, status_code=500)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Refuse to start in production with a default or placeholder secret (uvicorn exits with the reason)."""
    require_secure_settings()
    yield


def create_app() -> FastAPI:
    # FastAPIOffline: /docs (Swagger UI) and /redoc load their scripts from the installed package, not a CDN
    app = FastAPIOffline(title="HEp-2 IIF reader", version=__version__, lifespan=lifespan,
                  description="Open HEp-2 indirect-immunofluorescence (ANA) analysis service. Authenticate with "
                              "`Authorization: Bearer <API key>` or `X-API-Key`.")
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(events.router)
    for module in (specimens, review, operations, keys, audit, objects, reports):
        app.include_router(module.router)
    app.add_exception_handler(Exception, internal_error)
    app.add_middleware(RequestGuard, fastapi_app=app)  # authenticate, then read at most the body limit
    app.add_middleware(SecurityHeaders)  # outermost: the guard's 401/413 carry the headers too
    app.mount("/dashboard", StaticFiles(directory=DASHBOARD, html=True), name="dashboard")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    return app


app = create_app()
