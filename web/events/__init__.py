"""Server-Sent Events: GET /batches/{id}/events and GET /events, fed by one LISTEN connection per process.

`lifespan(state)` runs the process's hub (hub.py); `routes` open streams (routes.py, stream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from datesync.web.events.hub import Hub, HubConfig
from datesync.web.events.routes import hub_for, hubs, routes
from datesync.web.state import AppState

log = structlog.get_logger("datesync.web.events")

__all__ = ["Hub", "HubConfig", "hub_for", "lifespan", "routes"]

# Tests replace this to shorten the heartbeat or shrink the queues; None means HubConfig.from_settings().
CONFIG: HubConfig | None = None


@contextlib.asynccontextmanager
async def lifespan(state: AppState) -> AsyncIterator[None]:
    """Run this process's event hub while the app serves; end every open stream when it stops."""
    config = CONFIG or HubConfig.from_settings(state.settings)
    hub = Hub(state.pool, state.direct_dsn, config)
    hubs[id(state)] = hub
    runner = asyncio.create_task(hub.run(), name="sse-hub")
    watcher = asyncio.create_task(_close_on_server_exit(state, hub), name="sse-exit-watch")
    try:
        yield
    finally:
        await hub.close_streams()
        for task in (runner, watcher):
            task.cancel()
        await asyncio.gather(runner, watcher, return_exceptions=True)
        hubs.pop(id(state), None)


async def _close_on_server_exit(state: AppState, hub: Hub) -> None:
    """End open streams as soon as the process starts shutting down (`state.stopping`).

    uvicorn waits for open connections (up to its graceful timeout) *before* it runs the lifespan's shutdown, so
    ending streams only at lifespan exit would hold every shutdown for the whole timeout and then cut the streams
    without a farewell. Nothing in ASGI tells the app earlier; the process that owns the server does.
    """
    await state.stopping.wait()
    await hub.close_streams()
