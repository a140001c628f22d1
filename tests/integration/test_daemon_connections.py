"""Issue 20: dates that start together do not each hold a connection while their handlers never wait. Since each
handler runs in a task of its own (issue 15), ten no-op dates claimed at once took ten connections, every one
held until its date's task resumed turns later; the bench's drain at concurrency 10 opened the whole pool."""

from __future__ import annotations

import asyncio
import datetime

import asyncpg

from datesync.daemon.sync.worker import ROUNDS_IN_FLIGHT
from tests.support.daemons import FAST, running_daemon, wait_batch_final

D = datetime.date(2024, 1, 1)


async def test_a_noop_drain_at_concurrency_10_keeps_to_a_few_connections(db: asyncpg.Connection, dsn: str) -> None:
    settings = FAST.replace(concurrency=10)
    async with running_daemon(dsn, settings, handler="noop") as daemon:
        peak = 0
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, daemon.pool.get_size())  # open connections, as the bench counts them
                await asyncio.sleep(0.002)

        sampler = asyncio.create_task(sample())
        batch_id = await db.fetchval("INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $2) RETURNING id",
                                     D, D + datetime.timedelta(days=599))
        row = await wait_batch_final(db, batch_id, 60)
        done.set()
        await sampler
    assert row["state"] == "succeeded"
    # The loop's claim, the rounds in flight (one connection each), a heartbeat and the dates' one shared
    # connection; the pool has 12.
    assert peak <= 3 + ROUNDS_IN_FLIGHT, f"the drain opened {peak} of the pool's {settings.pool_size} connections"
