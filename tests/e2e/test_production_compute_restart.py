"""A Neon compute suspending or restarting mid-batch: every connection drops at once, and the first reconnect
may be slow. A real `datesync daemon` must reconnect its pool and listener, rescan, lose no date, and say what
happened once per drop rather than in a storm."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from datesync.daemon.db.connect import connect
from datesync.daemon.embedded import EmbeddedPostgres
from datesync.daemon.runtime import migrate_and_register
from datesync.daemon.settings import Settings
from tests.support.daemons import counts_mismatch, kill, log_of, spawn_daemon, wait_batch_final, wait_exit
from tests.support.waiting import wait_for

DAYS = 12
CONCURRENCY = 3
# Retries are cheap and plentiful here: a date whose handler was cut off mid-query fails that attempt.
ENV = {"DATESYNC_DEMO_DELAY_MS": "250", "DATESYNC_CONCURRENCY": str(CONCURRENCY), "DATESYNC_MAX_ATTEMPTS": "6",
       "DATESYNC_LEASE": "3", "DATESYNC_POLL_INTERVAL": "2"}


def log_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def wait_listening(conn: asyncpg.Connection) -> None:
    async def listening() -> bool:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'datesync-daemon-listener'"))

    await wait_for(listening, timeout=20)


async def wait_some_done(conn: asyncpg.Connection, batch_id: int, at_least: int) -> None:
    async def done() -> bool:
        return int(await conn.fetchval(
            "SELECT count(*) FROM datesync.task WHERE batch_id = $1 AND state = 'succeeded'", batch_id)) >= at_least

    await wait_for(done, timeout=30)


async def assert_nothing_lost(conn: asyncpg.Connection, batch_id: int) -> None:
    final = await wait_batch_final(conn, batch_id, timeout=45)
    assert (final["state"], final["succeeded"]) == ("succeeded", DAYS), dict(final)
    assert await counts_mismatch(conn) == []
    assert await conn.fetchval("SELECT count(*) FROM datesync.task WHERE state = 'running'") == 0
    assert await conn.fetchval("SELECT count(*) FROM datesync.day WHERE status = 'success'") == DAYS
    assert await conn.fetchval("SELECT count(*) FROM datesync_demo.daily") == DAYS


def storm_check(text: str, drops: int) -> dict[str, int]:
    """Warnings per event name; the connection loss is reported once per drop, and nothing repeats in a storm."""
    counts: dict[str, int] = {}
    for line in log_lines(text):
        if line["level"] in ("warning", "error", "critical"):
            name = str(line["event"])
            counts[name] = counts.get(name, 0) + 1
    assert counts.get("listener_connection_lost", 0) == drops, counts
    # A running date whose own connection is cut is handed back, uncounted (one line per date); a handler that
    # fails for another reason on the way fails that attempt (one line per date). Every other part of the daemon
    # says it once per drop.
    per_date = ("date_sync_failed", "date_sync_connection_lost")
    per_part = {k: v for k, v in counts.items() if not k.startswith(per_date)}
    assert all(v <= drops for v in per_part.values()), counts
    assert counts.get("date_sync_connection_lost", 0) <= drops * CONCURRENCY, counts
    assert counts.get("date_sync_failed_will_retry", 0) <= drops * CONCURRENCY, counts
    assert "date_sync_failed" not in counts, counts
    return counts


async def insert_batch(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(
        "INSERT INTO datesync.batch (start_date, end_date) VALUES ('2025-06-01', '2025-06-12') RETURNING id"))


async def test_every_backend_terminated_twice_mid_batch_loses_nothing(db: asyncpg.Connection, dsn: str) -> None:
    proc = spawn_daemon(dsn, ENV)
    try:
        await wait_listening(db)
        batch_id = await insert_batch(db)
        for round_ in (1, 2):
            await wait_some_done(db, batch_id, 2 * round_)
            killed = await db.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()) t")
            assert killed >= 2  # at least the listener and a pool connection
            if round_ == 1:
                await wait_listening(db)  # the second drop is a second event, not part of the first
        await assert_nothing_lost(db, batch_id)
    finally:
        kill(proc, signal.SIGTERM)
        code = await wait_exit(proc, 30)
    text = log_of(proc)
    assert code == 0, text[-3000:]
    storm_check(text, drops=2)


@pytest.fixture
async def own_server() -> AsyncIterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, to stop and start (not pytest's tmp_path: see test_embedded)."""
    parent = Path(tempfile.mkdtemp(prefix="dsrestart-"))
    server = EmbeddedPostgres(parent / "data")
    await asyncio.to_thread(server.start)
    try:
        conn = await connect(server.dsn(), "datesync-test")
        try:
            await migrate_and_register(conn, Settings(), {"default": "demo"})
        finally:
            await conn.close()
        yield server
    finally:
        if server.running_pid() is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(parent, ignore_errors=True)


async def test_the_whole_server_stopped_and_started_mid_batch_loses_nothing(own_server: EmbeddedPostgres) -> None:
    dsn = own_server.dsn()
    # Leases of 9 s (a heartbeat every 3 s): the outage below stays inside one heartbeat interval, so that each
    # part of the daemon meets the outage once (the heartbeat warns on every failed beat).
    proc = spawn_daemon(dsn, {**ENV, "DATESYNC_LEASE": "9"})
    try:
        conn = await connect(dsn, "datesync-test")
        await wait_listening(conn)
        batch_id = await insert_batch(conn)
        await wait_some_done(conn, batch_id, 2)
        await conn.close()
        await asyncio.to_thread(own_server.stop)
        down_at = time.monotonic()
        await asyncio.sleep(1.0)  # down for a while: reconnects fail, then the first one that works is "slow"
        await asyncio.to_thread(own_server.start)
        conn = await connect(dsn, "datesync-test")
        try:
            await assert_nothing_lost(conn, batch_id)
            recovered_s = time.monotonic() - down_at
        finally:
            await conn.close()
    finally:
        kill(proc, signal.SIGTERM)
        code = await wait_exit(proc, 30)
    text = log_of(proc)
    assert code == 0, text[-3000:]
    storm_check(text, drops=1)
    assert recovered_s < 40
