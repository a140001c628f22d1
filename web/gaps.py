"""`GET /gaps?from=&to=&source=`: the API's adapter over daemon.ops.ledger.gaps (what `datesync gaps` lists, and
with --backfill requests)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from datesync.daemon.ops import ledger
from datesync.daemon.sources import DEFAULT
from datesync.web.api.envelope import success
from datesync.web.api.params import Query
from datesync.web.api.submit import limits
from datesync.web.state import AppState


async def gaps(request: Request) -> Response:
    query = Query(request.query_params)
    first, last = query.date("from"), query.date("to")
    query.check()
    source = request.query_params.get("source") or DEFAULT
    state: AppState = request.app.state.datesync
    async with state.pool.acquire() as conn:
        found = await ledger.gaps(conn, source, first, last, limits(state))
    return success(found.as_json())


routes: list[BaseRoute] = [Route("/gaps", gaps, methods=["GET"])]
