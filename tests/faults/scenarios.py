"""The fault scenarios, shared by the suite (tests/faults/test_*.py, Scale SUITE) and the soak (soak.py, Scale
SOAK). Each takes a database (or a server it may restart), a seed and a scale, does its damage with real
`datesync daemon` processes, waits for the dust to settle and returns its Figures, whose `problems` list every
broken invariant (tests.faults.invariants). Randomness comes only from the seed, so a failure is replayable.
Each sets itself up and tears itself down through tests.faults.harness.scenario.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from tests.faults import invariants
from tests.faults.common import (
    Figures,
    Scale,
    dates_csv,
    day,
    insert_batch,
    running_tasks,
    terminate,
    wait_all_final,
    wait_until,
)
from tests.faults.dbs import DedicatedServer
from tests.faults.harness import scenario
from tests.faults.procs import Fleet, Proc, free_port, skewed_prefix, spawn_daemon

Scenario = Callable[[str, int, Scale], Awaitable[Figures]]


# -- process faults -------------------------------------------------------------------------------------


async def random_kills(dsn: str, seed: int, scale: Scale) -> Figures:
    """Two daemons over one long batch; SIGKILL one at a random moment (start-up, claim, mid-date, finish),
    respawn it at once, again and again. The survivor and the respawned daemons take the dead one's dates
    over when their leases expire."""
    async with scenario("random_kills", seed, dsn) as s:
        rng, fig, conn = s.rng, s.fig, s.conn
        n = scale.kill_dates
        fail = {day(rng.randrange(n)) for _ in range(2)}
        fleet = await s.fleet({"DATESYNC_DEMO_DELAY_MS": str(scale.kill_delay_ms), "DATESYNC_CONCURRENCY": "4",
                               "DATESYNC_LEASE": "1", "DATESYNC_POLL_INTERVAL": "1", "DATESYNC_MAX_ATTEMPTS": "3",
                               "DATESYNC_DEMO_FAIL_DATES": dates_csv(fail)})
        fleet.spawn()
        fleet.spawn()
        batch_id = await insert_batch(conn, day(0), day(n - 1))
        while fleet.kills < scale.kills:
            await asyncio.sleep(rng.uniform(0.15, 0.9))
            state = await conn.fetchval("SELECT state::text FROM datesync.batch WHERE id = $1", batch_id)
            if state not in ("queued", "running"):
                fig.problems.append(f"the batch ended after only {fleet.kills} kills; make the dates slower")
                break
            await fleet.sigkill(rng.choice(fleet.alive()))
            fleet.spawn()
        await wait_all_final(dsn, 120)
        await s.settle(fleet, invariants.Rules(max_attempts=3, fail_dates=frozenset(fail)))
        return fig


async def kill_during_finish(dsn: str, seed: int, scale: Scale) -> Figures:
    """SIGKILL a daemon while its finish transaction is committing: the test holds the lock the finish takes
    last (event_serialize), waits until the daemon's backend is inside task_finish waiting for it, kills the
    daemon, then either lets the orphaned transaction commit or terminates it (alternately). Either way the
    date ends exactly once; a fresh daemon takes over what the dead one held."""
    async with scenario("kill_during_finish", seed, dsn) as s:
        rng, fig, conn = s.rng, s.fig, s.conn
        lock = await s.connect()
        fleet = await s.fleet({"DATESYNC_DEMO_DELAY_MS": "300", "DATESYNC_CONCURRENCY": "2", "DATESYNC_LEASE": "1",
                               "DATESYNC_POLL_INTERVAL": "1"})
        for round_ in range(scale.finish_kill_rounds):
            commit = round_ % 2 == 0
            victim = fleet.spawn({"DATESYNC_DEMO_DELAY_MS": str(rng.randint(150, 400))})
            batch_id = await insert_batch(conn, day(10 * round_), day(10 * round_ + 5))
            await wait_until(functools.partial(_has_running, conn, batch_id), 20, "no date started")
            await kill_inside_finish(conn, lock, fleet, victim, commit=commit)
            ended = await conn.fetchval("SELECT count(*) FROM datesync.task WHERE batch_id = $1 AND "
                                        "finished_at IS NOT NULL", batch_id)
            if commit and ended == 0:
                fig.problems.append("the finish the dead daemon was committing did not commit")
            if not commit and ended != 0:
                fig.problems.append("the terminated finish committed anyway")
            rescuer = fleet.spawn()
            await wait_all_final(dsn, 60)
            await fleet.sigterm(rescuer)
        await s.settle(fleet, invariants.Rules())
        return fig


async def _has_running(conn: asyncpg.Connection, batch_id: int) -> bool:
    return await running_tasks(conn, batch_id) > 0


async def kill_inside_finish(conn: asyncpg.Connection, lock: asyncpg.Connection, fleet: Fleet, victim: Proc, *,
                             commit: bool) -> None:
    """Hold the lock a finish takes last (event_serialize) on `lock`, wait until a daemon's backend is inside
    task_finish waiting for it, SIGKILL `victim`, then let the orphaned transaction commit or terminate it; return
    once that backend is gone (it commits, or has rolled back, on its own)."""
    tx = lock.transaction()
    await tx.start()
    try:
        await lock.execute("SELECT pg_advisory_xact_lock(7355608, 1)")
        finishing = await _wait_finish_blocked(conn, 20)
        await fleet.sigkill(victim)
        if not commit:
            await conn.execute("SELECT pg_terminate_backend($1)", finishing)
    finally:
        await tx.commit()
    await wait_until(functools.partial(_backend_gone, conn, finishing), 20, "the orphaned backend lingers")


async def _wait_finish_blocked(conn: asyncpg.Connection, timeout: float) -> int:
    """The pid of a daemon backend inside task_finish, waiting for the event lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'datesync-daemon' "
            "AND query LIKE '%task_finish%' AND wait_event_type = 'Lock' LIMIT 1")
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError("no finish waited for the event lock")


