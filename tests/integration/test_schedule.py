"""The daily schedule with an injected clock: one batch per (source, day) with two daemons, across restarts,
and the look-back over missing and failed dates."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from datesync import service
from datesync.daemon.db.connect import create_pool
from datesync.daemon.db.queries import q
from datesync.daemon.errors import SettingsError
from datesync.daemon.runtime import Database
from datesync.daemon.settings import Settings
from datesync.daemon.sync import handlers
from datesync.daemon.sync.schedule import Schedule, contiguous_ranges, latest_slot, next_slot
from datesync.daemon.sync.worker import Daemon
from tests.support.waiting import wait_for

TZ = ZoneInfo("Asia/Shanghai")
AT = datetime.time(2, 0)
D = datetime.timedelta(days=1)
SOURCES = ["default", "second"]


class Clock:
    """A settable clock, well in the past so that "yesterday" is never in the database's future."""

    def __init__(self) -> None:
        today = datetime.datetime.now(TZ).date()
        self.now = datetime.datetime.combine(today - 20 * D, datetime.time(5, 0), tzinfo=TZ)

    def __call__(self) -> datetime.datetime:
        return self.now

    @property
    def yesterday(self) -> datetime.date:
        return self.now.date() - D


async def runs(db: asyncpg.Connection) -> list[tuple[str, datetime.date]]:
    return [(r["source"], r["day"]) for r in await db.fetch(
        "SELECT source, day FROM datesync.schedule_run ORDER BY day, source")]


async def scheduled_batches(db: asyncpg.Connection) -> list[tuple[str, datetime.date, datetime.date]]:
    return [(r["source"], r["start_date"], r["end_date"]) for r in await db.fetch(
        "SELECT source, start_date, end_date FROM datesync.batch WHERE requested_by = 'schedule' "
        "ORDER BY start_date, source")]


@contextlib.asynccontextmanager
async def daemon_with_schedule(dsn: str, clock: Clock, worker: str) -> AsyncIterator[Daemon]:
    settings = Settings(retry_delay=0.05, poll_interval=2, concurrency=2)
    pool = await create_pool(dsn, settings.pool_size, worker)
    schedule = Schedule(pool, SOURCES, AT, TZ, worker=worker, clock=clock, poll=0.02)
    daemon = Daemon(settings, pool, {s: handlers.load("noop") for s in SOURCES}, dsn,
                    side_tasks=[schedule.daily_schedule], worker_id=worker, grace=2)
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)
        await pool.close()


@pytest.fixture
async def registered(db: asyncpg.Connection) -> None:
    await db.execute(q("source_register"), "second", "noop")


@pytest.mark.usefixtures("registered")
async def test_two_daemons_create_exactly_one_batch_per_source_and_day(dsn: str, db: asyncpg.Connection) -> None:
    clock = Clock()
    first = clock.yesterday
    async with daemon_with_schedule(dsn, clock, "daemon-a"), daemon_with_schedule(dsn, clock, "daemon-b"):
        await wait_for(lambda: db.fetchval("SELECT count(*) = 2 FROM datesync.schedule_run"))
        for _ in range(3):  # three more days go by, each slot seen by both daemons
            clock.now += D
            await wait_for(lambda: db.fetchval("SELECT count(*) = 2 FROM datesync.schedule_run WHERE day = $1",
                                               clock.yesterday))
        await asyncio.sleep(0.2)  # several more polls of both schedules: nothing new
        await wait_for(lambda: db.fetchval("SELECT count(*) = 8 FROM datesync.day WHERE status = 'success'"))
    days = [first + i * D for i in range(4)]
    assert await runs(db) == [(s, d) for d in days for s in SOURCES]
    assert await scheduled_batches(db) == [(s, d, d) for d in days for s in SOURCES]
    winners = {r["worker"] for r in await db.fetch("SELECT worker FROM datesync.schedule_run")}
    assert winners <= {"daemon-a", "daemon-b"}


@pytest.mark.usefixtures("registered")
async def test_racing_schedules_on_separate_connections_create_each_day_once(
    dsn: str, db: asyncpg.Connection
) -> None:
    clock = Clock()
    pools = [await create_pool(dsn, 2, f"t{i}") for i in range(3)]
    try:
        schedules = [Schedule(pool, SOURCES, AT, TZ, clock=clock, worker=f"w{i}") for i, pool in enumerate(pools)]
        for _ in range(10):
            created = await asyncio.gather(*(s.run_due() for s in schedules))
            assert sum(len(ids) for ids in created) == 2, created  # one batch per source, whoever won
            clock.now += D
    finally:
        for pool in pools:
            await pool.close()
    assert await db.fetchval("SELECT count(*) FROM datesync.batch WHERE requested_by = 'schedule'") == 20
    assert len(set(await runs(db))) == 20


