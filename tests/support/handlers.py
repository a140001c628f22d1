"""Custom handlers used by tests (loaded as `tests.support.handlers:NAME`)."""

from __future__ import annotations

import asyncio
import datetime

from datesync.daemon.sync.context import SyncContext


async def hang(day: datetime.date, ctx: SyncContext) -> int:
    await asyncio.sleep(3600)
    return 0


async def wrong_type(day: datetime.date, ctx: SyncContext) -> str:
    return "forty-two"


def blocking(day: datetime.date, ctx: SyncContext) -> int:
    """A plain (sync) function: run in a thread."""
    return 7


async def pooler_safe(day: datetime.date, ctx: SyncContext) -> int:
    """What the README allows a handler through a transaction pooler: SET LOCAL and a transaction-level lock
    inside a transaction, and a prepared statement used after other queries."""
    async with ctx.db.transaction():
        await ctx.db.execute("SET LOCAL statement_timeout = '5s'")
        await ctx.db.execute("SELECT pg_advisory_xact_lock(7355608, 3)")
        assert await ctx.db.fetchval("SHOW statement_timeout") == "5s"
    stmt = await ctx.db.prepare("SELECT $1::date + 1")
    await ctx.db.fetchval("SELECT $1::int", 1)
    following = await stmt.fetchval(day)
    if following != day + datetime.timedelta(days=1):
        raise AssertionError(f"prepared statement answered {following!r}")
    return 1
