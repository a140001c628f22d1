"""Issue 15 against real `datesync daemon` processes: handlers that block their thread or swallow cancellation
cannot outlive a SIGTERM, and a database restart (fast or immediate) under running dates charges no attempt."""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg
import pytest

from tests.faults import edge_scenarios
from tests.faults.common import SUITE, day, insert_batch, running_tasks, wait_until
from tests.faults.dbs import DedicatedServer
from tests.faults.harness import scenario
from tests.faults.procs import ROOT

EDGE = "tests.faults.edges:"


@pytest.mark.parametrize(("handler", "timeout", "grace"), [
    ("blocking_sleep", 3, 3),  # the reported case: a plain function sleeping an hour
    ("blocking_sleep", 60, 1),  # still running at the SIGTERM: handed back
    ("swallow_cancel", 60, 1),  # catches every CancelledError
    ("swallow_everything", 60, 1),  # a bare except: even the forced close cannot stop it
])
async def test_sigterm_ends_the_process_within_the_grace_whatever_the_handlers_do(
    dsn: str, handler: str, timeout: int, grace: int
) -> None:
    env = {"DATESYNC_HANDLER": EDGE + handler, "DATESYNC_TASK_TIMEOUT": str(timeout),
           "DATESYNC_SHUTDOWN_GRACE": str(grace), "DATESYNC_CONCURRENCY": "2", "DATESYNC_LEASE": "3",
           "DATESYNC_MAX_ATTEMPTS": "5"}
    async with scenario(f"sigterm_under_{handler}", 0, dsn) as s:
        conn = s.conn
        fleet = await s.fleet(env)
        proc = fleet.spawn()
        await proc.wait_log("daemon_started")
        await insert_batch(conn, day(0), day(3))
        await wait_until(lambda: _two_running(conn), 20, "the dates did not start")
        started = time.monotonic()
        code = await fleet.sigterm(proc, timeout=grace + 30)
        took = time.monotonic() - started
        print(f"{handler} timeout={timeout} grace={grace}: exited {took:.2f}s after SIGTERM")
        assert code == 0, proc.log_text()[-3000:]
        assert took < grace + 10, f"the daemon took {took:.1f}s to exit after SIGTERM (grace {grace}s)"
        held = await conn.fetch("SELECT id, state::text, attempt FROM datesync.task "
                                "WHERE state = 'running' OR lease_owner IS NOT NULL")
        assert held == [], held
        if timeout > 10:  # the dates were running at the SIGTERM: handed back, the attempt not counted
            rows = await conn.fetch("SELECT state::text, attempt FROM datesync.task ORDER BY day")
            assert [(r["state"], r["attempt"]) for r in rows] == [("queued", 0)] * 4


async def _two_running(conn: asyncpg.Connection) -> bool:
    return await running_tasks(conn) >= 2


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_database_restart_under_running_dates_charges_no_attempt(
    own_server: DedicatedServer, seed: int, mode: str
) -> None:
    """Every date works on ctx.db when PostgreSQL stops: the attempt is handed back, not counted, whichever error
    the cut surfaces as (before the fix: InterfaceError from a pool proxy asyncpg had detached)."""
    fig = await edge_scenarios.restart_under_running_dates(own_server, seed, SUITE, mode)
    assert not fig.problems, fig.failure()


@pytest.mark.timeout(240)
async def test_edge_handlers_under_two_daemons_end_cleanly_and_a_sigterm_hands_stuck_dates_back(
    dsn: str, seed: int
) -> None:
    fig = await edge_scenarios.handler_edges(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.sigterms >= 1


UNSTOPPABLE = """
import asyncio
from datesync.daemon.sync import attempt
from datesync.cli import _event_loop_run

async def forever():
    while True:
        try:
            await asyncio.sleep(0.05)
        except BaseException:
            pass

async def main():
    attempt._left_behind.add(asyncio.create_task(forever()))
    await asyncio.sleep(0.1)

_event_loop_run(main())
"""


async def test_a_process_exits_even_when_a_handler_task_can_never_be_stopped() -> None:
    """asyncio.run's clean-up cancels every task and waits for them: a task that catches everything would hold the
    process for ever. The CLI's runner exits anyway, EXIT_AFTER_S after its main coroutine ended."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", UNSTOPPABLE, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, output
    assert time.monotonic() - started < 10
    assert b"handlers_left_running" in output
