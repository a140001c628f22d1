"""`GET /gaps?from=&to=&source=`: the dates of a range that are missing or failed, and their contiguous ranges
(what `datesync gaps --backfill` would request)."""

from __future__ import annotations

import datetime
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from daemon.db.queries import q
from daemon.sources import DEFAULT
from web.state import AppState

DEFAULT_DAYS = 30  # the range when `from` is not given: the 30 days up to `to`
_SOURCE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def _error(errors: list[dict[str, str]]) -> JSONResponse:
    message = "; ".join(e["message"] for e in errors)
    return JSONResponse({"status": "error", "message": message, "errors": errors}, status_code=422)


def _date(raw: str | None, field: str, errors: list[dict[str, str]]) -> datetime.date | None:
    if raw is None or raw == "":
        return None
    try:
        if len(raw) != 10:
            raise ValueError
        return datetime.date.fromisoformat(raw)
    except ValueError:
        errors.append({"field": field, "message": f"{field} must be a real date written YYYY-MM-DD"})
        return None


async def gaps(request: Request) -> JSONResponse:
    state: AppState = request.app.state.datesync
    settings = state.settings
    errors: list[dict[str, str]] = []
    today = datetime.datetime.now(settings.tz).date()
    start = _date(request.query_params.get("from"), "from", errors)
    end = _date(request.query_params.get("to"), "to", errors)
    source = request.query_params.get("source") or DEFAULT
    if not _SOURCE.fullmatch(source):
        errors.append({"field": "source", "message": "source must be a source name (a-z, 0-9, _ and -)"})
    if errors:
        return _error(errors)
    end = end or today - datetime.timedelta(days=1)
    start = start or end - datetime.timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        errors.append({"field": "from", "message": "from must not be after to"})
    elif end > today:
        errors.append({"field": "to", "message": f"to {end} is in the future (today is {today} in "
                                                 f"{settings.timezone})"})
    elif (end - start).days + 1 > settings.max_range_days:
        errors.append({"field": "to", "message": f"the range is {(end - start).days + 1} days; "
                                                 f"the limit is {settings.max_range_days} days"})
    if errors:
        return _error(errors)
    async with state.pool.acquire() as conn:
        if not await conn.fetchval(q("source_exists"), source):
            return _error([{"field": "source", "message": f'unknown source "{source}"'}])
        rows = await conn.fetch(q("day_gaps"), source, start, end)
    data: dict[str, Any] = {
        "source": source,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "gaps": [{"day": r["day"].isoformat(), "status": r["status"]} for r in rows],
        "ranges": [
            {"start_date": s.isoformat(), "end_date": e.isoformat()}
            for s, e in dict.fromkeys((r["range_start"], r["range_end"]) for r in rows)
        ],
    }
    return JSONResponse({"status": "success", "data": data})


routes: list[BaseRoute] = [Route("/gaps", gaps, methods=["GET"])]
