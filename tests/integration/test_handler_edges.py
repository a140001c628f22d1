"""Issue 15: nothing a handler produces or does stops the engine. Texts PostgreSQL refuses, huge or secret ones,
wrong row counts, blocked threads and swallowed cancellations each end their date, free its slot, and leave the
daemon able to run the next batch."""

from __future__ import annotations

import asyncio
import datetime

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tests.faults.edges import BASIC
from tests.support.daemons import FAST, counts_mismatch, running_daemon, wait_batch_final
from tests.support.waiting import wait_for

D = datetime.date(2025, 3, 1)
EDGE = "tests.faults.edges:"


async def insert(db: asyncpg.Connection, days: int, start: datetime.date = D) -> int:
    return int(await db.fetchval(
        "INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $2) RETURNING id",
        start, start + datetime.timedelta(days=days - 1)))


async def ends_clean(db: asyncpg.Connection, batch_id: int, timeout: float = 15) -> list[asyncpg.Record]:
    """Wait for the batch to end; no task left running or leased, counters exact. Returns its tasks."""
    await wait_batch_final(db, batch_id, timeout)
    tasks = await db.fetch("SELECT day, state::text, attempt, error, rows_synced, lease_owner FROM datesync.task "
                           "WHERE batch_id = $1 ORDER BY day", batch_id)
    assert all(t["state"] not in ("queued", "running") and t["lease_owner"] is None for t in tasks), tasks
    assert await counts_mismatch(db) == []
    return list(tasks)


@pytest.mark.parametrize("name", ["nul", "surrogate", "control", "huge", "basic", "unprintable", "exits"])
async def test_an_error_text_the_database_refuses_fails_the_date_cleanly(
    db: asyncpg.Connection, dsn: str, name: str
) -> None:
    settings = FAST.replace(max_attempts=2, concurrency=3)
    handler = f"{EDGE}{'exits' if name == 'exits' else name + '_error'}"
    async with running_daemon(dsn, settings, handler=handler) as daemon:
        tasks = await ends_clean(db, await insert(db, 3))
        assert [(t["state"], t["attempt"]) for t in tasks] == [("failed", 2)] * 3
        for t in tasks:
            error = t["error"]
            assert "\x00" not in error and "\x1b" not in error and "\x07" not in error
            assert len(error.encode()) <= 4200
            assert BASIC not in error and "hunter2" not in error
            error.encode("utf-8")  # no lone surrogate left
        day = await db.fetchval("SELECT error FROM datesync.day WHERE day = $1", D)
        assert day == tasks[0]["error"]
        assert not daemon.running
        # The daemon carries on: the next batch runs (and fails the same clean way).
        await ends_clean(db, await insert(db, 1, D + datetime.timedelta(days=10)))
    if name == "huge":
        assert tasks[0]["error"].endswith("characters cut]")
    if name == "nul":
        assert tasks[0]["error"] == "RuntimeError: xy"


@pytest.mark.parametrize(("name", "state", "rows", "error"), [
    ("nul_progress", "succeeded", 1, None),
    ("huge_rows", "failed", None, "ValueError: the handler returned 1000000000000000000000000000000 rows"),
    ("negative_rows", "failed", None, "ValueError: the handler returned -5 rows"),
    ("bool_rows", "failed", None, "TypeError: the handler returned bool"),
])
async def test_progress_notes_and_row_counts_are_cleaned_or_refused(
    db: asyncpg.Connection, dsn: str, name: str, state: str, rows: int | None, error: str | None
) -> None:
    async with running_daemon(dsn, FAST.replace(max_attempts=1), handler=EDGE + name):
        tasks = await ends_clean(db, await insert(db, 2))
    assert [(t["state"], t["rows_synced"]) for t in tasks] == [(state, rows)] * 2
    for t in tasks:
        assert (t["error"] or "").startswith(error or ""), t["error"]
    notes = await db.fetch("SELECT data->'progress'->>'note' AS note FROM datesync.event WHERE data ? 'progress'")
    if name == "nul_progress":
        assert notes and all("\x00" not in n["note"] and len(n["note"]) < 5000 for n in notes)


