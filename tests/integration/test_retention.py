"""Retention against a real PostgreSQL: what an old finished batch loses and keeps, the ledger of failed dates,
two pruners at once beside a working daemon, and DATESYNC_RETENTION=0 and the default in a real daemon process."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json

import asyncpg
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from datesync.daemon.db.connect import connect, create_pool
from datesync.daemon.db.queries import q
from datesync.daemon.retention import Retention
from datesync.daemon.settings import Settings
from tests.support.daemons import (
    FAST,
    counts_mismatch,
    insert,
    kill,
    log_of,
    running_daemon,
    spawn_daemon,
    wait_batch_final,
    wait_exit,
)
from tests.support.retention import backdate, footprint
from tests.support.waiting import wait_for

D = datetime.date


@pytest.fixture(autouse=True)
def fast_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATESYNC_DEMO_DELAY_MS", "5")
    monkeypatch.setenv("DATESYNC_DEMO_FAIL_DATES", "2025-10-03")
    monkeypatch.delenv("DATESYNC_DEMO_FAIL_RATE", raising=False)


async def test_an_old_finished_batch_loses_tasks_and_events_and_keeps_its_counts_and_days(
    db: asyncpg.Connection, dsn: str
) -> None:
    async with running_daemon(dsn, FAST.replace(max_attempts=2)):
        old = await insert(db, "2025-10-01", "2025-10-05")
        recent = await insert(db, "2025-11-01", "2025-11-03")
        await wait_batch_final(db, old)
        await wait_batch_final(db, recent)
    # Unfinished batches are never touched: one queued, one running (expanded, its dates queued).
    running = await insert(db, "2025-12-01", "2025-12-02")
    await db.fetchrow(q("batch_expand"), 3)
    queued = await insert(db, "2025-12-05", "2025-12-06")
    await backdate(db, [old], days=31)
    await backdate(db, [recent], days=29)
    # A failed day row whose error went missing (an older version, a hand edit) gets its task's error back.
    task_error = await db.fetchval("SELECT error FROM datesync.task WHERE batch_id = $1 AND day = '2025-10-03'", old)
    assert "no data for 2025-10-03" in task_error
    await db.execute("UPDATE datesync.day SET error = NULL WHERE day = '2025-10-03'")
    before = {b: await footprint(db, b) for b in (old, recent, running, queued)}
    days_before = [dict(r) for r in await db.fetch("SELECT * FROM datesync.day ORDER BY source, day")]
    keys_before = await db.fetchval("SELECT count(*) FROM datesync.request_key")
    final_event = await db.fetchval("SELECT max(id) FROM datesync.event WHERE batch_id = $1 AND kind = 'batch'", old)
    last_deleted = await db.fetchval("SELECT max(id) FROM datesync.event WHERE batch_id = $1 AND id < $2", old,
                                     final_event)

    counted_before = REGISTRY.get_sample_value("datesync_retention_pruned_total", {"kind": "tasks"}) or 0.0
    pool = await create_pool(dsn, 2, "datesync-test-retention")
    try:
        pruner = Retention(pool, 30, step_rows=3)  # a few rows per transaction: several steps for one batch
        done = await pruner.prune_once()
        again = await pruner.prune_once()
    finally:
        await pool.close()
    assert REGISTRY.get_sample_value("datesync_retention_pruned_total", {"kind": "tasks"}) == counted_before + 5

    assert (done.batches, done.tasks, done.events) == (1, 5, before[old]["events"] - 1)
    assert done.steps >= 3, "small transactions, not one"
    assert (again.batches, again.tasks, again.events) == (0, 0, 0), "a second pass finds nothing"
    after = {b: await footprint(db, b) for b in (old, recent, running, queued)}
    assert after[old] == {**before[old], "tasks": 0, "events": 1}, "counts, state and times stay"
    assert (after[old]["succeeded"], after[old]["failed"]) == (4, 1)
    assert await db.fetchval("SELECT id FROM datesync.event WHERE batch_id = $1", old) == final_event
    assert await db.fetchval("SELECT pruned_at IS NOT NULL FROM datesync.batch WHERE id = $1", old)
    for untouched in (recent, running, queued):
        assert after[untouched] == before[untouched]
    assert await db.fetchval("SELECT count(*) FROM datesync.batch WHERE pruned_at IS NOT NULL") == 1
    # The ledger: every day row stays; the failed date's error is back on it, the rest is as it was.
    days_after = [dict(r) for r in await db.fetch("SELECT * FROM datesync.day ORDER BY source, day")]
    failed = next(d for d in days_after if d["day"] == D(2025, 10, 3))
    assert failed["status"] == "failed" and failed["error"] == task_error
    assert [{**d, "error": None} for d in days_after] == [{**d, "error": None} for d in days_before]
    assert await db.fetchval("SELECT count(*) FROM datesync.request_key") == keys_before
    assert await db.fetchval(q("retention_horizon_get")) == last_deleted, "readers learn how far events are gone"
    # The counting trigger kept the pruned batch's counts: only it differs from a count of its (no) tasks.
    assert [r["id"] for r in await counts_mismatch(db)] == [old]
    # A retry of the pruned batch has nothing to requeue; its row stays final.
    assert await db.fetchrow(q("batch_requeue_failed"), old) is None


async def test_two_pruners_beside_a_working_daemon_share_the_work_without_errors_or_double_counting(
    db: asyncpg.Connection, dsn: str
) -> None:
    async with running_daemon(dsn, FAST.replace(concurrency=8), handler="noop"):
        old = [await insert(db, f"2024-{m:02d}-01", f"2024-{m:02d}-28") for m in range(1, 9)]
        for batch_id in old:
            await wait_batch_final(db, batch_id)
        await backdate(db, old, days=60)
        before = {b: await footprint(db, b) for b in old}
        tasks_total = sum(int(f["tasks"]) for f in before.values())
        events_total = sum(int(f["events"]) for f in before.values())
        # The engine keeps working meanwhile: a new batch drains while two daemons' pruners run.
        busy = await insert(db, "2023-01-01", "2023-06-30", force=True)
        pools = [await create_pool(dsn, 2, f"datesync-test-pruner-{i}") for i in range(2)]
        try:
            results = await asyncio.gather(*(Retention(p, 30, step_rows=7).prune_once() for p in pools))
        finally:
            for p in pools:
                await p.close()
        assert (await wait_batch_final(db, busy))["succeeded"] == 181
    assert sum(r.batches for r in results) == len(old)
    assert all(r.batches > 0 for r in results), f"each pruner took batches of its own: {results}"
    assert sum(r.tasks for r in results) == tasks_total
    assert sum(r.events for r in results) == events_total - len(old), "every event but each batch's final one"
    for batch_id in old:
        assert await footprint(db, batch_id) == {**before[batch_id], "tasks": 0, "events": 1}
    assert sorted(r["id"] for r in await counts_mismatch(db)) == sorted(old), "the working batch's counts are exact"
    assert await db.fetchval("SELECT count(*) FROM datesync.task WHERE batch_id = $1", busy) == 181


def test_retention_setting_defaults_to_30_days_and_0_keeps_everything() -> None:
    assert Settings.from_env({}).retention_days == 30
    assert Settings.from_env({"DATESYNC_RETENTION": "0"}).retention_days == 0
    assert Settings.from_env({"DATESYNC_RETENTION": "365"}).retention_days == 365
    with pytest.raises(ValueError, match="0 keeps everything"):
        Retention(None, 0)


async def test_a_daemon_prunes_at_start_and_says_what_unless_retention_is_0(db: asyncpg.Connection, dsn: str) -> None:
    async with running_daemon(dsn, FAST.replace(max_attempts=1)):
        batch_id = await insert(db, "2025-10-01", "2025-10-04")
        await wait_batch_final(db, batch_id)
    await backdate(db, [batch_id], days=400)
    before = await footprint(db, batch_id)

    keeper = spawn_daemon(dsn, {"DATESYNC_RETENTION": "0", "DATESYNC_HANDLER": "noop"})
    try:
        await wait_for(lambda: _logged(keeper, "daemon_started"), 20)
        await asyncio.sleep(1)
        assert await footprint(db, batch_id) == before, "DATESYNC_RETENTION=0 keeps everything"
        assert "retention" not in log_of(keeper)
    finally:
        kill(keeper)
        await wait_exit(keeper, 10)

    pruner = spawn_daemon(dsn, {"DATESYNC_RETENTION": "365", "DATESYNC_HANDLER": "noop"})
    try:
        line = await wait_for(lambda: _logged(pruner, "retention_pruned"), 20)
    finally:
        kill(pruner)
        await wait_exit(pruner, 10)
    assert (line["days"], line["batches"], line["tasks"], line["events"]) == (365, 1, 4, before["events"] - 1)
    assert await footprint(db, batch_id) == {**before, "tasks": 0, "events": 1}


async def test_a_daemon_whose_clock_runs_ahead_prunes_nothing_early(db: asyncpg.Connection, dsn: str) -> None:
    async with running_daemon(dsn, FAST, handler="noop"):
        batch_id = await insert(db, "2025-10-01", "2025-10-02")
        await wait_batch_final(db, batch_id)
    before = await footprint(db, batch_id)
    # Forty days ahead by its own clock (the faults suite's shim), a day's retention: the batch is minutes old by
    # the database's clock, which is the one that counts.
    ahead = spawn_daemon(dsn, {"DATESYNC_RETENTION": "1", "DATESYNC_HANDLER": "noop",
                               "FAULTS_CLOCK_OFFSET": str(40 * 86400)}, entry="tests.faults.clockshim")
    try:
        line = await wait_for(lambda: _logged(ahead, "retention_nothing_to_prune"), 20)
    finally:
        kill(ahead)
        await wait_exit(ahead, 10)
    assert line["batches"] == 0
    assert await footprint(db, batch_id) == before


async def _logged(proc: object, event: str) -> dict[str, object] | None:
    for raw in log_of(proc).splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("event") == event:
            return dict(line)
    return None


async def test_a_hand_delete_of_tasks_still_takes_them_out_of_the_counts(db: asyncpg.Connection) -> None:
    batch_id = await insert(db, "2025-09-01", "2025-09-03")
    await db.fetchrow(q("batch_expand"), 3)
    assert (await footprint(db, batch_id))["queued"] == 3
    await db.execute("DELETE FROM datesync.task WHERE batch_id = $1 AND day = '2025-09-01'", batch_id)
    assert (await footprint(db, batch_id))["queued"] == 2, "only the pruner's deletes leave the counts alone"


async def test_pruning_neither_waits_for_nor_blocks_the_event_log_writers(db: asyncpg.Connection, dsn: str) -> None:
    async with running_daemon(dsn, FAST, handler="noop"):
        old, older = await insert(db, "2025-08-01", "2025-08-05"), await insert(db, "2025-07-01", "2025-07-05")
        await wait_batch_final(db, old)
        await wait_batch_final(db, older)
    live = await insert(db, "2025-08-10", "2025-08-10")
    await backdate(db, [older], days=40)
    await backdate(db, [old], days=20)
    event_sql = "INSERT INTO datesync.event (batch_id, kind, state) VALUES ($1, 'task', 'running')"
    writer = await connect(dsn, "datesync-test-writer")
    pool = await create_pool(dsn, 2, "datesync-test-retention")
    try:
        # A writer inside its transaction holds the commit-order lock (event_serialize) until it commits: deleting
        # events does not take that lock, so pruning goes on.
        async with writer.transaction():
            await writer.execute(event_sql, live)
            done = await asyncio.wait_for(Retention(pool, 30, step_rows=2).prune_once(), 10)
        assert (done.batches, (await footprint(db, older))["tasks"]) == (1, 0)
        # A prune step not yet committed (its deleted rows locked) holds nothing an event writer waits for.
        async with pool.acquire() as pruning, pruning.transaction():
            step = await pruning.fetchrow(q("batch_prune_step"), 10, 2)  # finished more than 10 days ago
            assert step is not None and (step["batch_id"], step["tasks"], step["events"]) == (old, 2, 2)
            await asyncio.wait_for(writer.execute(event_sql, live), 5)
    finally:
        await writer.close()
        await pool.close()


async def test_hourly_passes_wait_for_work_when_the_database_may_sleep(dsn: str) -> None:
    busy = False
    pool = await create_pool(dsn, 2, "datesync-test-retention")
    pruner = Retention(pool, 30, may_sleep=True, awake=lambda: busy, interval=0.1, awake_check=0.05)

    def passes(logs: list[dict[str, object]]) -> int:
        return sum(1 for e in logs if e["event"] in ("retention_pruned", "retention_nothing_to_prune"))

    try:
        with capture_logs() as logs:
            loop = asyncio.create_task(pruner.prune_batches())
            await wait_for(lambda: _true(passes(logs) == 1), 5)  # the pass at start runs whatever the database does
            await asyncio.sleep(0.5)
            assert passes(logs) == 1, "an idle daemon does not wake a sleeping database to prune"
            busy = True  # work keeps the database awake anyway: the next pass runs
            await wait_for(lambda: _true(passes(logs) >= 2), 5)
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
    finally:
        await pool.close()


async def _true(value: bool) -> bool:
    return value
