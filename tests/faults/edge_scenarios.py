"""Issue 15 as a fault scenario (suite and soak): two real daemons serve sources whose handlers produce texts the
database refuses, huge or secret ones, wrong row counts, and handlers that block their thread or swallow their
cancellation; then a daemon is stopped with SIGTERM while such handlers run."""

from __future__ import annotations

import asyncio
import datetime
import time

import asyncpg

from tests.faults import invariants
from tests.faults.common import Figures, Scale, day, insert_batch, running_tasks, wait_all_final, wait_until
from tests.faults.dbs import DedicatedServer
from tests.faults.edges import BASIC
from tests.faults.harness import scenario
from tests.faults.procs import Fleet

EDGE_HANDLERS = {  # source -> (handler in tests.faults.edges, final state, start of the error)
    "nul": ("nul_error", "failed", "RuntimeError: xy"),
    "surrogate": ("surrogate_error", "failed", "RuntimeError: bad \ufffd text"),
    "control": ("control_error", "failed", "RuntimeError: bell\ufffd escape\ufffd[31m"),
    "huge": ("huge_error", "failed", "RuntimeError: zzzz"),
    "basic": ("basic_error", "failed", "RuntimeError: upstream echoed: Authorization: Basic ***"),
    "unprintable": ("unprintable_error", "failed", "Weird: "),
    "exits": ("exits", "failed", "SystemExit: 3"),
    "hugerows": ("huge_rows", "failed", "ValueError: the handler returned 1000000000000000000000000000000 rows"),
    "boolrows": ("bool_rows", "failed", "TypeError: the handler returned bool"),
    "progress": ("nul_progress", "succeeded", None),
    "blocking": ("blocking_sleep", "failed", "timed out after 2 s"),
    "swallow": ("swallow_cancel", "failed", "timed out after 2 s"),
}
GRACE_S = 1.0
SPACING = 30  # days between the sources' batches (all before today)


async def handler_edges(dsn: str, seed: int, scale: Scale) -> Figures:
    """Every edge handler over scale.handler_dates dates, two daemons; each date ends as its handler says with a
    clean error, the counts are exact, both daemons stay up. Then a daemon with a long timeout is stopped while
    blocking and swallowing handlers run: it exits within the grace plus a few seconds and hands their dates back
    uncounted; a last daemon ends them."""
    async with scenario("handler_edges", seed, dsn) as s:
        fig, conn = s.fig, s.conn
        sources = ",".join(f"{name}=tests.faults.edges:{fn}" for name, (fn, _, _) in EDGE_HANDLERS.items())
        fleet = await s.fleet({"DATESYNC_SOURCES": sources, "DATESYNC_TASK_TIMEOUT": "2", "DATESYNC_LEASE": "2",
                               "DATESYNC_MAX_ATTEMPTS": "2", "DATESYNC_CONCURRENCY": "6",
                               "DATESYNC_SHUTDOWN_GRACE": str(GRACE_S), "DATESYNC_EDGE_SLEEP_S": "20"})
        n = scale.handler_dates
        for _ in range(2):
            await fleet.spawn().wait_log("daemon_started")
        for i, source in enumerate(EDGE_HANDLERS):
            await insert_batch(conn, day(SPACING * i), day(SPACING * i + n - 1), source=source)
        await wait_all_final(dsn, 90)
        s.check_alive(fleet)
        await _check_edges(conn, fig)
        await fleet.stop()
        await _sigterm_under_stuck_handlers(conn, fleet, fig, n)
        failing = {day(SPACING * i + k) for i, (_, state, _) in enumerate(EDGE_HANDLERS.values())
                   if state == "failed" for k in range(n)}
        failing |= {start + datetime.timedelta(days=k) for start, _ in stuck_batches(n).values() for k in range(n)}
        return await s.settle(fleet, invariants.Rules(max_attempts=2, fail_dates=frozenset(failing),
                                                      demo_rows=False))


async def _check_edges(conn: asyncpg.Connection, fig: Figures) -> None:
    for source, (_fn, state, error) in EDGE_HANDLERS.items():
        for row in await conn.fetch("SELECT day, state::text, attempt, error FROM datesync.task WHERE source = $1",
                                    source):
            text = row["error"] or ""
            if row["state"] != state or (error and not text.startswith(error)):
                fig.problems.append(f"{source} {row['day']}: {row['state']} after {row['attempt']} attempts "
                                    f"({text[:200]!r}); expected {state} ({error})")
            if "\x00" in text or "\x1b" in text or BASIC in text or len(text.encode()) > 4096:
                fig.problems.append(f"{source} {row['day']}: an unclean error {text[:200]!r}")


