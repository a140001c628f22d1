"""example.py: a minimal handler kept in the image (DATESYNC_HANDLER=example:sync). It records each synced date
in public.datesync_example, one row per date, upserted, so a re-run of a date changes nothing but its time."""

from __future__ import annotations

import datetime

import asyncpg

import datesync


async def setup(pool: asyncpg.Pool) -> None:
    """Create the table once, when the daemon starts."""
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS datesync_example "
                           "(day date PRIMARY KEY, synced_at timestamptz NOT NULL DEFAULT now())")


async def sync(day: datetime.date, ctx: datesync.SyncContext) -> int:
    """Upsert the date's row; one row written."""
    await ctx.db.execute("INSERT INTO datesync_example (day) VALUES ($1) "
                         "ON CONFLICT (day) DO UPDATE SET synced_at = now()", day)
    return 1
