"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse

from datesync.daemon.db.connect import DB_ERRORS
from datesync.daemon.db.migrate import is_current
from datesync.web.state import AppState


async def healthz(request: Request) -> JSONResponse:
    """The process is up."""
    return JSONResponse({"status": "success", "data": {"alive": True}})


async def readyz(request: Request) -> JSONResponse:
    """The database answers, migrations are current, and this process's daemon listener (if any) is connected."""
    state: AppState = request.app.state.datesync
    reasons: list[str] = []
    try:
        async with asyncio.timeout(5):
            async with state.pool.acquire() as conn:
                if not await is_current(conn):
                    reasons.append("database migrations are not current; run `datesync migrate`")
    except DB_ERRORS as exc:
        reasons.append(f"database unreachable: {type(exc).__name__}")
    if state.daemon_listener_connected is not None and not state.daemon_listener_connected():
        reasons.append("the daemon's LISTEN connection is down (reconnecting)")
    if reasons:
        return JSONResponse({"status": "error", "message": "; ".join(reasons), "errors": []}, status_code=503)
    return JSONResponse({"status": "success", "data": {"ready": True}})
