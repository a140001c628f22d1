"""The migrations and the constraints that keep bad rows out of the database."""

from __future__ import annotations

import asyncio
import datetime

import asyncpg
import pytest

from datesync.daemon.db.connect import connect
from datesync.daemon.db.migrate import available, is_current, migrate
from datesync.daemon.db.queries import q


async def test_migrations_apply_to_an_empty_database_and_are_idempotent(empty_dsn: str) -> None:
    conn = await connect(empty_dsn, "t")
    try:
        assert not await is_current(conn)
        first = await migrate(conn)
        assert first == [m.version for m in available()]
        assert await migrate(conn) == []
        assert await is_current(conn)
        tables = {r["relname"] for r in await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'datesync' AND c.relkind IN ('r', 'v')")}
        assert {"batch", "task", "day", "event", "batch_progress", "schema_migration"} <= tables
    finally:
        await conn.close()


async def test_two_processes_migrating_at_once_apply_each_file_once(empty_dsn: str) -> None:
    conns = [await connect(empty_dsn, "t") for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = sorted(v for r in results for v in r)
        assert applied == [m.version for m in available()]
        assert await conns[0].fetchval("SELECT count(*) FROM datesync.schema_migration") == len(available())
    finally:
        for c in conns:
            await c.close()


async def test_an_edited_migration_is_refused(dsn: str) -> None:
    conn = await connect(dsn, "t")
    try:
        await conn.execute("UPDATE datesync.schema_migration SET checksum = 'x' WHERE version = 1")
        with pytest.raises(Exception, match="changed after it was applied"):
            await migrate(conn)
    finally:
        await conn.close()


YESTERDAY = datetime.date.today() - datetime.timedelta(days=1)
TOMORROW = datetime.date.today() + datetime.timedelta(days=2)  # past "today" in any time zone


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("INSERT INTO datesync.batch (start_date, end_date) VALUES ('2025-10-09', '2025-10-01')",
         "start_date must not be after end_date"),
        ("INSERT INTO datesync.batch (start_date, end_date) VALUES ('2000-01-01', '2025-10-01')",
         "the limit is 3660 days"),
        (f"INSERT INTO datesync.batch (start_date, end_date) VALUES ('{TOMORROW}', '{TOMORROW}')",
         "is in the future"),
        ("INSERT INTO datesync.batch (source, start_date, end_date) VALUES ('nope', '2025-10-01', '2025-10-02')",
         'unknown source "nope"'),
        ("INSERT INTO datesync.batch (start_date, end_date) VALUES (NULL, '2025-10-01')",
         "start_date is required"),
        ("INSERT INTO datesync.batch (start_date, end_date, state) VALUES ('2025-10-01', '2025-10-02', 'done')",
         "invalid input value for enum"),
    ],
)
async def test_bad_operator_inserts_are_rejected_with_a_readable_message(
    db: asyncpg.Connection, sql: str, message: str
) -> None:
    with pytest.raises(asyncpg.PostgresError, match=message):
        await db.execute(sql)
    assert await db.fetchval("SELECT count(*) FROM datesync.batch") == 0
    assert await db.fetchval("SELECT count(*) FROM datesync.event") == 0


async def test_a_good_insert_notifies_and_logs_its_first_event(db: asyncpg.Connection, dsn: str) -> None:
    listener = await connect(dsn, "t")
    got: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("datesync_batch", lambda *a: got.put_nowait(a[3]))
    try:
        batch_id = await db.fetchval(
            "INSERT INTO datesync.batch (start_date, end_date) VALUES ('2025-10-01', '2025-10-09') RETURNING id")
        assert await asyncio.wait_for(got.get(), 5) == str(batch_id)
        row = await db.fetchrow("SELECT * FROM datesync.batch_progress WHERE batch_id = $1", batch_id)
        assert (row["state"], row["days"], row["queued"], row["done"]) == ("queued", 9, 9, 0)
        event = await db.fetchrow("SELECT * FROM datesync.event WHERE batch_id = $1", batch_id)
        assert (event["kind"], event["state"], event["data"]["days"]) == ("batch", "queued", 9)
        await db.execute("UPDATE datesync.batch SET cancel_requested = true WHERE id = $1", batch_id)
        assert await asyncio.wait_for(got.get(), 5) == str(batch_id)
    finally:
        await listener.close()


async def test_states_and_transitions_are_enforced(db: asyncpg.Connection) -> None:
    batch_id = await db.fetchval(q("batch_insert"), "default", YESTERDAY, YESTERDAY, False, None, "test")
    await db.fetchrow(q("batch_expand"), 3)
    task_id = await db.fetchval("SELECT id FROM datesync.task WHERE batch_id = $1", batch_id)
    # A running task must hold a lease.
    with pytest.raises(asyncpg.CheckViolationError, match="task_lease_iff_running"):
        await db.execute("UPDATE datesync.task SET state = 'running' WHERE id = $1", task_id)
    # A final state needs its finish time.
    with pytest.raises(asyncpg.CheckViolationError, match="task_finished_when_final"):
        await db.execute("UPDATE datesync.task SET state = 'skipped' WHERE id = $1", task_id)
    await db.execute("UPDATE datesync.task SET state = 'skipped', finished_at = now() WHERE id = $1", task_id)
    # Back from a final state by hand is refused.
    with pytest.raises(asyncpg.CheckViolationError, match="cannot move from skipped to running"):
        await db.execute("UPDATE datesync.task SET state = 'running', lease_owner = 'me', "
                         "lease_expires_at = now(), finished_at = NULL WHERE id = $1", task_id)
    with pytest.raises(asyncpg.CheckViolationError, match="range and force cannot change"):
        await db.execute("UPDATE datesync.batch SET end_date = end_date + 1 WHERE id = $1", batch_id)


async def test_one_running_sync_per_source_and_day(db: asyncpg.Connection) -> None:
    day = YESTERDAY
    for _ in range(2):
        await db.execute(q("batch_insert"), "default", day, day, True, None, "test")
        await db.fetchrow(q("batch_expand"), 3)
    ids = [r["id"] for r in await db.fetch("SELECT id FROM datesync.task ORDER BY id")]
    lease = "UPDATE datesync.task SET state = 'running', lease_owner = 'w', lease_expires_at = now() WHERE id = $1"
    await db.execute(lease, ids[0])
    with pytest.raises(asyncpg.UniqueViolationError, match="task_one_running_per_day"):
        await db.execute(lease, ids[1])
