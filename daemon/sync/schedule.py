"""The daily schedule: at `DATESYNC_SCHEDULE` (HH:MM in `DATESYNC_TIMEZONE`) request yesterday for every source,
plus, with `DATESYNC_SCHEDULE_LOOKBACK=N`, every missing or failed date among the N days before it.

Exactly once per (source, day), however many daemons run: each daemon, at each slot, inserts a
datesync.schedule_run row with ON CONFLICT DO NOTHING and, only if the row is new, the batches, in one
transaction. The row's primary key decides who wins; the loser's insert waits for the winner's commit and then
does nothing. On start the most recent slot is served if no one has yet, so a day missed while every daemon
was down is caught up; older missed days are the look-back's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import Callable, Iterable, Sequence
from zoneinfo import ZoneInfo

import asyncpg
import structlog

from datesync.daemon.backoff import Backoff
from datesync.daemon.db.connect import DB_ERRORS
from datesync.daemon.db.queries import q
from datesync.daemon.sync.outcome import error_text

log = structlog.get_logger("datesync.schedule")
# Waits after failed looks at the database; the next slot's own wait stays the limit.
RETRY = Backoff(2.0, cap=60.0)

Clock = Callable[[], datetime.datetime]
DAY = datetime.timedelta(days=1)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def latest_slot(now: datetime.datetime, at: datetime.time, tz: ZoneInfo) -> datetime.datetime:
    """The most recent moment at or before `now` when the wall clock in `tz` read `at`."""
    local_day = now.astimezone(tz).date()
    slot = datetime.datetime.combine(local_day, at, tzinfo=tz)
    if _utc(slot) > _utc(now):
        slot = datetime.datetime.combine(local_day - DAY, at, tzinfo=tz)
    return slot


def _utc(moment: datetime.datetime) -> datetime.datetime:
    # Aware datetimes sharing a tzinfo compare and subtract by wall clock, wrong across a DST change; UTC is not.
    return moment.astimezone(datetime.UTC)


def next_slot(slot: datetime.datetime, at: datetime.time, tz: ZoneInfo) -> datetime.datetime:
    """The slot the day after `slot` (a wall-clock time: 23 or 25 hours later across a DST change)."""
    return datetime.datetime.combine(slot.astimezone(tz).date() + DAY, at, tzinfo=tz)


def contiguous_ranges(days: Iterable[datetime.date]) -> list[tuple[datetime.date, datetime.date]]:
    """Sorted, distinct dates as the fewest (start, end) runs of consecutive dates."""
    ranges: list[tuple[datetime.date, datetime.date]] = []
    for day in sorted(set(days)):
        if ranges and ranges[-1][1] + DAY == day:
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


@dataclasses.dataclass(eq=False)
class Schedule:
    """The schedule of one daemon; `daily_schedule` is the loop the daemon supervises. `clock` returns an aware
    datetime (injected in tests); the loop re-reads it at least every `poll` seconds, so a clock that jumps (a
    test, a suspended laptop) is noticed."""

    pool: asyncpg.Pool
    sources: Sequence[str]  # kept as a list of its own
    at: datetime.time
    tz: ZoneInfo
    _: dataclasses.KW_ONLY
    lookback: int = 0
    worker: str = ""
    clock: Clock = utc_now
    poll: float = 60.0
    # The latest day this process saw served, per source.
    _served: dict[str, datetime.date] = dataclasses.field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.sources = list(self.sources)

    async def run_due(self) -> list[int]:
        """Serve the most recent slot for every source not yet served; returns the ids of batches created here."""
        slot = latest_slot(self.clock(), self.at, self.tz)
        day = slot.astimezone(self.tz).date() - DAY
        created: list[int] = []
        for source in self.sources:
            if self._served.get(source, datetime.date.min) >= day:
                continue
            created += await self._serve(source, day, slot)
            self._served[source] = day
        return created

    async def _serve(self, source: str, day: datetime.date, slot: datetime.datetime) -> list[int]:
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchrow(q("schedule_run_claim"), source, day, slot, self.lookback, self.worker) is None:
                log.debug("schedule_slot_already_served", source=source, day=day.isoformat())
                return []
            days = [day]
            if self.lookback:
                gaps = await conn.fetch(q("day_gaps"), source, day - self.lookback * DAY, day - DAY)
                days += [row["day"] for row in gaps]
            ranges = contiguous_ranges(days)
            # Last statement of the transaction: the batch trigger writes events (see event_serialize).
            rows = await conn.fetch(q("schedule_batch_insert"), source, [r[0] for r in ranges], [r[1] for r in ranges])
        ids = [int(r["id"]) for r in rows]
        log.info("schedule_batches_created", source=source, day=day.isoformat(), batch_ids=ids,
                 ranges=[f"{a.isoformat()}..{b.isoformat()}" for a, b in ranges])
        return ids

    async def daily_schedule(self) -> None:
        """Serve each slot as it comes, until cancelled; database errors are logged and retried."""
        log.info("schedule_started", at=self.at.strftime("%H:%M"), timezone=self.tz.key, lookback=self.lookback,
                 sources=self.sources)
        failures = 0
        while True:
            wait: float
            try:
                await self.run_due()
                failures = 0
                now = self.clock()
                upcoming = next_slot(latest_slot(now, self.at, self.tz), self.at, self.tz)
                wait = (_utc(upcoming) - _utc(now)).total_seconds()
            except DB_ERRORS as exc:
                failures += 1
                log.warning("schedule_database_error", error=error_text(exc), failures=failures)
                wait = RETRY.delay(failures)
            await asyncio.sleep(min(max(wait, 0.0), self.poll))