async def _backend_gone(conn: asyncpg.Connection, pid: int) -> bool:
    return not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", pid)


async def sigterm_mid_batch(dsn: str, seed: int, scale: Scale) -> Figures:
    """SIGTERM a daemon at a random moment mid-batch, several times: it exits 0 within its grace, hands its
    running dates back at once (queued, no lease, the interrupted attempt not counted) and writes what finished;
    the next daemon carries on."""
    async with scenario("sigterm_mid_batch", seed, dsn) as s:
        rng, fig, conn = s.rng, s.fig, s.conn
        fleet = await s.fleet({"DATESYNC_DEMO_DELAY_MS": "400", "DATESYNC_CONCURRENCY": "3", "DATESYNC_LEASE": "5",
                               "DATESYNC_SHUTDOWN_GRACE": "0.3"})
        await insert_batch(conn, day(0), day(29))
        for _ in range(scale.sigterms):
            proc = fleet.spawn()
            await proc.wait_log("daemon_started")
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            code = await fleet.sigterm(proc, timeout=15)
            if code != 0:
                fig.problems.append(f"SIGTERM: exit code {code}")
            if "daemon_stopped_with_unwritten_tasks" in proc.log_text():
                fig.problems.append("SIGTERM: the daemon stopped with unwritten outcomes")
            held = await conn.fetch("SELECT id, day FROM datesync.task WHERE state = 'running' "
                                    "OR lease_owner IS NOT NULL")
            fig.problems += [f"SIGTERM: task {r['id']} ({r['day']}) still running or leased" for r in held]
        fleet.spawn()
        await wait_all_final(dsn, 60)
        await s.settle(fleet, invariants.Rules())
        # A handed-back attempt does not count: each date's attempts are its runs not cut short by a SIGTERM. A run
        # cut short records a CancelledError, or no end at all when its connection went back to the pool before the
        # demo handler's shielded update of its row ran (finished_at stays NULL: "cut short", in run_log's terms).
        # A run whose own commit landed just as the stop cut it short is handed back all the same and runs again
        # (at least once): it may count, but only as one of that date's hand-backs (its 'queued' events).
        for row in await conn.fetch(
            """
            SELECT t.id, t.day, t.attempt, r.counted, h.handbacks
            FROM datesync.task t
            CROSS JOIN LATERAL (
                SELECT count(*) AS counted FROM datesync_demo.run_log l
                WHERE l.batch_id = t.batch_id AND l.day = t.day AND l.finished_at IS NOT NULL
                  AND (l.error IS NULL OR l.error NOT LIKE 'CancelledError%')) r
            CROSS JOIN LATERAL (
                SELECT count(*) AS handbacks FROM datesync.event e
                WHERE e.task_id = t.id AND e.kind = 'task' AND e.state = 'queued') h
            WHERE NOT (t.attempt <= r.counted AND r.counted <= t.attempt + h.handbacks)
            """
        ):
            fig.problems.append(f"task {row['id']} ({row['day']}) has attempt {row['attempt']} but "
                                f"{row['counted']} counted runs")
        return fig


