"""The Starlette application: health, the JSON API under /api/v1/sync-status, the event streams and the page."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route

from datesync.web import api, events, gaps, health, metrics, page
from datesync.web.access import AccessLog
from datesync.web.hosts import HostGuard
from datesync.web.state import AppState

API_PREFIX = "/api/v1/sync-status"


def create_app(state: AppState) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with events.lifespan(state):
            yield

    app = Starlette(
        routes=[
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
            *metrics.routes,
            *api.root_routes,
            Mount(API_PREFIX, routes=[*api.routes, *events.routes, *gaps.routes]),
            *page.routes,
        ],
        lifespan=lifespan,
        # Outermost first: the access log (it sees every answer, refusals too), security headers on every answer,
        # then the Host allowlist before anything reads the request, then the API's own stack.
        middleware=[
            Middleware(AccessLog),
            Middleware(page.SecurityHeaders),
            Middleware(HostGuard, allowed_hosts=state.settings.served_hosts),
            *api.middleware(state.settings),
        ],
        exception_handlers=api.EXCEPTION_HANDLERS,
    )
    app.state.datesync = state
    return app
