"""Dates the API refuses are refused by the database too, in the API's words (0007_date_bounds); and rows that hold
such dates from before that migration (BC, year 1, infinity) are migrated over, read, and failed cleanly, never
crashing the daemon, the API or the CLI."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from datesync.daemon.db.connect import connect, create_pool
from datesync.daemon.db.migrate import migrate
from datesync.daemon.db.queries import q
from datesync.daemon.ops.messages import text
from datesync.daemon.ops.validation import MIN_DATE
from datesync.daemon.sync.store import Store
from tests.support.daemons import ROOT, kill, log_of, spawn_daemon, wait_batch_final, wait_exit
from tests.support.server import live_server

YESTERDAY = datetime.date.today() - datetime.timedelta(days=1)
DATE_BOUNDS = 7  # 0007_date_bounds.sql


def api_words(key: str, field: str) -> str:
    """The API's English message for `key` about `field`: the database must say exactly this."""
    return text("en", key, field=field, min=MIN_DATE.isoformat())


@pytest.mark.parametrize(
    ("start", "end", "field", "key"),
    [
        ("4713-01-01 BC", "4713-01-02 BC", "start_date", "date_too_early"),
        ("0001-01-01", "0001-01-02", "start_date", "date_too_early"),
        ("0999-12-31", "2025-10-01", "start_date", "date_too_early"),  # before the range check
        ("2025-10-01", "0500-06-01", "end_date", "date_too_early"),  # before the start-after-end check
        ("-infinity", "2025-10-01", "start_date", "date_too_early"),
        ("2025-10-01", "infinity", "end_date", "date_format"),
        ("-infinity", "infinity", "start_date", "date_too_early"),
        ("2025-10-01", "10000-01-01", "end_date", "date_format"),
        ("infinity", "infinity", "start_date", "date_format"),
    ],
)
async def test_an_operator_insert_of_a_date_the_api_refuses_is_refused_naming_the_field(
    db: asyncpg.Connection, start: str, end: str, field: str, key: str
) -> None:
    # Literal SQL, as typed into psql.
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await db.execute(f"INSERT INTO datesync.batch (start_date, end_date) VALUES ('{start}', '{end}')")
    assert refused.value.message == api_words(key, field)
    assert refused.value.detail == field
    assert await db.fetchval("SELECT count(*) FROM datesync.batch") == 0
    assert await db.fetchval("SELECT count(*) FROM datesync.event") == 0


async def test_hand_written_tasks_and_days_of_such_dates_are_refused(db: asyncpg.Connection) -> None:
    batch_id = await db.fetchval(
        "INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $1) RETURNING id", YESTERDAY)
    refusals = [
        ("INSERT INTO datesync.task (batch_id, source, day, max_attempts) "
         f"VALUES ({batch_id}, 'default', '4713-01-01 BC', 3)", "date_too_early"),
        ("INSERT INTO datesync.day (source, day, status) VALUES ('default', '0001-01-01', 'failed')",
         "date_too_early"),
        ("INSERT INTO datesync.day (source, day, status) VALUES ('default', 'infinity', 'failed')", "date_format"),
        (f"INSERT INTO datesync.day (source, day, status) VALUES ('default', '{YESTERDAY}', 'failed'); "
         "UPDATE datesync.day SET day = '-infinity'", "date_too_early"),
    ]
    for sql, key in refusals:
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await db.execute(f"BEGIN; {sql}; COMMIT")
        await db.execute("ROLLBACK")
        assert (refused.value.message, refused.value.detail) == (api_words(key, "day"), "day"), sql
    assert await db.fetchval("SELECT count(*) FROM datesync.task") == 0
    assert await db.fetchval("SELECT count(*) FROM datesync.day") == 0


# -- rows from before the migration -------------------------------------------------------------------------------


@dataclass
class OldRows:
    dsn: str
    queued_bc: int  # a psql INSERT of 4713-01-01 BC .. 4713-01-02 BC, not expanded yet
    claimed_early: int  # 0001-01-01 .. 0001-01-03, expanded; one date leased to a daemon that died on it
    good: int  # yesterday, queued after the others


@pytest.fixture
async def old_rows(empty_dsn: str) -> AsyncIterator[OldRows]:
    """A database at 0006 holding what 0006 let in: the state a crash-looping daemon leaves behind."""
    conn = await connect(empty_dsn, "datesync-test")
    try:
        await migrate(conn, through=DATE_BOUNDS - 1)
        early = await conn.fetchval("INSERT INTO datesync.batch (start_date, end_date) "
                                    "VALUES ('0001-01-01', '0001-01-03') RETURNING id")
        # What the crashed daemon did: expand the batch and lease its first date, then die decoding the answer.
        assert await conn.fetchval("SELECT count(*) FROM datesync.batch_expand_claim(3, 'dead-daemon', 1, 600, "
                                   "'{default}')") == 2
        bc = await conn.fetchval("INSERT INTO datesync.batch (start_date, end_date) "
                                 "VALUES ('4713-01-01 BC', '4713-01-02 BC') RETURNING id")
        await conn.execute("INSERT INTO datesync.day (source, day, status, synced_at) VALUES "
                           "('default', '4713-01-01 BC', 'success', now()), ('default', 'infinity', 'failed', NULL)")
        good = await conn.fetchval("INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $1) RETURNING id",
                                   YESTERDAY)
    finally:
        await conn.close()
    yield OldRows(empty_dsn, bc, early, good)


