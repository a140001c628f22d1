"""GET / (the status summary: cards and per-date records) and GET /sources."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from datesync.daemon.db.queries import q
from datesync.daemon.ops import ledger
from datesync.daemon.ops.validation import SOURCE_NAME, span_problems
from datesync.daemon.states import DayStatus
from datesync.web.api.envelope import success
from datesync.web.api.params import Query
from datesync.web.api.submit import limits
from datesync.web.state import AppState

DAY_STATUSES = tuple(DayStatus)


async def summary(request: Request) -> Response:
    """The cards (dates synced, failed, running, queued, last success) and one page of per-date records."""
    query = Query(request.query_params)
    first, last = query.date("from"), query.date("to")
    status = query.choice("status", DAY_STATUSES)
    source = query.text("source", SOURCE_NAME)
    limit, offset = query.page(default_limit=100)
    state: AppState = request.app.state.datesync
    query.errors += span_problems(first, last, limits(state), past_only=False)  # every problem in one answer
    query.check()
    async with state.pool.acquire() as conn:
        found = await ledger.summary(conn, source=source, first=first, last=last, status=status, limit=limit,
                                     offset=offset, limits=limits(state))
    return success(found)


async def sources(request: Request) -> Response:
    """The configured sources and their handlers."""
    state: AppState = request.app.state.datesync
    async with state.pool.acquire() as conn:
        rows = await conn.fetch(q("source_list"))
    return success({"sources": [{"name": r["name"], "handler": r["handler"]} for r in rows]})