async def pipelined_kills(dsn: str, seed: int, scale: Scale) -> Figures:
    """Three daemons at concurrency 10 with quick dates, so they pipeline their rounds (dates leased ahead and
    waiting for a slot, rounds in flight: daemon/sync/worker.py, PIPELINE_*), SIGKILLed and SIGTERMed
    alternately at random moments, each replaced at once. A killed daemon's dates leased ahead wait for their
    leases to expire like its running ones; a stopped daemon hands them back unrun."""
    async with scenario("pipelined_kills", seed, dsn) as s:
        rng, fig, conn = s.rng, s.fig, s.conn
        fleet = await s.fleet({"DATESYNC_DEMO_DELAY_MS": "3", "DATESYNC_CONCURRENCY": "10", "DATESYNC_LEASE": "1",
                               "DATESYNC_POLL_INTERVAL": "1", "DATESYNC_MAX_ATTEMPTS": "5",
                               "DATESYNC_SHUTDOWN_GRACE": "0.2"})
        for _ in range(3):
            await fleet.spawn().wait_log("daemon_started")
        n = scale.pipelined_dates
        for first in range(-n, 0, 3000):  # batches of at most 3,000 days (the range limit is 3,660), in the past
            await insert_batch(conn, day(first), day(min(first + 3000, 0) - 1))
        most_held = 0
        for i in range(scale.pipelined_faults):
            deadline = time.monotonic() + rng.uniform(0.1, 0.4)
            while time.monotonic() < deadline:  # the most dates one daemon holds, leased ahead ones included
                most_held = max(most_held, await conn.fetchval(
                    "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM datesync.task "
                    "WHERE state = 'running' GROUP BY lease_owner) x"))
                await asyncio.sleep(0.02)
            if not await conn.fetchval("SELECT count(*) FROM datesync.batch WHERE state IN ('queued', 'running')"):
                fig.problems.append(f"the batches ended after only {i} faults; give them more dates")
                break
            if i % 2 == 0:
                await fleet.sigkill(rng.choice(fleet.alive()))
            else:  # a daemon past its start-up: before it, SIGTERM kills the process as SIGKILL would
                started = [p for p in fleet.alive() if "daemon_started" in p.log_text()]
                code = await fleet.sigterm(rng.choice(started), timeout=15)
                if code != 0:
                    fig.problems.append(f"SIGTERM: exit code {code}")
            fleet.spawn()
        if most_held <= 10:
            fig.problems.append(f"no daemon held more dates than its 10 slots (at most {most_held}): they did not "
                                "pipeline, so this scenario tested nothing new; make the dates quicker")
        await wait_all_final(dsn, 120)
        await s.settle(fleet, invariants.Rules(max_attempts=5))
        return fig


async def overlapping_daemons(dsn: str, seed: int, scale: Scale) -> Figures:
    """Two to four daemons over many overlapping batches (random ranges, some forced, two dates that always
    fail), inserted while the daemons work: no date runs twice at once, skips follow the rules exactly."""
    async with scenario("overlapping_daemons", seed, dsn) as s:
        rng, conn = s.rng, s.conn
        window = scale.overlap_window
        fail = {day(rng.randrange(window)) for _ in range(2)}
        fleet = await s.fleet({"DATESYNC_DEMO_DELAY_MS": "40", "DATESYNC_CONCURRENCY": "3", "DATESYNC_LEASE": "3",
                               "DATESYNC_DEMO_FAIL_DATES": dates_csv(fail)})
        for _ in range(rng.randint(2, 4)):
            fleet.spawn()
        for _ in range(scale.overlap_batches):
            first = rng.randrange(window)
            last = min(window - 1, first + rng.randint(0, 14))
            await insert_batch(conn, day(first), day(last), force=rng.random() < 0.25)
            await asyncio.sleep(rng.uniform(0.0, 0.35))
        await wait_all_final(dsn, 90)
        return await s.settle(fleet, invariants.Rules(fail_dates=frozenset(fail)))


SKEW_S = 6 * 3600.0


async def skewed_clock(dsn: str, seed: int, scale: Scale) -> Figures:
    """Three daemons: one whose clock is six hours fast, one six hours slow, one right. Each date takes longer
    than the lease, so only heartbeats keep it. Leases are computed with the database's now(), so the fast
    daemon steals nothing and the slow one loses nothing: every date runs exactly once."""
    async with scenario("skewed_clock", seed, dsn) as s:
        fig, conn = s.fig, s.conn
        # A lease short enough that only heartbeats keep a date, long enough that a busy machine does not starve
        # them.
        fleet = await s.fleet({"DATESYNC_HANDLER": "tests.faults.handlers:clocked", "DATESYNC_CONCURRENCY": "2",
                               "DATESYNC_LEASE": "2.5", "DATESYNC_DEMO_DELAY_MS": str(s.rng.randint(3200, 3800))})
        skewed: dict[str, float] = {}
        for offset in (SKEW_S, -SKEW_S):
            prefix, extra, entry = skewed_prefix(offset)
            proc = fleet.spawn(extra, prefix, entry)
            skewed[str(proc.pid)] = offset
        fleet.spawn()
        for proc in fleet.procs:
            await proc.wait_log("daemon_started")
        await insert_batch(conn, day(0), day(scale.skew_dates - 1))
        # While they work, every lease ends within DATESYNC_LEASE of the database's clock.
        deadline = time.monotonic() + 60
        while await conn.fetchval("SELECT count(*) FROM datesync.batch WHERE state IN ('queued', 'running')"):
            for row in await conn.fetch(
                    "SELECT lease_owner, extract(epoch FROM lease_expires_at - now()) AS left_s "
                    "FROM datesync.task WHERE state = 'running'"):
                if not -0.5 <= row["left_s"] <= 2.5 + 0.5:
                    fig.problems.append(f"lease of {row['lease_owner']} ends in {row['left_s']:.1f}s")
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await wait_all_final(dsn, 30)
        await s.settle(fleet, invariants.Rules())
        for row in await conn.fetch("SELECT id, day, attempt FROM datesync.task WHERE attempt <> 1"):
            fig.problems.append(f"task {row['id']} ({row['day']}) took {row['attempt']} attempts: a lease was "
                                "stolen or lost")
        for proc in fleet.procs:
            for event in ("task_lease_expired", "task_lease_lost"):
                if event in proc.log_text():
                    fig.problems.append(f"daemon {proc.pid} logged {event}")
        # The skew was real: what each skewed daemon's clock said against the database's.
        seen = await conn.fetch(
            "SELECT (regexp_match(worker, $1))[1] AS pid, avg(extract(epoch FROM local_time - db_time)) AS skew "
            "FROM faults.clock GROUP BY 1", invariants.WORKER_PID)
        by_pid = {r["pid"]: float(r["skew"]) for r in seen}
        for pid, offset in skewed.items():
            if pid not in by_pid:
                fig.problems.append(f"the daemon with a {offset:+g}s clock ran no date")
            elif abs(by_pid[pid] - offset) > 60:
                fig.problems.append(f"the daemon meant to be {offset:+g}s off was {by_pid[pid]:+.0f}s off")
        return fig


