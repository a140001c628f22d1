"""The keep-awake pinger: our own /healthz only while the daemon has work."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from datesync.daemon.keepawake import KeepAwake
from tests.support.daemons import FAST, running_daemon, wait_batch_final
from tests.support.server import live_server


async def test_pings_only_while_work_is_pending(
    dsn: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATESYNC_DEMO_DELAY_MS", "1500")
    async with live_server(dsn) as live, running_daemon(dsn, FAST) as daemon:
        awake = KeepAwake(lambda: daemon.busy, live.base_url, interval=0.05)
        task = asyncio.create_task(awake.keep_awake())
        try:
            await asyncio.sleep(0.4)
            assert awake.pings == 0, "nothing pending: no pings (the service may sleep)"
            batch_id = await db.fetchval(
                "INSERT INTO datesync.batch (start_date, end_date) VALUES ('2025-01-01', '2025-01-02') RETURNING id")
            await wait_batch_final(db, batch_id)
            busy_pings = awake.pings
            await asyncio.sleep(0.4)
            assert awake.pings == busy_pings, "idle again: no more pings"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert busy_pings >= 2