async def test_the_migration_applies_over_rows_it_would_refuse(old_rows: OldRows) -> None:
    conn = await connect(old_rows.dsn, "datesync-test")
    try:
        assert DATE_BOUNDS in await migrate(conn)
        # Every row is still there.
        assert await conn.fetchval("SELECT count(*) FROM datesync.batch") == 3
        assert await conn.fetchval("SELECT count(*) FROM datesync.task") == 3
        assert await conn.fetchval("SELECT array_agg(day::text ORDER BY day) FROM datesync.day") == [
            "4713-01-01 BC", "0001-01-01", "infinity"]
        # The dates caught mid-flight can never run: failed, with the reason, and their batch ended.
        tasks = await conn.fetch("SELECT state::text, error, lease_owner FROM datesync.task ORDER BY day")
        assert [tuple(t) for t in tasks] == [("failed", api_words("date_too_early", "day"), None)] * 3
        assert await conn.fetchval("SELECT status::text FROM datesync.day WHERE day = '0001-01-01'") == "failed"
        assert await conn.fetchrow(
            "SELECT state::text, queued, running, failed FROM datesync.batch WHERE id = $1",
            old_rows.claimed_early) == ("failed", 0, 0, 3)
        # Those tasks stay failed: neither a hand edit nor a retry makes one runnable again.
        with pytest.raises(asyncpg.CheckViolationError, match="day must not be before 1000-01-01"):
            await conn.execute("UPDATE datesync.task SET state = 'queued', finished_at = NULL, error = NULL")
        assert await conn.fetchrow(q("batch_requeue_failed"), old_rows.claimed_early) is None
        # The new rule holds from now on.
        with pytest.raises(asyncpg.CheckViolationError, match="start_date must not be before 1000-01-01"):
            await conn.execute("INSERT INTO datesync.batch (start_date, end_date) VALUES ('0001-01-01', '0001-01-01')")
    finally:
        await conn.close()


async def test_the_daemon_fails_such_batches_cleanly_and_runs_the_others(old_rows: OldRows) -> None:
    proc = spawn_daemon(old_rows.dsn, {"DATESYNC_DEMO_DELAY_MS": "0"})  # it migrates at start, as in production
    conn: asyncpg.Connection | None = None
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise AssertionError(f"the daemon died:\n{log_of(proc)[-3000:]}")
            with_schema = await asyncio.wait_for(asyncpg.connect(old_rows.dsn), 10)
            try:
                version = await with_schema.fetchval("SELECT max(version) FROM datesync.schema_migration")
            finally:
                await with_schema.close()
            if version >= DATE_BOUNDS:
                break
            await asyncio.sleep(0.1)
        conn = await connect(old_rows.dsn, "datesync-test")
        assert (await wait_batch_final(conn, old_rows.good))["state"] == "succeeded"
        bc = await wait_batch_final(conn, old_rows.queued_bc)
        assert (bc["state"], bc["start_date"].isoformat(), bc["days"]) == ("failed", "4713-01-01 BC", 2)
        assert await conn.fetchval("SELECT count(*) FROM datesync.task WHERE batch_id = $1", old_rows.queued_bc) == 0
        final = await conn.fetchrow("SELECT state, error, data FROM datesync.event WHERE batch_id = $1 "
                                    "ORDER BY id DESC LIMIT 1", old_rows.queued_bc)
        assert (final["state"], final["error"], final["data"]["final"]) == (
            "failed", api_words("date_too_early", "start_date"), True)
        assert (await wait_batch_final(conn, old_rows.claimed_early))["state"] == "failed"
        # Still running, and it still takes new work.
        assert proc.poll() is None, log_of(proc)[-3000:]
        later = await conn.fetchval("INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $1) RETURNING id",
                                    YESTERDAY - datetime.timedelta(days=1))
        assert (await wait_batch_final(conn, later))["state"] == "succeeded"
        kill(proc, signal.SIGTERM)
        assert await wait_exit(proc, 30) == 0, log_of(proc)[-3000:]
        assert "Traceback" not in log_of(proc)
        assert log_of(proc).count('"batch_refused"') == 1
    finally:
        kill(proc)
        if conn is not None:
            await conn.close()


