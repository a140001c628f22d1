"""`demo`: a stand-in upstream with latency and failures, recording every run.

Writes one row per date to datesync_demo.daily and one row per invocation (day, started_at, finished_at,
worker) to datesync_demo.run_log. The run-log row is committed when the run starts, so a run cut short by a
crash still shows up (with no finished_at) and overlap checks see it.

Environment, each read as DATESYNC_<SOURCE>_DEMO_X first for a named source: DATESYNC_DEMO_DELAY_MS (default 200),
DATESYNC_DEMO_FAIL_RATE (0..1, default 0), DATESYNC_DEMO_FAIL_DATES (comma list of YYYY-MM-DD that always fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import random

import asyncpg

from datesync.daemon.db.connect import Conn
from datesync.daemon.errors import SettingsError
from datesync.daemon.sources import SourceEnv
from datesync.daemon.sync.context import SyncContext
from datesync.daemon.sync.handlers.base import Handler

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS datesync_demo;
CREATE TABLE IF NOT EXISTS datesync_demo.daily (
    day       date PRIMARY KEY,
    value     integer NOT NULL,
    attempt   integer NOT NULL,
    synced_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS datesync_demo.run_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    day         date NOT NULL,
    source      text NOT NULL,
    batch_id    bigint NOT NULL,
    attempt     integer NOT NULL,
    worker      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    error       text
);
CREATE INDEX IF NOT EXISTS run_log_day ON datesync_demo.run_log (source, day);
"""


class DemoFailure(RuntimeError):
    """The demo upstream failed (on purpose)."""


class Demo:
    def __init__(self, delay_ms: float, fail_rate: float, fail_dates: frozenset[datetime.date]) -> None:
        self.delay = delay_ms / 1000
        self.fail_rate = fail_rate
        self.fail_dates = fail_dates

    @classmethod
    def from_env(cls, env: SourceEnv) -> Demo:
        try:
            delay = float(env.get("DATESYNC_DEMO_DELAY_MS") or "200")
            if delay < 0:
                raise ValueError
        except ValueError:
            raise SettingsError(f"{env.name('DATESYNC_DEMO_DELAY_MS')} must be a number of milliseconds, 0 or more"
                                ) from None
        try:
            rate = float(env.get("DATESYNC_DEMO_FAIL_RATE") or "0")
            if not 0 <= rate <= 1:
                raise ValueError
        except ValueError:
            raise SettingsError(f"{env.name('DATESYNC_DEMO_FAIL_RATE')} must be a number from 0 to 1") from None
        raw = [d.strip() for d in (env.get("DATESYNC_DEMO_FAIL_DATES") or "").split(",") if d.strip()]
        try:
            dates = frozenset(datetime.date.fromisoformat(d) for d in raw)
        except ValueError:
            raise SettingsError(f"{env.name('DATESYNC_DEMO_FAIL_DATES')} must be a comma list of YYYY-MM-DD dates"
                                ) from None
        return cls(delay, rate, dates)

    async def setup(self, pool: asyncpg.Pool) -> None:
        # Two daemons starting together may both create the tables; serialise them.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7355608, 2)")
            await conn.execute(SCHEMA)

    async def sync(self, day: datetime.date, ctx: SyncContext) -> int:
        run_id = await ctx.db.fetchval(
            "INSERT INTO datesync_demo.run_log (day, source, batch_id, attempt, worker) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id",
            day, ctx.source, ctx.batch_id, ctx.attempt, ctx.worker,
        )
        try:
            await asyncio.sleep(self.delay)
            if day in self.fail_dates:
                raise DemoFailure(f"demo upstream has no data for {day.isoformat()}")
            if self.fail_rate and random.random() < self.fail_rate:
                raise DemoFailure("demo upstream returned 503 (random failure)")
            async with ctx.db.transaction():
                await ctx.db.execute(
                    "INSERT INTO datesync_demo.daily (day, value, attempt) VALUES ($1, $2, $3) "
                    "ON CONFLICT (day) DO UPDATE SET value = EXCLUDED.value, attempt = EXCLUDED.attempt, "
                    "synced_at = clock_timestamp()",
                    day, day.toordinal() % 1000, ctx.attempt,
                )
                await ctx.db.execute(
                    "UPDATE datesync_demo.run_log SET finished_at = clock_timestamp() WHERE id = $1", run_id
                )
            return 1
        except BaseException as exc:
            # Record the end of the run even when cancelled or timed out; shield it from the cancellation.
            await asyncio.shield(_finish_failed(ctx.db, run_id, f"{type(exc).__name__}: {exc}"))
            raise


async def _finish_failed(conn: Conn, run_id: int, error: str) -> None:
    # If the connection is gone the run stays open-ended in the log, which is the truth.
    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        await conn.execute(
            "UPDATE datesync_demo.run_log SET finished_at = clock_timestamp(), error = $2 WHERE id = $1",
            run_id, error[:500],
        )


def handler(env: SourceEnv | None = None) -> Handler:
    demo = Demo.from_env(env or SourceEnv())
    return Handler(name="demo", sync=demo.sync, setup=demo.setup, session_safe=True)