# -- database faults ------------------------------------------------------------------------------------

# With the connection cut under it, an attempt fails with one of these; with enough attempts none runs out.
CONNECTION_ERRORS = ("lease expired", "ConnectionDoesNotExistError", "InterfaceError", "AdminShutdownError",
                     "ConnectionResetError", "CannotConnectNowError", "ConnectionRefusedError", "OSError",
                     "FileNotFoundError")


async def database_restart(server: DedicatedServer, seed: int, scale: Scale) -> Figures:
    """PostgreSQL stopped (fast shutdown: every connection cut) and started again under two working daemons, at
    random moments and for random lengths, some longer than the lease. The run file, written outside the
    database, shows when each run really ended."""
    async with scenario("database_restart", seed, server=server) as s:
        rng, fig = s.rng, s.fig
        run_file = await s.run_file()
        fleet = await s.fleet({"DATESYNC_HANDLER": "tests.faults.handlers:recorded",
                               "DATESYNC_FAULTS_RUNFILE": str(run_file), "DATESYNC_DEMO_DELAY_MS": "200",
                               "DATESYNC_CONCURRENCY": "3", "DATESYNC_LEASE": "2", "DATESYNC_POLL_INTERVAL": "1",
                               "DATESYNC_MAX_ATTEMPTS": "10"})
        async with s.connection() as conn:
            for _ in range(2):
                await fleet.spawn().wait_log("daemon_started")
            await insert_batch(conn, day(0), day(59))
        for _ in range(scale.db_restarts):
            await asyncio.sleep(rng.uniform(0.4, 1.5))
            await server.restart(down_for=rng.uniform(0.2, 3.0))
            fig.db_restarts += 1
        await wait_all_final(s.dsn, 120)
        async with s.connection() as conn:
            await s.settle(fleet, invariants.Rules(max_attempts=10, fault_errors=CONNECTION_ERRORS), run_file, conn)
        return fig


async def outage_longer_than_lease(server: DedicatedServer, seed: int, scale: Scale) -> Figures:
    """One daemon with free slots runs dates whose work does not touch the database (an upstream fetch) when
    the database goes away for longer than the lease. When it comes back the leases have expired, but the runs
    are still going: nobody, this daemon included, may start those dates again until they have ended."""
    async with scenario("outage_longer_than_lease", seed, server=server) as s:
        rng, fig = s.rng, s.fig
        run_file = await s.run_file()
        fleet = await s.fleet(_offline_env(run_file, rng.randint(4000, 5000), poll_s=1))
        async with s.connection() as conn:
            await fleet.spawn().wait_log("daemon_started")
            batch_id = await insert_batch(conn, day(0), day(1))
            await wait_until(lambda: _runs_started(conn, 2), 20, "the two dates did not start")
        await server.restart(down_for=rng.uniform(1.5, 2.5))
        fig.db_restarts += 1
        await wait_all_final(s.dsn, 60)
        async with s.connection() as conn:
            await s.settle(fleet, invariants.Rules(max_attempts=5, fault_errors=CONNECTION_ERRORS), run_file, conn)
            final = await conn.fetchval("SELECT state::text FROM datesync.batch WHERE id = $1", batch_id)
            if final != "succeeded":
                fig.problems.append(f"the batch ended {final}")
        return fig


def _offline_env(run_file: Path, delay_ms: int, poll_s: int) -> dict[str, str]:
    """One date's work that does not touch the database (tests.faults.handlers:offline), recorded in the run file,
    longer than a 1 s lease; four slots, five attempts."""
    return {"DATESYNC_HANDLER": "tests.faults.handlers:offline", "DATESYNC_FAULTS_RUNFILE": str(run_file),
            "DATESYNC_DEMO_DELAY_MS": str(delay_ms), "DATESYNC_CONCURRENCY": "4", "DATESYNC_LEASE": "1",
            "DATESYNC_POLL_INTERVAL": str(poll_s), "DATESYNC_MAX_ATTEMPTS": "5"}


