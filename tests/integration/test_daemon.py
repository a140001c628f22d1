"""The daemon against a real PostgreSQL: counts, retries, skipping, exclusion, cancel, timeouts, reconnects."""

from __future__ import annotations

import asyncio
import datetime
import time

import asyncpg
import pytest

from datesync.daemon.db.queries import q
from tests.support.daemons import FAST, counts_mismatch, insert, overlapping_runs, running_daemon, wait_batch_final
from tests.support.waiting import wait_for

D = datetime.date


@pytest.fixture(autouse=True)
def fast_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATESYNC_DEMO_DELAY_MS", "20")
    monkeypatch.delenv("DATESYNC_DEMO_FAIL_DATES", raising=False)
    monkeypatch.delenv("DATESYNC_DEMO_FAIL_RATE", raising=False)


async def test_failing_dates_end_with_exact_counts_and_attempts(
    db: asyncpg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATESYNC_DEMO_FAIL_DATES", "2025-10-03,2025-10-07")
    async with running_daemon(dsn, FAST.replace(max_attempts=3)):
        batch_id = await insert(db, "2025-10-01", "2025-10-10")
        final = await wait_batch_final(db, batch_id)
    assert (final["state"], final["succeeded"], final["failed"], final["skipped"]) == ("failed", 8, 2, 0)
    stored = await db.fetchrow("SELECT * FROM datesync.batch WHERE id = $1", batch_id)
    assert (stored["succeeded"], stored["failed"], stored["finished_at"] is not None) == (8, 2, True)
    failed = await db.fetch("SELECT day, attempt, error FROM datesync.task WHERE batch_id = $1 AND state = 'failed' "
                            "ORDER BY day", batch_id)
    assert [(r["day"], r["attempt"]) for r in failed] == [(D(2025, 10, 3), 3), (D(2025, 10, 7), 3)]
    assert all("no data for" in r["error"] and "Traceback" not in r["error"] for r in failed)
    days = {r["day"]: r["status"] for r in await db.fetch("SELECT day, status::text FROM datesync.day")}
    assert days[D(2025, 10, 3)] == "failed" and days[D(2025, 10, 1)] == "success" and len(days) == 10
    # Each failing date ran exactly max_attempts times, each other date once.
    assert await counts_mismatch(db) == []
    runs = dict(await db.fetch("SELECT day, count(*) FROM datesync_demo.run_log GROUP BY day"))
    assert runs[D(2025, 10, 3)] == 3 and runs[D(2025, 10, 1)] == 1 and sum(runs.values()) == 8 + 6


async def test_reruns_skip_synced_dates_unless_forced(db: asyncpg.Connection, dsn: str) -> None:
    async with running_daemon(dsn):
        first = await insert(db, "2025-10-01", "2025-10-05")
        await wait_batch_final(db, first)
        again = await wait_batch_final(db, await insert(db, "2025-10-01", "2025-10-07"))
        assert (again["state"], again["skipped"], again["succeeded"]) == ("succeeded", 5, 2)
        forced = await wait_batch_final(db, await insert(db, "2025-10-01", "2025-10-03", force=True))
        assert (forced["skipped"], forced["succeeded"]) == (0, 3)
    runs = dict(await db.fetch("SELECT day, count(*) FROM datesync_demo.run_log GROUP BY day"))
    assert runs[D(2025, 10, 1)] == 2 and runs[D(2025, 10, 5)] == 1 and runs[D(2025, 10, 7)] == 1


async def test_a_psql_insert_starts_at_once_without_http(db: asyncpg.Connection, dsn: str) -> None:
    async with running_daemon(dsn, FAST.replace(poll_interval=60)):
        await asyncio.sleep(0.2)  # idle: only a NOTIFY can wake it before the 60 s poll
        started = time.monotonic()
        batch_id = await insert(db, "2025-09-01", "2025-09-01")
        final = await wait_batch_final(db, batch_id, timeout=5)
        assert final["state"] == "succeeded"
        assert time.monotonic() - started < 3


async def test_overlapping_batches_and_two_daemons_never_run_a_day_twice_at_once(
    db: asyncpg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATESYNC_DEMO_DELAY_MS", "30")
    settings = FAST.replace(concurrency=4)
    async with running_daemon(dsn, settings, worker_id="a"), running_daemon(dsn, settings, worker_id="b"):
        ids = [await insert(db, "2025-08-01", "2025-08-20", force=True),
               await insert(db, "2025-08-10", "2025-08-30", force=True),
               await insert(db, "2025-08-05", "2025-08-25", force=True)]
        finals = [await wait_batch_final(db, i) for i in ids]
    assert all(f["state"] == "succeeded" for f in finals)
    assert sum(f["succeeded"] for f in finals) == 20 + 21 + 21
    assert await overlapping_runs(db) == []
    assert await counts_mismatch(db) == []
    workers = {r["worker"] for r in await db.fetch("SELECT DISTINCT worker FROM datesync_demo.run_log")}
    assert workers == {"a", "b"}, "both daemons should have shared the work"


async def test_cancel_stops_running_dates_and_drops_queued_ones(
    db: asyncpg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATESYNC_DEMO_DELAY_MS", "10000")
    async with running_daemon(dsn, FAST.replace(concurrency=2)):
        batch_id = await insert(db, "2025-07-01", "2025-07-10")
        async def two_running() -> bool:
            sql = "SELECT count(*) FROM datesync.task WHERE batch_id = $1 AND state = 'running'"
            return bool(await db.fetchval(sql, batch_id) >= 2)

        await wait_for(two_running)
        started = time.monotonic()
        await db.execute("UPDATE datesync.batch SET cancel_requested = true WHERE id = $1", batch_id)
        final = await wait_batch_final(db, batch_id, timeout=5)
        assert time.monotonic() - started < 5, "running handlers should be interrupted, not awaited"
    assert (final["state"], final["cancelled"], final["succeeded"]) == ("cancelled", 10, 0)
    unfinished = await db.fetchval("SELECT count(*) FROM datesync_demo.run_log WHERE finished_at IS NULL")
    assert unfinished == 0
    assert await counts_mismatch(db) == []


async def test_a_hanging_handler_is_cut_off_by_the_timeout(db: asyncpg.Connection, dsn: str) -> None:
    settings = FAST.replace(task_timeout=0.3, max_attempts=2)
    async with running_daemon(dsn, settings, handler="tests.support.handlers:hang"):
        final = await wait_batch_final(db, await insert(db, "2025-06-01", "2025-06-02"), timeout=10)
    assert (final["state"], final["failed"]) == ("failed", 2)
    errors = {r["error"] for r in await db.fetch("SELECT error FROM datesync.task")}
    assert errors == {"timed out after 0.3 s"}


async def test_a_handler_returning_the_wrong_type_fails_the_attempt(db: asyncpg.Connection, dsn: str) -> None:
    async with running_daemon(dsn, FAST.replace(max_attempts=1), handler="tests.support.handlers:wrong_type"):
        final = await wait_batch_final(db, await insert(db, "2025-06-01", "2025-06-01"))
    assert final["failed"] == 1
    assert "expected an int or None" in await db.fetchval("SELECT error FROM datesync.task")


async def test_a_plain_function_handler_runs_in_a_thread(db: asyncpg.Connection, dsn: str) -> None:
    async with running_daemon(dsn, handler="tests.support.handlers:blocking"):
        final = await wait_batch_final(db, await insert(db, "2025-06-01", "2025-06-03"))
    assert final["succeeded"] == 3
    assert await db.fetchval("SELECT sum(rows_synced) FROM datesync.task") == 21


async def test_listener_reconnects_after_its_backend_is_terminated(db: asyncpg.Connection, dsn: str) -> None:
    async with running_daemon(dsn, FAST.replace(poll_interval=60)) as daemon:
        pid = daemon.listener.backend_pid
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        deadline = time.monotonic() + 5
        while daemon.listener.backend_pid == pid or not daemon.listener_connected:
            assert time.monotonic() < deadline, "listener did not reconnect"
            await asyncio.sleep(0.02)
        assert daemon.listener.reconnects == 1
        final = await wait_batch_final(db, await insert(db, "2025-05-01", "2025-05-02"), timeout=5)
        assert final["state"] == "succeeded"


async def test_a_notification_lost_while_down_is_caught_by_the_rescan(db: asyncpg.Connection, dsn: str) -> None:
    # The batch exists before the daemon starts, so no NOTIFY ever reaches it: the start-up scan must find it.
    batch_id = await insert(db, "2025-04-01", "2025-04-03")
    async with running_daemon(dsn, FAST.replace(poll_interval=60)):
        assert (await wait_batch_final(db, batch_id, timeout=5))["state"] == "succeeded"


async def test_a_ten_year_batch_expands_in_one_statement(db: asyncpg.Connection) -> None:
    await db.execute(q("batch_insert"), "default", D(2015, 1, 1), D(2015, 1, 1) + datetime.timedelta(days=3659),
                     False, None, "test")
    async with db.transaction():
        row = await db.fetchrow(q("batch_expand"), 3)
    # One statement made every task; its speed is measured by `datesync bench` (expand_3660_ms), not here.
    assert row is not None and row["tasks"] == 3660
    days = await db.fetchrow("SELECT min(day), max(day), count(DISTINCT day) FROM datesync.task")
    assert tuple(days) == (D(2015, 1, 1), D(2025, 1, 7), 3660)


async def test_expansion_claims_the_first_dates_in_its_own_transaction(db: asyncpg.Connection) -> None:
    # The wake-up is one commit: the expansion claims. Its events still read in order: the batch's "queued",
    # its "running", then its dates.
    claim = "SELECT * FROM datesync.batch_expand_claim(3, 'w', $1, 60, '{default}')"
    batch_id = await insert(db, "2025-05-01", "2025-05-04")
    rows = await db.fetch(claim, 3)
    expanded = [r for r in rows if r["kind"] == "expanded"]
    assert [(r["id"], r["days"], r["tasks"]) for r in expanded] == [(batch_id, 4, 4)]
    claimed = [r for r in rows if r["kind"] == "claimed"]
    assert [(r["day"], r["state"], r["attempt"]) for r in claimed] == [
        (D(2025, 5, d), "running", 1) for d in (1, 2, 3)]
    events = await db.fetch("SELECT kind, state, day FROM datesync.event WHERE batch_id = $1 ORDER BY id", batch_id)
    assert [(e["kind"], e["state"]) for e in events] == [("batch", "queued"), ("batch", "running")] + [
        ("task", "running")] * 3
    assert not await counts_mismatch(db)
    # Every date already synced: the expansion skips them all and ends the batch, its final event last.
    claimed += await db.fetch(q("task_claim"), "w", 10, 60.0, ["default"])
    ids = [r["id"] for r in claimed]
    await db.fetch(q("task_finish"), "w", ids, [1] * 4, ["succeeded"] * 4, [None] * 4, [0] * 4, [0.0] * 4, [], 0,
                   60.0, ["default"])
    again = await insert(db, "2025-05-01", "2025-05-03", force=False)
    rows = await db.fetch(claim, 10)
    assert {r["state"] for r in rows if r["kind"] == "claimed"} == {"skipped"}
    assert {r["batch_state"] for r in rows if r["kind"] == "claimed"} == {"succeeded"}
    events = await db.fetch("SELECT kind, state FROM datesync.event WHERE batch_id = $1 ORDER BY id", again)
    assert [(e["kind"], e["state"]) for e in events] == [("batch", "queued"), ("batch", "running")] + [
        ("task", "skipped")] * 3 + [("batch", "succeeded")]
    assert await db.fetch(claim, 10) == []


async def test_an_idle_daemon_with_a_long_poll_lets_the_database_sleep(db: asyncpg.Connection, dsn: str) -> None:
    # Neon drops every session when it suspends an idle compute. With a poll of 5 minutes or more, the daemon
    # must not reconnect at once (that would wake the compute again); it reconnects on its next wake-up.
    async with running_daemon(dsn, FAST.replace(poll_interval=600)) as daemon:
        await asyncio.sleep(0.5)  # let the start-up scan finish: the daemon is idle now
        assert await db.fetchval("SELECT pg_terminate_backend($1)", daemon.listener.backend_pid)
        await asyncio.sleep(1.5)
        listeners = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'datesync-daemon-listener'"
        assert await db.fetchval(listeners) == 0, "an idle daemon must leave the database alone"
        # A request through `datesync run`'s web side wakes the daemon in-process; it reconnects and works.
        batch_id = await insert(db, "2025-03-01", "2025-03-02")
        daemon.wake()
        assert (await wait_batch_final(db, batch_id, timeout=10))["state"] == "succeeded"
        await wait_for(lambda: db.fetchval(listeners), timeout=10)
