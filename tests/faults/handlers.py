"""Handlers that misbehave on purpose, loaded as `tests.faults.handlers:NAME`.

Every one records its runs like the demo handler (a `datesync_demo.run_log` row committed before the work, its
end written after), so the overlap checks see them. With DATESYNC_FAULTS_RUNFILE set, each run also appends a
`start` and an `end` line (wall-clock time, pid) to that file: a record of when a run really ended that does not
depend on the database being reachable, for the database-fault scenarios.

Environment: DATESYNC_DEMO_DELAY_MS / DATESYNC_DEMO_FAIL_DATES (as the demo), DATESYNC_FAULTS_SLOW_S (the slow
start), DATESYNC_FAULTS_RUNFILE.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg

from datesync.daemon.sources import SourceEnv
from datesync.daemon.sync.context import SyncContext
from datesync.daemon.sync.handlers.demo import SCHEMA as DEMO_SCHEMA
from datesync.daemon.sync.handlers.demo import Demo

FAULTS_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS faults;
-- Rows the half-writing handlers insert inside a transaction they then abandon: none may remain.
CREATE TABLE IF NOT EXISTS faults.half_rows (
    day date NOT NULL,
    n   integer NOT NULL,
    at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- What a daemon's own clock said while the database said db_time (the clock-skew scenario).
CREATE TABLE IF NOT EXISTS faults.clock (
    worker     text NOT NULL,
    local_time timestamptz NOT NULL,
    db_time    timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

_demo: Demo | None = None


def _the_demo() -> Demo:
    global _demo
    if _demo is None:
        _demo = Demo.from_env(SourceEnv())
    return _demo


async def setup(pool: asyncpg.Pool) -> None:
    """Create the demo's tables and ours (several sources of this module may run it at once)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7355608, 2)")
        await conn.execute(DEMO_SCHEMA)
        await conn.execute(FAULTS_SCHEMA)


# -- recording ------------------------------------------------------------------------------------------


def _file_line(entry: dict[str, object]) -> None:
    path = os.environ.get("DATESYNC_FAULTS_RUNFILE")
    if not path:
        return
    # One write() of one line to an O_APPEND file: lines of several processes never interleave.
    data = (json.dumps(entry) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_run(day: datetime.date, ctx: SyncContext) -> Iterator[None]:
    """Record one run in DATESYNC_FAULTS_RUNFILE: a start line now, an end line however the run ends (a
    SIGKILL leaves it without one)."""
    run = uuid.uuid4().hex
    base = {"run": run, "pid": os.getpid(), "worker": ctx.worker, "source": ctx.source, "day": day.isoformat(),
            "batch": ctx.batch_id, "attempt": ctx.attempt}
    _file_line({**base, "ev": "start", "t": time.time()})
    try:
        yield
    finally:
        _file_line({**base, "ev": "end", "t": time.time()})


async def _log_start(ctx: SyncContext, day: datetime.date) -> int:
    run_id: int = await ctx.db.fetchval(
        "INSERT INTO datesync_demo.run_log (day, source, batch_id, attempt, worker) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING id",
        day, ctx.source, ctx.batch_id, ctx.attempt, ctx.worker,
    )
    return run_id


async def _log_end(ctx: SyncContext, run_id: int, error: str | None = None) -> None:
    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        await ctx.db.execute(
            "UPDATE datesync_demo.run_log SET finished_at = clock_timestamp(), error = $2 WHERE id = $1",
            run_id, error,
        )


@contextlib.asynccontextmanager
async def logged(ctx: SyncContext, day: datetime.date) -> AsyncIterator[None]:
    """A run_log row for the run, ended with the error when it raises (or is cancelled)."""
    run_id = await _log_start(ctx, day)
    try:
        yield
    except BaseException as exc:
        await asyncio.shield(_log_end(ctx, run_id, f"{type(exc).__name__}: {exc}"[:500]))
        raise
    await _log_end(ctx, run_id)


# -- handlers -------------------------------------------------------------------------------------------


async def recorded(day: datetime.date, ctx: SyncContext) -> int:
    """The demo handler, plus the run file."""
    with file_run(day, ctx):
        return await _the_demo().sync(day, ctx)


async def clocked(day: datetime.date, ctx: SyncContext) -> int:
    """The demo handler, noting what this process's clock says (the clock-skew scenario)."""
    await ctx.db.execute("INSERT INTO faults.clock (worker, local_time) VALUES ($1, $2)", ctx.worker,
                         datetime.datetime.fromtimestamp(time.time(), datetime.UTC))
    return await _the_demo().sync(day, ctx)


class HandlerExploded(RuntimeError):
    """The handler raised on purpose."""


async def raises(day: datetime.date, ctx: SyncContext) -> int:
    async with logged(ctx, day):
        raise HandlerExploded(f"handler exploded on purpose for {day.isoformat()}")


async def hang(day: datetime.date, ctx: SyncContext) -> int:
    """Never returns: DATESYNC_TASK_TIMEOUT must end it."""
    async with logged(ctx, day):
        await asyncio.sleep(3600)
    return 0


WRONG_RESULTS: tuple[object, ...] = ("forty-two", 4.2, True, [1, 2])


async def wrong_type(day: datetime.date, ctx: SyncContext) -> object:
    """Returns something that is not an int or None (which one depends on the date)."""
    async with logged(ctx, day):
        return WRONG_RESULTS[day.toordinal() % len(WRONG_RESULTS)]


async def half_write(day: datetime.date, ctx: SyncContext) -> int:
    """Inserts some rows in a transaction, then raises: the transaction must roll back."""
    async with logged(ctx, day), ctx.db.transaction():
        for n in range(3):
            await ctx.db.execute("INSERT INTO faults.half_rows (day, n) VALUES ($1, $2)", day, n)
        raise HandlerExploded(f"failed after writing 3 rows for {day.isoformat()}")


async def half_hang(day: datetime.date, ctx: SyncContext) -> int:
    """Inserts some rows in a transaction, then hangs until the timeout cancels it mid-transaction."""
    async with logged(ctx, day), ctx.db.transaction():
        await ctx.db.execute("INSERT INTO faults.half_rows (day, n) VALUES ($1, 0)", day)
        await asyncio.sleep(3600)
    return 0


async def slow_start(day: datetime.date, ctx: SyncContext) -> int:
    """Sits idle for DATESYNC_FAULTS_SLOW_S seconds (longer than the lease) before doing the demo's work."""
    async with logged(ctx, day):
        await asyncio.sleep(float(os.environ.get("DATESYNC_FAULTS_SLOW_S", "2.5")))
        await ctx.db.execute(
            "INSERT INTO datesync_demo.daily (day, value, attempt) VALUES ($1, 0, $2) "
            "ON CONFLICT (day) DO UPDATE SET attempt = EXCLUDED.attempt", day, ctx.attempt)
    return 1


async def offline(day: datetime.date, ctx: SyncContext) -> int:
    """Records its start, then works for DATESYNC_DEMO_DELAY_MS without touching the database (an upstream
    fetch), then writes: a run that outlives a database outage."""
    with file_run(day, ctx):
        run_id = await _log_start(ctx, day)
        await asyncio.sleep(_the_demo().delay)
        await ctx.db.execute(
            "INSERT INTO datesync_demo.daily (day, value, attempt) VALUES ($1, 0, $2) "
            "ON CONFLICT (day) DO UPDATE SET attempt = EXCLUDED.attempt", day, ctx.attempt)
        await _log_end(ctx, run_id)
        return 1