async def _runs_started(conn: asyncpg.Connection, n: int) -> bool:
    return bool(await conn.fetchval("SELECT count(*) >= $1 FROM datesync_demo.run_log", n))


async def backends_terminated(dsn: str, seed: int, scale: Scale) -> Figures:
    """Every backend of two working daemons (pool and listener) terminated at random moments: attempts cut short
    are retried, outcomes are written once the pool reconnects, the listeners reconnect and re-LISTEN."""
    async with scenario("backends_terminated", seed, dsn) as s:
        rng, fig, conn = s.rng, s.fig, s.conn
        run_file = await s.run_file()
        fleet = await s.fleet({"DATESYNC_HANDLER": "tests.faults.handlers:recorded",
                               "DATESYNC_FAULTS_RUNFILE": str(run_file), "DATESYNC_DEMO_DELAY_MS": "150",
                               "DATESYNC_CONCURRENCY": "3", "DATESYNC_LEASE": "2", "DATESYNC_MAX_ATTEMPTS": "10"})
        for _ in range(2):
            await fleet.spawn().wait_log("listener_connected")
        await insert_batch(conn, day(0), day(49))
        for _ in range(scale.backend_kills):
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            if await terminate(conn, "datesync-daemon%") == 0:
                fig.problems.append("found no daemon backend to terminate")
            fig.backend_kills += 1
        await wait_all_final(dsn, 90)
        for proc in fleet.procs:
            if "listener_reconnected" not in proc.log_text():
                fig.problems.append(f"daemon {proc.pid}'s listener did not reconnect")
        # NOTIFY reaches them again: a new batch starts at once (the safety poll is 2 s away at most).
        return await s.settle(fleet, invariants.Rules(max_attempts=10, fault_errors=CONNECTION_ERRORS), run_file)


async def listener_terminated(dsn: str, seed: int, scale: Scale) -> Figures:
    """The daemon's LISTEN connection alone terminated. With the safety poll a minute away, only a working
    listener starts a new batch promptly: one inserted after the reconnect (NOTIFY after re-LISTEN) and one
    inserted while the listener was down (the rescan after every reconnect)."""
    async with scenario("listener_terminated", seed, dsn) as s:
        rng, fig, conn = s.rng, s.fig, s.conn
        fleet = await s.fleet({"DATESYNC_DEMO_DELAY_MS": "20", "DATESYNC_POLL_INTERVAL": "60"})
        proc = fleet.spawn()
        await proc.wait_log("listener_connected")
        await asyncio.sleep(0.3)
        for i in range(scale.listener_kills):
            if await terminate(conn, "datesync-daemon-listener") != 1:
                fig.problems.append("the listener's backend was not found")
            fig.backend_kills += 1
            lost = i % 2 == 1 or rng.random() < 0.3
            if lost:  # inserted while the listener is down: its NOTIFY is lost, the rescan must find it
                batch_id = await insert_batch(conn, day(10 * i), day(10 * i + 2))
            await wait_until(functools.partial(_count_in_log, proc, "listener_reconnected", i + 1), 15,
                             "the listener did not reconnect")
            if not lost:
                batch_id = await insert_batch(conn, day(10 * i), day(10 * i + 2))
            t0 = time.monotonic()
            try:
                await wait_all_final(dsn, 8)
            except AssertionError:
                fig.problems.append(f"batch {batch_id} ({'lost NOTIFY' if lost else 'after reconnect'}) did not "
                                    "start within 8 s: the listener is deaf")
                await wait_all_final(dsn, 70)
            else:
                if time.monotonic() - t0 > 5:
                    fig.problems.append(f"batch {batch_id} took {time.monotonic() - t0:.1f}s to finish")
        return await s.settle(fleet, invariants.Rules())


async def _count_in_log(proc: Proc, needle: str, n: int) -> bool:
    return proc.log_text().count(needle) >= n


# -- handler faults -------------------------------------------------------------------------------------

HANDLERS = {  # source -> (handler, its final state, the start of its error)
    "raises": ("raises", "failed", "HandlerExploded: handler exploded on purpose"),
    "hangs": ("hang", "failed", "timed out after 3 s"),
    "wrongtype": ("wrong_type", "failed", "TypeError: the handler returned"),
    "halfwrite": ("half_write", "failed", "HandlerExploded: failed after writing 3 rows"),
    "halfhang": ("half_hang", "failed", "timed out after 3 s"),
    "slowstart": ("slow_start", "succeeded", None),
}


