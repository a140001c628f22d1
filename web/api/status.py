"""GET / (the status summary: cards and per-date records) and GET /sources."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from daemon.db.queries import q
from daemon.ops import present
from daemon.ops.problems import problem
from daemon.ops.validation import SOURCE_NAME
from web.api.envelope import success
from web.api.params import Query
from web.state import AppState

DAY_STATUSES = ("running", "success", "failed")


async def summary(request: Request) -> Response:
    """The cards (dates synced, failed, running, queued, last success) and one page of per-date records."""
    query = Query(request.query_params)
    first, last = query.date("from"), query.date("to")
    status = query.choice("status", DAY_STATUSES)
    source = query.text("source", SOURCE_NAME)
    limit, offset = query.page(default_limit=100)
    if first and last and first > last:
        query.errors.append(problem("from", "param_from_after_to"))
    query.check()
    state: AppState = request.app.state.datesync
    async with state.pool.acquire() as conn:
        cards = await conn.fetchrow(q("status_cards_get"), source)
        rows = await conn.fetch(q("day_list_filtered"), source, first, last, status, limit, offset)
        total = await conn.fetchval(q("day_count_filtered"), source, first, last, status)
    return success({
        "cards": dict(cards) if cards else {},
        "records": [present.day(r) for r in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
    })


async def sources(request: Request) -> Response:
    """The configured sources and their handlers."""
    state: AppState = request.app.state.datesync
    async with state.pool.acquire() as conn:
        rows = await conn.fetch(q("source_list"))
    return success({"sources": [{"name": r["name"], "handler": r["handler"]} for r in rows]})
