"""The FastAPI application. Routers are added per resource as the service grows."""

from __future__ import annotations

from fastapi import FastAPI

from api import events, health
from hep2 import __version__


def create_app() -> FastAPI:
    app = FastAPI(title="HEp-2 IIF reader", version=__version__,
                  description="Open HEp-2 indirect-immunofluorescence (ANA) analysis service.")
    app.include_router(health.router)
    app.include_router(events.router)
    return app


app = create_app()