async def handler_faults(dsn: str, seed: int, scale: Scale) -> Figures:
    """Handlers that raise, hang past the timeout, return a wrong type, write half their rows then raise (or
    hang mid-transaction), and one that idles longer than the lease before working; two daemons serve them
    all. Each failure is recorded with its reason after max_attempts, half-written rows are rolled back, the slow
    one keeps its lease through heartbeats (one attempt, never taken over), and both daemons stay up."""
    async with scenario("handler_faults", seed, dsn) as s:
        fig, conn = s.fig, s.conn
        sources = ",".join(f"{name}=tests.faults.handlers:{fn}" for name, (fn, _, _) in HANDLERS.items())
        fleet = await s.fleet({"DATESYNC_SOURCES": sources, "DATESYNC_TASK_TIMEOUT": "3", "DATESYNC_LEASE": "1",
                               "DATESYNC_MAX_ATTEMPTS": "2", "DATESYNC_CONCURRENCY": "6",
                               "DATESYNC_FAULTS_SLOW_S": "2", "DATESYNC_DEMO_DELAY_MS": "20"})
        n = scale.handler_dates
        for _ in range(2):
            await fleet.spawn().wait_log("daemon_started")
        ranges = {}
        for i, source in enumerate([*HANDLERS, "default"]):
            ranges[source] = (day(100 * i), day(100 * i + n - 1))
            await insert_batch(conn, *ranges[source], source=source)
        await wait_all_final(dsn, 60)
        s.check_alive(fleet)
        failing = {day(100 * i + k) for i, (_, state, _) in enumerate(HANDLERS.values()) if state == "failed"
                   for k in range(n)}
        await s.settle(fleet, invariants.Rules(max_attempts=2, fail_dates=frozenset(failing)))
        for source, (_fn, state, error) in HANDLERS.items():
            for row in await conn.fetch("SELECT day, state::text, attempt, error FROM datesync.task "
                                        "WHERE source = $1", source):
                if row["state"] != state or (error and not (row["error"] or "").startswith(error)):
                    fig.problems.append(f"{source} {row['day']}: {row['state']} after {row['attempt']} "
                                        f"attempts ({row['error']}); expected {state} ({error})")
                if "Traceback" in (row["error"] or ""):
                    fig.problems.append(f"{source} {row['day']}: a traceback in the error")
        for row in await conn.fetch("SELECT day, attempt FROM datesync.task WHERE source = 'slowstart' "
                                    "AND attempt <> 1"):
            fig.problems.append(f"slowstart {row['day']} took {row['attempt']} attempts: its lease was lost")
        half = await conn.fetchval("SELECT count(*) FROM faults.half_rows")
        if half:
            fig.problems.append(f"{half} half-written rows survived their transaction's failure")
        runs: dict[str, int] = {r["source"]: r["count"] for r in await conn.fetch(
            "SELECT source, count(*) FROM datesync_demo.run_log GROUP BY source")}
        for source, (_fn, state, _) in HANDLERS.items():
            expected = n * (2 if state == "failed" else 1)
            if runs.get(source, 0) != expected:
                fig.problems.append(f"{source}: {runs.get(source, 0)} runs, expected {expected}")
        return fig




async def lone_daemon_leases(dsn: str, seed: int, scale: Scale) -> Figures:
    """One daemon, no fault at all, many short dates: nobody else can take a lease, so none may be lost and
    every date runs once. (Its heartbeat races its claims: a date claimed while a heartbeat is in flight is
    missing from that heartbeat's answer.)"""
    async with scenario("lone_daemon_leases", seed, dsn) as s:
        fig, conn = s.fig, s.conn
        fleet = await s.fleet({"DATESYNC_DEMO_DELAY_MS": "60", "DATESYNC_CONCURRENCY": "12", "DATESYNC_LEASE": "1",
                               "DATESYNC_POLL_INTERVAL": "1"})
        proc = fleet.spawn()
        await proc.wait_log("daemon_started")
        for round_ in range(2):
            await insert_batch(conn, day(600 * round_), day(600 * round_ + 399))  # all before "today"
            try:
                await wait_all_final(dsn, 60)
            except AssertionError as exc:
                fig.problems.append(f"round {round_}: {exc}")
                break
            lost = proc.log_text().count("task_lease_lost")
            if lost:
                fig.problems.append(f"round {round_}: the only daemon lost {lost} of its own leases "
                                    "(logged task_lease_lost) with no fault and no other daemon")
                break
        await s.settle(fleet, invariants.Rules())
        for row in await conn.fetch("SELECT id, day, attempt FROM datesync.task WHERE attempt <> 1 LIMIT 5"):
            fig.problems.append(f"task {row['id']} ({row['day']}) took {row['attempt']} attempts")
        return fig