async def test_the_api_and_the_cli_answer_over_such_rows(old_rows: OldRows) -> None:
    conn = await connect(old_rows.dsn, "datesync-test")
    try:
        await migrate(conn)
    finally:
        await conn.close()
    async with live_server(old_rows.dsn) as live, httpx.AsyncClient(base_url=live.api, timeout=10) as client:
        listed = await client.get("/batches")
        assert listed.status_code == 200, listed.text
        assert "4713-01-01 BC" in listed.text
        for batch_id in (old_rows.queued_bc, old_rows.claimed_early):
            detail = await client.get(f"/batches/{batch_id}")
            assert detail.status_code == 200, detail.text
        early = (await client.get(f"/batches/{old_rows.claimed_early}")).json()["data"]
        assert [t["day"] for t in early["tasks"]] == ["0001-01-01", "0001-01-02", "0001-01-03"]
        summary = await client.get("/")
        assert summary.status_code == 200, summary.text
        assert {r["day"] for r in summary.json()["data"]["records"]} >= {"4713-01-01 BC", "0001-01-01", "infinity"}
        assert (await client.get("/gaps", params={"from": "2025-01-01", "to": "2025-01-31"})).status_code == 200
        retried = await client.post(f"/batches/{old_rows.claimed_early}/retry")
        assert retried.status_code == 409, retried.text  # its dates can never run
        cancelled = await client.post(f"/batches/{old_rows.queued_bc}/cancel")
        assert cancelled.status_code == 202, cancelled.text
        for path in (f"/batches/{old_rows.queued_bc}/events", "/events"):
            async with client.stream("GET", path) as stream:
                assert stream.status_code == 200
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        break
    env = {**os.environ, "DATABASE_URL": old_rows.dsn, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    status = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "datesync.cli", "status"], env=env,
                                     cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "4713-01-01 BC" in status.stdout and "infinity" in status.stdout
    # Python's first date reaches the database as -infinity (asyncpg's convention): still the early-date words.
    year_one = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "datesync.cli", "batch", "0001-01-01",
                                                        "0001-01-02"], env=env, cwd=ROOT, capture_output=True,
                                       text=True, timeout=60)
    assert year_one.returncode != 0
    assert api_words("date_too_early", "start_date") in " ".join(year_one.stderr.split()), year_one.stderr


# Dates PostgreSQL holds and Python's datetime.date cannot (it has years 1 to 9999), as psql writes them.
BEYOND_PYTHON = ["4714-11-24 BC", "4713-01-01 BC", "0001-12-31 BC", "10000-01-01", "5874897-12-31", "infinity",
                 "-infinity"]


async def test_every_connection_reads_any_date_and_writes_it_back_unchanged(db: asyncpg.Connection) -> None:
    for pg_text in BEYOND_PYTHON:
        value = await db.fetchval(f"SELECT '{pg_text}'::date")
        assert isinstance(value, datetime.date)
        assert (value.isoformat(), str(value)) == (pg_text, pg_text)
        assert await db.fetchval("SELECT $1::date::text", value) == pg_text
        assert await db.fetchval("SELECT ($1::date[])[1]::text", [value]) == pg_text
    # Ordinary dates are untouched, and date.min/max still stand for -infinity/infinity (asyncpg's convention).
    assert await db.fetchval("SELECT '2025-10-01'::date") == datetime.date(2025, 10, 1)
    assert await db.fetchval("SELECT $1::date::text", datetime.date(1000, 1, 1)) == "1000-01-01"
    assert tuple(await db.fetchrow("SELECT $1::date::text, $2::date::text", datetime.date.min,
                                   datetime.date.max)) == ("-infinity", "infinity")


async def test_a_batch_let_in_past_a_disabled_trigger_is_failed_and_the_next_one_expanded(
    dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("ALTER TABLE datesync.batch DISABLE TRIGGER batch_validate")
    bad = await db.fetchval("INSERT INTO datesync.batch (start_date, end_date) "
                            "VALUES ('0500-01-01', '0500-01-05') RETURNING id")
    await db.execute("ALTER TABLE datesync.batch ENABLE TRIGGER batch_validate")
    good = await db.fetchval("INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $1) RETURNING id",
                             YESTERDAY)
    pool = await create_pool(dsn, 2, "datesync-test")
    try:
        expanded, claimed = await Store(pool, "w", 60).expand_next_batch(3, 1, ["default"])
    finally:
        await pool.close()
    # One call of the daemon's: the bad batch failed on the way, the good one expanded and its date claimed.
    assert expanded is not None and expanded["id"] == good
    assert [c.day for c in claimed] == [YESTERDAY]
    row = await db.fetchrow("SELECT state::text, started_at IS NOT NULL AS started, finished_at IS NOT NULL AS ended, "
                            "queued, failed FROM datesync.batch WHERE id = $1", bad)
    assert tuple(row) == ("failed", True, True, 0, 0)
    assert await db.fetchval("SELECT count(*) FROM datesync.task WHERE batch_id = $1", bad) == 0
    events = await db.fetch("SELECT state, error FROM datesync.event WHERE batch_id = $1 ORDER BY id", bad)
    assert [tuple(e) for e in events] == [("queued", None), ("failed", api_words("date_too_early", "start_date"))]