@pytest.mark.usefixtures("registered")
async def test_a_day_missed_while_down_is_caught_up_once_at_the_next_start(
    dsn: str, db: asyncpg.Connection
) -> None:
    clock = Clock()
    pool = await create_pool(dsn, 3, "t")
    try:
        first = Schedule(pool, SOURCES, AT, TZ, clock=clock)
        assert len(await first.run_due()) == 2
        # Restarted the same day: the slot is recorded, nothing is created again.
        assert await Schedule(pool, SOURCES, AT, TZ, clock=clock).run_due() == []
        # Down over the next slot (02:00), started again at 09:40: that slot is served now, once.
        clock.now += datetime.timedelta(days=1, hours=4, minutes=40)
        assert len(await Schedule(pool, SOURCES, AT, TZ, clock=clock).run_due()) == 2
        assert await Schedule(pool, SOURCES, AT, TZ, clock=clock).run_due() == []
        # Started at 01:59 the day after: the 02:00 slot is not due yet.
        clock.now = clock.now.replace(hour=1, minute=59) + D
        assert await Schedule(pool, SOURCES, AT, TZ, clock=clock).run_due() == []
    finally:
        await pool.close()
    first_day = Clock().yesterday
    assert await runs(db) == [(s, d) for d in (first_day, first_day + D) for s in SOURCES]


async def test_lookback_adds_missing_and_failed_dates_as_few_batches(dsn: str, db: asyncpg.Connection) -> None:
    clock = Clock()
    y = clock.yesterday
    # Of the 6 days before yesterday: y-6 missing (outside the look-back of 5), y-5 success, y-4 missing,
    # y-3 failed, y-2 success, y-1 running.
    for day, status in [(y - 5 * D, "success"), (y - 3 * D, "failed"), (y - 2 * D, "success"),
                        (y - D, "running")]:
        await db.execute("INSERT INTO datesync.day (source, day, status, synced_at) VALUES ('default', $1, "
                         "$2::datesync.day_status, CASE WHEN $2 = 'success' THEN now() END)", day, status)
    pool = await create_pool(dsn, 2, "t")
    try:
        ids = await Schedule(pool, ["default"], AT, TZ, lookback=5, clock=clock).run_due()
    finally:
        await pool.close()
    assert len(ids) == 2
    assert await scheduled_batches(db) == [("default", y - 4 * D, y - 3 * D), ("default", y, y)]
    assert await db.fetchval("SELECT lookback FROM datesync.schedule_run") == 5


async def test_service_runs_the_schedule_as_a_daemon_side_task(dsn: str, db: asyncpg.Connection) -> None:
    """The wiring of `datesync daemon` with DATESYNC_SCHEDULE, on the real clock."""
    settings = Settings(database_url=dsn, schedule=datetime.time(0, 0), handler="noop", retry_delay=0.05,
                        poll_interval=2)
    stop = asyncio.Event()
    loaded = {"default": handlers.load("noop")}
    task = asyncio.create_task(service._serve_with(Database(dsn, dsn), settings, loaded, stop, web=False))
    try:
        yesterday = datetime.datetime.now(datetime.UTC).date() - D
        await wait_for(lambda: db.fetchval("SELECT day FROM datesync.schedule_run"))
        assert await db.fetchval("SELECT day FROM datesync.schedule_run") == yesterday
        await wait_for(lambda: db.fetchval("SELECT status = 'success' FROM datesync.day WHERE day = $1", yesterday))
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def test_slots_follow_the_wall_clock_of_the_time_zone() -> None:
    ny = ZoneInfo("America/New_York")
    at = datetime.time(2, 30)
    # 07:00 UTC on 2025-03-08 is 02:00 in New York: the 02:30 slot of that day is not due yet.
    now = datetime.datetime(2025, 3, 8, 7, 0, tzinfo=datetime.UTC)
    slot = latest_slot(now, at, ny)
    assert slot.date() == datetime.date(2025, 3, 7) and slot <= now
    # Once a day across the spring-forward night: 02:30 does not exist on 2025-03-09 and runs at 03:30 EDT.
    utc = datetime.UTC
    after = next_slot(slot, at, ny)
    skipped = next_slot(after, at, ny)
    assert [s.astimezone(utc).hour for s in (after, skipped, next_slot(skipped, at, ny))] == [7, 7, 6]
    assert latest_slot(after, at, ny) == after  # a slot is due at its own moment
    assert contiguous_ranges([datetime.date(2025, 1, d) for d in (5, 1, 2, 3, 5, 9)]) == [
        (datetime.date(2025, 1, 1), datetime.date(2025, 1, 3)),
        (datetime.date(2025, 1, 5), datetime.date(2025, 1, 5)),
        (datetime.date(2025, 1, 9), datetime.date(2025, 1, 9)),
    ]


def test_lookback_must_fit_in_a_batch() -> None:
    assert Settings.from_env({"DATESYNC_SCHEDULE_LOOKBACK": "7"}).schedule_lookback == 7
    with pytest.raises(SettingsError, match="DATESYNC_SCHEDULE_LOOKBACK=30 is invalid"):
        Settings.from_env({"DATESYNC_SCHEDULE_LOOKBACK": "30", "DATESYNC_MAX_RANGE_DAYS": "30"})
    with pytest.raises(SettingsError, match="DATESYNC_SCHEDULE_LOOKBACK='-1' is invalid"):
        Settings.from_env({"DATESYNC_SCHEDULE_LOOKBACK": "-1"})