async def paused_daemon(dsn: str, seed: int, scale: Scale) -> Figures:
    """A lone daemon frozen (SIGSTOP: a VM pause, a stop-the-world stall) for longer than the lease while its
    dates work, then thawed. Nobody else could take its dates; on waking it must not start a second run of a
    date whose first run is still going."""
    async with scenario("paused_daemon", seed, dsn) as s:
        rng, conn = s.rng, s.conn
        run_file = await s.run_file()
        fleet = await s.fleet(_offline_env(run_file, 3000, poll_s=1))
        proc = fleet.spawn()
        await proc.wait_log("daemon_started")
        for round_ in range(3):
            await insert_batch(conn, day(10 * round_), day(10 * round_ + 1))
            await wait_until(functools.partial(_runs_started, conn, 2 * round_ + 2), 20, "the dates did not start")
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            proc.signal(signal.SIGSTOP)
            await asyncio.sleep(rng.uniform(1.6, 2.4))
            proc.signal(signal.SIGCONT)
            await wait_all_final(dsn, 30)
        return await s.settle(fleet, invariants.Rules(max_attempts=5), run_file)



async def stalled_heartbeat(dsn: str, seed: int, scale: Scale) -> Figures:
    """A lone daemon's dates do long work that does not touch the database. An operator's transaction holds
    their task rows locked for longer than the lease (SELECT ... FOR UPDATE in psql, a slow report), so the
    heartbeat waits; a NOTIFY makes the daemon rescan meanwhile. When the lock goes, nobody else could have taken
    the dates: each must still run once at a time, and the batch end only after its runs have."""
    async with scenario("stalled_heartbeat", seed, dsn) as s:
        rng, fig, conn = s.rng, s.fig, s.conn
        run_file = await s.run_file()
        locker = await s.connect()
        fleet = await s.fleet(_offline_env(run_file, 4000, poll_s=30))
        proc = fleet.spawn()
        await proc.wait_log("daemon_started")
        batch_id = await insert_batch(conn, day(0), day(1))
        await wait_until(lambda: _runs_started(conn, 2), 20, "the dates did not start")
        async with locker.transaction():
            await locker.execute("SELECT id FROM datesync.task WHERE state = 'running' FOR UPDATE")
            await asyncio.sleep(1.5 + rng.uniform(0.0, 0.3))
            await conn.execute("SELECT pg_notify('datesync_batch', '0')")  # any wake-up: a new batch
            await asyncio.sleep(0.3)
        await wait_all_final(dsn, 30)
        await s.settle(fleet, invariants.Rules(max_attempts=5), run_file)
        ended = await conn.fetchval("SELECT finished_at FROM datesync.batch WHERE id = $1", batch_id)
        last_run = max((float(str(e["t"])) for e in _file_entries(run_file) if e["ev"] == "end"), default=0.0)
        if ended is not None and ended.timestamp() < last_run:
            fig.problems.append(f"the batch ended {last_run - ended.timestamp():.2f}s before its last run")
        return fig


