"""Real `datesync daemon` processes: SIGKILL loses nothing, SIGTERM hands work back."""

from __future__ import annotations

import asyncio
import datetime
import signal
import time

import asyncpg

from tests.support.daemons import (
    counts_mismatch,
    kill,
    log_of,
    overlapping_runs,
    spawn_daemon,
    wait_batch_final,
    wait_exit,
)

D = datetime.date


async def running_count(db: asyncpg.Connection, batch_id: int) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM datesync.task WHERE batch_id = $1 AND state = 'running'", batch_id))


async def wait_running(db: asyncpg.Connection, batch_id: int, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while await running_count(db, batch_id) < n:
        assert time.monotonic() < deadline, f"fewer than {n} dates running after {timeout}s"
        await asyncio.sleep(0.05)


async def test_a_sigkilled_daemon_loses_nothing_and_its_dates_are_taken_over(
    db: asyncpg.Connection, dsn: str
) -> None:
    env = {"DATESYNC_DEMO_DELAY_MS": "1500", "DATESYNC_CONCURRENCY": "3", "DATESYNC_LEASE": "2"}
    victim = spawn_daemon(dsn, env)
    survivor = None
    try:
        batch_id = await db.fetchval(
            "INSERT INTO datesync.batch (start_date, end_date) VALUES ('2025-03-01', '2025-03-06') RETURNING id")
        await wait_running(db, batch_id, 3)
        kill(victim, signal.SIGKILL)
        await wait_exit(victim, 5)
        died_by = await db.fetchval("SELECT now()")
        leased = await db.fetchval("SELECT count(*) FROM datesync.task WHERE state = 'running'")
        assert leased == 3, "the dead daemon's leases are still on the rows until they expire"
        # The survivor holds longer leases: only the victim's must expire for this test.
        survivor = spawn_daemon(dsn, {**env, "DATESYNC_DEMO_DELAY_MS": "50", "DATESYNC_LEASE": "30"})
        final = await wait_batch_final(db, batch_id, timeout=40)
    finally:
        for proc in (victim, survivor):
            if proc is not None:
                kill(proc, signal.SIGTERM)
                await wait_exit(proc, 30)
    assert (final["state"], final["succeeded"]) == ("succeeded", 6)
    # The three interrupted dates ran again (their first attempt counted), and never alongside another run.
    retried = await db.fetch("SELECT day, attempt FROM datesync.task WHERE attempt > 1 ORDER BY day")
    assert len(retried) == 3 and all(r["attempt"] == 2 for r in retried)
    assert await overlapping_runs(db, died_by) == []
    assert await db.fetchval("SELECT count(*) FROM datesync_demo.daily") == 6
    assert await counts_mismatch(db) == []


async def test_sigterm_hands_running_dates_back_at_once(db: asyncpg.Connection, dsn: str) -> None:
    env = {"DATESYNC_DEMO_DELAY_MS": "60000", "DATESYNC_CONCURRENCY": "2", "DATESYNC_LEASE": "60",
           "DATESYNC_SHUTDOWN_GRACE": "0.5"}
    proc = spawn_daemon(dsn, env)
    try:
        batch_id = await db.fetchval(
            "INSERT INTO datesync.batch (start_date, end_date) VALUES ('2025-02-01', '2025-02-04') RETURNING id")
        await wait_running(db, batch_id, 2)
        # A short grace so that the hand-back is what we observe; the default is 20 s.
        kill(proc, signal.SIGTERM)
        code = await wait_exit(proc, 15)
    finally:
        kill(proc, signal.SIGKILL)
    assert code == 0, log_of(proc)[-3000:]
    rows = await db.fetch("SELECT state::text, attempt, lease_owner FROM datesync.task WHERE batch_id = $1", batch_id)
    assert {r["state"] for r in rows} == {"queued"}, "nothing may be left running (or lost)"
    assert all(r["lease_owner"] is None and r["attempt"] == 0 for r in rows), "an interrupted attempt does not count"
    # The next daemon resumes at once (no lease to wait for).
    resumed = spawn_daemon(dsn, {**env, "DATESYNC_DEMO_DELAY_MS": "20"})
    try:
        final = await wait_batch_final(db, batch_id, timeout=20)
    finally:
        kill(resumed, signal.SIGTERM)
        await wait_exit(resumed, 30)
    assert final["succeeded"] == 4
