"""The Starlette application."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from web import health
from web.state import AppState


def create_app(state: AppState) -> Starlette:
    app = Starlette(
        routes=[
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
        ],
    )
    app.state.datesync = state
    return app
