"""The keep-awake pinger: our own /healthz only while dates are pending."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from daemon.db.connect import create_pool
from daemon.keepawake import KeepAwake
from tests.support.server import live_server


async def test_pings_only_while_work_is_pending(dsn: str, db: asyncpg.Connection) -> None:
    async with live_server(dsn) as live:
        pool = await create_pool(dsn, 2, "t")
        awake = KeepAwake(pool, live.base_url, interval=0.05)
        task = asyncio.create_task(awake.keep_awake())
        try:
            await asyncio.sleep(0.4)
            assert awake.pings == 0, "nothing pending: no pings (the service may sleep)"
            await db.execute("INSERT INTO datesync.batch (start_date, end_date) VALUES ('2025-01-01', '2025-01-02')")
            for _ in range(100):
                if awake.pings >= 2:
                    break
                await asyncio.sleep(0.05)
            hits = awake.pings
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await pool.close()
    assert hits >= 2
