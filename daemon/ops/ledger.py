"""Reading the ledger (datesync.day): the status summary, and the gaps of a range with their backfill."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import asyncpg

from datesync.daemon.db.connect import Conn
from datesync.daemon.db.queries import q
from datesync.daemon.ops import present
from datesync.daemon.ops.batches import require_source
from datesync.daemon.ops.problems import OperationError, problem
from datesync.daemon.ops.validation import Limits, check_source, span_problems
from datesync.daemon.states import UNFINISHED_BATCH

DEFAULT_GAP_DAYS = 30  # the range when `from` is not given: the 30 days up to `to`


@dataclasses.dataclass(frozen=True, slots=True)
class Gaps:
    source: str
    first: datetime.date
    last: datetime.date
    days: list[dict[str, Any]]  # {day, status: "missing" | "failed" | "stale"}
    ranges: list[tuple[datetime.date, datetime.date]]  # contiguous runs of `days`
    requested: list[dict[str, Any]]  # the batches a backfill created, one per range

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "from": self.first.isoformat(), "to": self.last.isoformat(),
                "gaps": [{"day": d["day"].isoformat(), "status": d["status"]} for d in self.days],
                "ranges": [{"start_date": s.isoformat(), "end_date": e.isoformat()} for s, e in self.ranges]}


async def gaps(conn: Conn, source: str, first: datetime.date | None, last: datetime.date | None, limits: Limits,
               *, backfill: bool = False, requested_by: str = "api") -> Gaps:
    """Dates of `source` in first..last (default: the 30 days up to yesterday) that are missing or failed; with
    `backfill`, one batch per contiguous range, all in one transaction (all of them or none)."""
    last = last or limits.today - datetime.timedelta(days=1)
    first = first or last - datetime.timedelta(days=DEFAULT_GAP_DAYS - 1)
    errors = [e for e in (check_source(source),) if e] + span_problems(first, last, limits, past_only=True)
    if errors:
        raise OperationError(422, errors)
    await require_source(conn, source)
    requested: list[dict[str, Any]] = []
    async with conn.transaction():
        rows = await conn.fetch(q("day_gaps"), source, first, last)
        ranges = list(dict.fromkeys((r["range_start"], r["range_end"]) for r in rows))
        if backfill:
            stale = {r["day"] for r in rows if r["status"] == "stale"}
            for start, end in ranges:
                # A stale date is synced: only a forced run re-syncs it (forcing a missing one changes nothing).
                force = any(start <= day <= end for day in stale)
                try:
                    row = await conn.fetchrow(q("batch_insert"), source, start, end, force, None, requested_by)
                except (asyncpg.CheckViolationError, asyncpg.NotNullViolationError) as exc:
                    raise OperationError(422, [problem(exc.detail or "body", "verbatim",
                                                       text=exc.message or "")]) from exc
                assert row is not None
                requested.append(dict(row))
    days = [{"day": r["day"], "status": r["status"]} for r in rows]
    return Gaps(source, first, last, days, ranges, requested)


async def summary(conn: Conn, *, source: str | None, first: datetime.date | None, last: datetime.date | None,
                  status: str | None, limit: int | None, offset: int, limits: Limits) -> dict[str, Any]:
    """The cards (dates synced, failed, running, queued, last success) and the per-date records of a range, one
    page (`limit` None: all)."""
    errors = span_problems(first, last, limits, past_only=False)
    if source is not None and (bad := check_source(source)):
        errors.append(bad)
    if errors:
        raise OperationError(422, errors)
    cards = await conn.fetchrow(q("status_cards_get"), source)
    rows = await conn.fetch(q("day_list_filtered"), source, first, last, status, limit, offset)
    total = await conn.fetchval(q("day_count_filtered"), source, first, last, status)
    return {"cards": dict(cards) if cards else {}, "records": [present.day(r) for r in rows], "total": total,
            "limit": limit, "offset": offset}


async def unfinished_batches(conn: Conn) -> list[dict[str, Any]]:
    """Batches still queued or running, oldest first."""
    rows = [row for state in UNFINISHED_BATCH for row in await conn.fetch(q("batch_list_newest"), state, None, 0)]
    return sorted((present.batch(r) for r in rows), key=lambda b: b["id"])
