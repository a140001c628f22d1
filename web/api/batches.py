"""Reading batches, and asking for a cancel or a retry: the API's adapters over daemon.ops.batches."""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import Response

from datesync.daemon.db.queries import q
from datesync.daemon.ops import batches, present
from datesync.daemon.ops.messages import preferred
from datesync.daemon.states import BatchState
from datesync.web.api.auth import require_token
from datesync.web.api.envelope import success
from datesync.web.api.params import Query, batch_id
from datesync.web.state import AppState

log = structlog.get_logger("datesync.web")

BATCH_STATES = tuple(BatchState)


async def list_batches(request: Request) -> Response:
    """Batches with live counts, newest first, one page at a time."""
    query = Query(request.query_params)
    state_filter = query.choice("state", BATCH_STATES)
    limit, offset = query.page(default_limit=50)
    query.check()
    state: AppState = request.app.state.datesync
    async with state.pool.acquire() as conn:
        rows = await conn.fetch(q("batch_list_newest"), state_filter, limit, offset)
        total = await conn.fetchval(q("batch_count_by_state"), state_filter)
    return success({"batches": [present.batch(r) for r in rows], "total": total, "limit": limit, "offset": offset})


async def get_batch(request: Request) -> Response:
    """One batch: its state, live counts and every date's task."""
    wanted = batch_id(request.path_params["batch_id"])
    state: AppState = request.app.state.datesync
    async with state.pool.acquire() as conn:
        batch = await batches.get(conn, wanted)
        tasks = await batches.tasks(conn, wanted)
    return success({"batch": batch, "tasks": tasks})


async def cancel_batch(request: Request) -> Response:
    """Ask for a batch to be cancelled: 202, or 409 when it has already ended."""
    require_token(request)
    wanted = batch_id(request.path_params["batch_id"])
    state: AppState = request.app.state.datesync
    async with state.pool.acquire() as conn:
        batch, message = await batches.cancel(conn, wanted)
    log.info("batch_cancel_requested", batch_id=wanted)
    if state.wake_daemon is not None:
        state.wake_daemon()
    return success({"batch": batch, "message": message.render(preferred(request.headers.get("accept-language")))},
                   202)


async def retry_batch(request: Request) -> Response:
    """Requeue a finished batch's failed (or cancelled) dates: 202, or 409 when there is nothing to retry."""
    require_token(request)
    wanted = batch_id(request.path_params["batch_id"])
    state: AppState = request.app.state.datesync
    async with state.pool.acquire() as conn:
        batch, requeued, message = await batches.retry(conn, wanted)
    log.info("batch_retry_requested", batch_id=wanted, requeued=requeued)
    if state.wake_daemon is not None:
        state.wake_daemon()
    lang = preferred(request.headers.get("accept-language"))
    return success({"batch": batch, "requeued": requeued, "message": message.render(lang)}, 202)
