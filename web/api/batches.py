"""Reading batches, and asking for a cancel or a retry (the daemons do the work)."""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from daemon.db.connect import Conn
from daemon.db.queries import q
from daemon.ops import present
from daemon.ops.messages import preferred
from daemon.ops.problems import Msg, OperationError, problem
from web.api.auth import require_token
from web.api.envelope import success
from web.api.params import Query, batch_id
from web.state import AppState

log = structlog.get_logger("datesync.web")

BATCH_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
UNFINISHED = ("queued", "running")


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
        batch = await _batch_or_404(conn, wanted)
        tasks = await conn.fetch(q("task_list_for_batch"), wanted)
    return success({"batch": batch, "tasks": [present.task(t) for t in tasks]})


async def cancel_batch(request: Request) -> Response:
    """Ask for a batch to be cancelled: 202, or 409 when it has already ended."""
    require_token(request)
    wanted = batch_id(request.path_params["batch_id"])
    state: AppState = request.app.state.datesync
    async with state.pool.acquire() as conn:
        # The UPDATE's trigger wakes every daemon; nothing else happens in this transaction.
        updated = await conn.fetchrow(q("batch_request_cancel"), wanted)
        batch = await _batch_or_404(conn, wanted)
    if updated is None:
        raise OperationError(409, [problem("id", "batch_ended", id=wanted, state=batch["state"])])
    log.info("batch_cancel_requested", batch_id=wanted)
    if state.wake_daemon is not None:
        state.wake_daemon()
    lang = preferred(request.headers.get("accept-language"))
    return success({"batch": batch, "message": Msg("cancel_requested", {"id": wanted}).render(lang)}, 202)


async def retry_batch(request: Request) -> Response:
    """Requeue a finished batch's failed (or cancelled) dates: 202, or 409 when there is nothing to retry."""
    require_token(request)
    wanted = batch_id(request.path_params["batch_id"])
    state: AppState = request.app.state.datesync
    async with state.pool.acquire() as conn:
        async with conn.transaction():
            retried = await conn.fetchrow(q("batch_retry"), wanted)
            if retried is not None:
                await conn.execute(q("batch_wake_daemons"), str(wanted))
                # Last statement: the event insert takes the lock that keeps event ids in commit order.
                await conn.execute(q("event_insert_batch"), wanted, "running", {"retry": retried["requeued"]})
        batch = await _batch_or_404(conn, wanted)
    if retried is None:
        key = "retry_unfinished" if batch["state"] in UNFINISHED else "retry_nothing"
        raise OperationError(409, [problem("id", key, id=wanted, state=batch["state"])])
    log.info("batch_retry_requested", batch_id=wanted, requeued=retried["requeued"])
    if state.wake_daemon is not None:
        state.wake_daemon()
    lang = preferred(request.headers.get("accept-language"))
    message = Msg("retry_started", {"id": wanted, "requeued": retried["requeued"]}).render(lang)
    return success({"batch": batch, "requeued": retried["requeued"], "message": message}, 202)


async def _batch_or_404(conn: Conn, wanted: int) -> dict[str, Any]:
    row = await conn.fetchrow(q("batch_get"), wanted)
    if row is None:
        raise OperationError(404, [problem("id", "batch_not_found", id=wanted)])
    return present.batch(row)