async def _sigterm_under_stuck_handlers(conn: asyncpg.Connection, fleet: Fleet, fig: Figures, n: int) -> None:
    batches = stuck_batches(n)
    proc = fleet.spawn({"DATESYNC_TASK_TIMEOUT": "60"})
    await proc.wait_log("daemon_started")
    for source, (start, end) in batches.items():
        await insert_batch(conn, start, end, source=source)
    await wait_until(lambda: _running_at_least(conn, min(2 * n, 6)), 20, "the stuck dates did not start")
    await asyncio.sleep(0.3)
    stopped = time.monotonic()
    code = await fleet.sigterm(proc, timeout=GRACE_S + 30)
    took = time.monotonic() - stopped
    if code != 0 or took > GRACE_S + 10:
        fig.problems.append(f"SIGTERM under stuck handlers: exit {code} after {took:.1f}s (grace {GRACE_S:g}s)")
    held = await conn.fetch("SELECT id, day, state::text, attempt FROM datesync.task WHERE state = 'running' "
                            "OR lease_owner IS NOT NULL")
    fig.problems += [f"after SIGTERM, task {r['id']} ({r['day']}) still {r['state']} or leased" for r in held]
    counted = await conn.fetch("SELECT id, day, attempt FROM datesync.task WHERE source IN ('blocking', 'swallow') "
                               "AND day >= $1 AND attempt <> 0 AND state = 'queued'", batches["blocking"][0])
    fig.problems += [f"task {r['id']} ({r['day']}) handed back with attempt {r['attempt']}" for r in counted]
    fleet.spawn()  # ends them (they time out) with the short timeout
    await wait_all_final(fleet.dsn, 60)


def stuck_batches(n: int) -> dict[str, tuple[datetime.date, datetime.date]]:
    """The batches of the SIGTERM phase, after those of the first phase."""
    first = SPACING * len(EDGE_HANDLERS)
    second = first + SPACING
    return {"blocking": (day(first), day(first + n - 1)), "swallow": (day(second), day(second + n - 1))}


async def _running_at_least(conn: asyncpg.Connection, n: int) -> bool:
    return await running_tasks(conn) >= n


async def restart_under_running_dates(server: DedicatedServer, seed: int, scale: Scale, mode: str | None = None
                                      ) -> Figures:
    """PostgreSQL stopped (`-m fast` or `-m immediate`, by the seed unless given) while every slot runs a date
    that works on ctx.db: each date is handed back uncounted and succeeds at attempt 1, whichever error the cut
    surfaced as (before issue 15: InterfaceError from a pool proxy asyncpg had detached, the attempt counted)."""
    async with scenario("restart_under_running_dates", seed, server=server) as s:
        rng, fig = s.rng, s.fig
        mode = mode or rng.choice(["fast", "immediate"])
        fleet = await s.fleet({"DATESYNC_HANDLER": "tests.faults.edges:db_busy", "DATESYNC_CONCURRENCY": "4",
                               "DATESYNC_LEASE": "6", "DATESYNC_MAX_ATTEMPTS": "5", "DATESYNC_POLL_INTERVAL": "1",
                               "DATESYNC_EDGE_BUSY_S": f"{rng.uniform(1.0, 2.0):.2f}"})
        async with s.connection() as conn:
            await fleet.spawn().wait_log("daemon_started")
            await insert_batch(conn, day(0), day(7))
            await wait_until(lambda: _running_at_least(conn, 4), 20, "the dates did not start")
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        await server.restart(down_for=rng.uniform(0.3, 1.5), mode=mode)
        fig.db_restarts += 1
        try:
            await wait_all_final(s.dsn, 90)
        except AssertionError as exc:
            fig.problems.append(f"-m {mode}: {exc}")
            fig.details = fleet.logs()
            return fig
        async with s.connection() as conn:
            for row in await conn.fetch("SELECT day, state::text, attempt, error FROM datesync.task ORDER BY day"):
                if (row["state"], row["attempt"]) != ("succeeded", 1):
                    fig.problems.append(f"-m {mode}: {row['day']}: {row['state']} at attempt {row['attempt']} "
                                        f"({row['error']})")
            if "date_sync_connection_lost" not in fleet.procs[0].log_text():
                fig.problems.append("no date saw the cut (the restart landed between dates)")
            await s.settle(fleet, invariants.Rules(max_attempts=5, demo_rows=False), conn=conn)
        return fig