def _file_entries(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []



# -- start-up against an unreachable database -----------------------------------------------------------

SECRET = "S3cr3t-Pa55w0rd"


async def startup_waits_for_database(server: DedicatedServer, seed: int, scale: Scale) -> Figures:
    """`datesync daemon` started while PostgreSQL is down: it says so once, keeps retrying quietly (no crash
    loop), and serves as soon as the server comes up."""
    async with scenario("startup_waits_for_database", seed, server=server) as s:
        fig = s.fig
        await server.stop()
        fleet = await s.fleet({"DATESYNC_DEMO_DELAY_MS": "10"})
        try:
            proc = fleet.spawn()
            await proc.wait_log("database_unreachable_retrying")
            await asyncio.sleep(s.rng.uniform(2.0, 3.0))
        finally:
            await server.start()
        fig.db_restarts += 1
        if not proc.alive():
            fig.problems.append(f"the daemon exited ({proc.popen.returncode}) while waiting")
        await proc.wait_log("daemon_started", timeout=20)
        warnings = proc.log_text().count("database_unreachable_retrying")
        if warnings != 1:
            fig.problems.append(f"{warnings} retry warnings for one outage (expected one)")
        async with s.connection() as conn:
            await insert_batch(conn, day(0), day(4))
            await wait_all_final(s.dsn, 20)
            await s.settle(fleet, invariants.Rules(), conn=conn)
        return fig


async def startup_gives_up(rate: float = 30.0) -> Figures:
    """`datesync daemon` against a port that never opens: it retries for DATESYNC_STARTUP_TIMEOUT (60 s), then exits 2
    with "cannot reach the database", one warning on the way, and the password nowhere in its output. `rate` > 1
    runs the daemon's monotonic clock that much faster (tests.faults.clockshim) so the minute passes in seconds."""
    async with scenario("startup_gives_up", 0) as s:
        fig = s.fig
        dsn = f"postgresql://datesync:{SECRET}@127.0.0.1:{free_port()}/datesync"
        proc = spawn_daemon(dsn, {"FAULTS_CLOCK_RATE": str(rate), "COLUMNS": "200"}, entry="tests.faults.clockshim")
        try:
            code = await proc.wait(60 / rate + 30)
            output = proc.log_text()
        finally:
            proc.close()
        flat = " ".join(output.split())
        if code != 2:
            fig.problems.append(f"exit code {code}, expected 2")
        if "cannot reach the database" not in flat:
            fig.problems.append(f"no clear message: {flat[-500:]}")
        if SECRET in output:
            fig.problems.append("the password appears in the output")
        if output.count("database_unreachable_retrying") != 1:
            fig.problems.append(f"{output.count('database_unreachable_retrying')} retry warnings (expected one)")
        attempts = re.search(r"after (\d+) attempts", flat)
        if attempts is None or not 3 <= int(attempts.group(1)) <= 40:
            fig.problems.append(f"unexpected number of attempts in a minute: {attempts and attempts.group(1)}")
        return fig



async def cancel_mid_batch(dsn: str, seed: int, scale: Scale) -> Figures:
    """An operator cancels a batch (UPDATE ... SET cancel_requested) while its dates run, some of them for the
    first time and some re-running already synced dates (forced): the batch ends cancelled, and each date's status
    is again what its last finished run made it (or no status at all), not `running`."""
    async with scenario("cancel_mid_batch", seed, dsn) as s:
        conn = s.conn
        fleet = await s.fleet({"DATESYNC_DEMO_DELAY_MS": "1500", "DATESYNC_CONCURRENCY": "8", "DATESYNC_LEASE": "3"})
        await fleet.spawn({"DATESYNC_DEMO_DELAY_MS": "10"}).wait_log("daemon_started")
        await insert_batch(conn, day(0), day(3))
        await wait_all_final(dsn, 30)
        await fleet.stop()
        await fleet.spawn().wait_log("daemon_started")
        forced = await insert_batch(conn, day(0), day(3), force=True)
        fresh = await insert_batch(conn, day(10), day(13))
        await wait_until(functools.partial(_has_running, conn, fresh), 20, "no date started")
        await asyncio.sleep(s.rng.uniform(0.05, 0.3))
        await conn.execute("UPDATE datesync.batch SET cancel_requested = true WHERE id = ANY($1::bigint[])",
                           [forced, fresh])
        await wait_all_final(dsn, 30)
        return await s.settle(fleet, invariants.Rules())



async def takeover_latency(dsn: str, seed: int, scale: Scale) -> Figures:
    """Two daemons with the default-like safety poll (30 s) share a batch; one is SIGKILLed. The survivor keeps
    working (it is busy, so no NOTIFY or idle poll makes it rescan): the dead daemon's dates must still be taken
    over within a few seconds of their leases expiring, not whenever the survivor next rescans."""
    async with scenario("takeover_latency", seed, dsn) as s:
        fig, conn = s.fig, s.conn
        fleet = await s.fleet({"DATESYNC_DEMO_DELAY_MS": "100", "DATESYNC_CONCURRENCY": "4", "DATESYNC_LEASE": "1",
                               "DATESYNC_POLL_INTERVAL": "30"})
        victim, survivor = fleet.spawn(), fleet.spawn()
        for proc in (victim, survivor):
            await proc.wait_log("daemon_started")
        await insert_batch(conn, day(0), day(199))
        await asyncio.sleep(s.rng.uniform(0.8, 1.5))
        await fleet.sigkill(victim)
        # The lease, and time to notice: the survivor looks every second; a loaded CI machine gets slack,
        # still far below the 30 s safety poll this scenario is about.
        grace = 1.0 + 7.0
        await asyncio.sleep(grace)
        stale = await conn.fetchval("SELECT count(*) FROM datesync.task WHERE state = 'running' "
                                    "AND lease_expires_at < now() - interval '5 seconds'")
        if stale:
            fig.problems.append(f"{stale} dates of the dead daemon still wait, leases expired over 5 s ago, "
                                "while the survivor works on other dates")
            fleet.spawn()  # a new daemon rescans at start: let the scenario end
        await wait_all_final(dsn, 60)
        return await s.settle(fleet, invariants.Rules())


PROCESS_SCENARIOS: dict[str, Scenario] = {
    "random_kills": random_kills,
    "kill_during_finish": kill_during_finish,
    "sigterm_mid_batch": sigterm_mid_batch,
    "pipelined_kills": pipelined_kills,
    "overlapping_daemons": overlapping_daemons,
    "skewed_clock": skewed_clock,
    "paused_daemon": paused_daemon,
    "backends_terminated": backends_terminated,
    "listener_terminated": listener_terminated,
    "handler_faults": handler_faults,
    # Reproductions of reported engine bugs: they fail until those are fixed.
    "lone_daemon_leases": lone_daemon_leases,
    "stalled_heartbeat": stalled_heartbeat,
    "cancel_mid_batch": cancel_mid_batch,
    "takeover_latency": takeover_latency,
}
SERVER_SCENARIOS: dict[str, Callable[[DedicatedServer, int, Scale], Awaitable[Figures]]] = {
    "database_restart": database_restart,
    "outage_longer_than_lease": outage_longer_than_lease,
    "startup_waits_for_database": startup_waits_for_database,
}