async def test_a_handler_that_swallows_cancellation_is_abandoned_after_the_timeout(
    db: asyncpg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _abandoned("task")
    settings = FAST.replace(max_attempts=1, task_timeout=1.0, concurrency=2)
    async with running_daemon(dsn, settings, handler=EDGE + "swallow_cancel") as daemon:
        tasks = await ends_clean(db, await insert(db, 2), timeout=20)
        assert [(t["state"], t["error"]) for t in tasks] == [("failed", "timed out after 1 s")] * 2
        assert not daemon.running
        # A cancel of a running batch ends it too, although its dates ignore the cancellation.
        batch_id = await insert(db, 2, D + datetime.timedelta(days=20))
        await _wait_running(db, batch_id)
        await db.execute("UPDATE datesync.batch SET cancel_requested = true WHERE id = $1", batch_id)
        tasks = await ends_clean(db, batch_id, timeout=20)
        assert {t["state"] for t in tasks} == {"cancelled"}
    # Each date whose handler started (a cancel may reach a date before its claim: attempt 0) was abandoned, the
    # count rising as its unwind time runs out.
    started = 2 + sum(1 for t in tasks if t["attempt"] > 0)

    async def counted() -> bool:
        return _abandoned("task") - before >= started

    await wait_for(counted, timeout=10)


async def test_a_blocked_thread_frees_its_slot_and_later_sync_handlers_still_run(
    db: asyncpg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More dates block their threads than the default thread pool has workers; then a quick plain function."""
    monkeypatch.setenv("DATESYNC_EDGE_SLEEP_S", "30")
    before = _abandoned("thread")
    settings = FAST.replace(max_attempts=1, task_timeout=0.5, concurrency=8)
    async with running_daemon(dsn, settings, handler=EDGE + "blocking_sleep"):
        tasks = await ends_clean(db, await insert(db, 40), timeout=30)
    assert {t["state"] for t in tasks} == {"failed"}
    assert _abandoned("thread") - before == 40
    async with running_daemon(dsn, settings, handler=EDGE + "blocking_quick"):
        tasks = await ends_clean(db, await insert(db, 5, D + datetime.timedelta(days=100)), timeout=10)
    assert [(t["state"], t["rows_synced"]) for t in tasks] == [("succeeded", 2)] * 5


async def _wait_running(db: asyncpg.Connection, batch_id: int) -> None:
    for _ in range(200):
        if await db.fetchval("SELECT count(*) FROM datesync.task WHERE batch_id = $1 AND state = 'running'",
                             batch_id):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no date started")


def _abandoned(kind: str) -> float:
    value = REGISTRY.get_sample_value("datesync_handlers_abandoned_total", {"kind": kind})
    return value or 0.0


async def test_a_handler_that_closes_its_own_connection_is_not_handed_back_for_ever(
    db: asyncpg.Connection, dsn: str
) -> None:
    """Its connection is closed when it raises, which looks like a lost database: handed back (uncounted) a few
    times in a row, then the attempts count and the date fails."""
    from tests.faults import edges

    day = D + datetime.timedelta(days=200)
    edges.PLANS[day] = ("close_db",)
    async with running_daemon(dsn, FAST.replace(max_attempts=2), handler=EDGE + "planned"):
        tasks = await ends_clean(db, await insert(db, 1, day), timeout=20)
    assert [(t["state"], t["attempt"]) for t in tasks] == [("failed", 2)]
    assert "InterfaceError" in tasks[0]["error"]
    runs = await db.fetchval("SELECT count(*) FROM datesync.event WHERE task_id IS NOT NULL AND state = 'running'")
    assert runs == 5 + 2  # MAX_LOST_HANDBACKS uncounted runs, then the two counted attempts


@pytest.mark.parametrize("escape", ["error", "rows"])
async def test_an_outcome_the_database_refuses_is_written_apart_and_never_holds_a_slot(
    db: asyncpg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch, escape: str
) -> None:
    """The boundary switched off (as if it missed something): the finish write is refused for its data (NUL in
    the error; a row count asyncpg cannot encode). The outcomes of the same write that are fine are written as
    they are, the refused one in its fallback form, and every slot is freed; the daemon goes on."""
    from datesync.daemon.sync import worker

    if escape == "error":
        monkeypatch.setattr(worker, "error_text", lambda exc: f"{type(exc).__name__}: {exc}")
        handler, expected = "nul_error", ("failed", None, "RuntimeError: xy")
    else:
        monkeypatch.setattr(worker, "row_count", lambda result: result)
        handler, expected = "huge_rows", ("succeeded", None, None)
    settings = FAST.replace(max_attempts=1, concurrency=3)
    async with running_daemon(dsn, settings, handler=EDGE + handler) as daemon:
        tasks = await ends_clean(db, await insert(db, 3))
        assert [(t["state"], t["rows_synced"], t["error"]) for t in tasks] == [expected] * 3
        assert not daemon.running
        monkeypatch.undo()
        await ends_clean(db, await insert(db, 1, D + datetime.timedelta(days=30)))
