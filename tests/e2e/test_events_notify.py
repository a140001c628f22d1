"""The writing side of the event log: events are written with their transition, and each transaction wakes
listeners with at most one tiny NOTIFY, whatever the number of rows or statements."""

from __future__ import annotations

import asyncio

import asyncpg

from datesync.daemon.db.connect import connect
from datesync.daemon.db.queries import q
from tests.support.server import live_server
from tests.support.waiting import wait_for


async def _listen(dsn: str) -> tuple[asyncpg.Connection, list[str]]:
    conn = await connect(dsn, "test-listen")
    got: list[str] = []
    await conn.add_listener("datesync_event", lambda _c, _pid, _ch, payload: got.append(payload))
    return conn, got


async def test_one_empty_notify_per_transaction_never_one_per_row(dsn: str, db: asyncpg.Connection) -> None:
    listener, got = await _listen(dsn)
    try:
        async with db.transaction():
            # Three batches in one statement: three rows, each logging its "queued" event from a row trigger.
            await db.execute("INSERT INTO datesync.batch (start_date, end_date) "
                             "SELECT d, d FROM generate_series('2024-01-01'::date, '2024-01-03', '1 day') d")
            ids = [r["id"] for r in await db.fetch("SELECT id FROM datesync.batch ORDER BY id")]
            tasks = [r["id"] for r in await db.fetch(
                "INSERT INTO datesync.task (batch_id, source, day, max_attempts) "
                "SELECT id, source, start_date, 3 FROM datesync.batch ORDER BY id RETURNING id")]
            await db.execute(q("event_log_tasks"), tasks)  # three events, one statement
            await db.execute(q("event_insert_batch"), ids[0], "running", {"days": 1})
        assert await db.fetchval("SELECT count(*) FROM datesync.event") == 7
        await wait_for(lambda: asyncio.sleep(0, result=bool(got)))
        await asyncio.sleep(0.2)  # anything more would have arrived with the first: NOTIFY is sent at commit
        assert got == [""]
    finally:
        await listener.close()


async def test_a_rolled_back_transition_leaves_no_event_and_no_notify(dsn: str, db: asyncpg.Connection) -> None:
    listener, got = await _listen(dsn)
    try:
        tx = db.transaction()
        await tx.start()
        await db.execute("INSERT INTO datesync.batch (start_date, end_date) VALUES ('2024-01-01', '2024-01-02')")
        await tx.rollback()
        await asyncio.sleep(0.2)
        assert got == []
        assert await db.fetchval("SELECT count(*) FROM datesync.event") == 0
    finally:
        await listener.close()


async def test_a_daemon_run_sends_fewer_notifies_than_events(dsn: str, db: asyncpg.Connection) -> None:
    """A batch of 6 dates run by a real daemon: every transition is an event row; NOTIFYs are per transaction."""
    listener, got = await _listen(dsn)
    try:
        async with live_server(dsn, daemon=True, handler="noop"):
            batch_id = await db.fetchval("INSERT INTO datesync.batch (start_date, end_date) "
                                         "VALUES ('2024-01-01', '2024-01-06') RETURNING id")
            await wait_for(lambda: db.fetchval("SELECT state::text IN ('succeeded', 'failed') FROM datesync.batch "
                                               "WHERE id = $1", batch_id))
        states = [(r["kind"], r["state"]) for r in await db.fetch(
            "SELECT kind, state FROM datesync.event WHERE batch_id = $1 ORDER BY id", batch_id)]
        assert states[:2] == [("batch", "queued"), ("batch", "running")] and states[-1] == ("batch", "succeeded")
        assert states.count(("task", "running")) == 6 and states.count(("task", "succeeded")) == 6
        await asyncio.sleep(0.1)
        assert set(got) == {""} and len(got) < len(states)
    finally:
        await listener.close()
