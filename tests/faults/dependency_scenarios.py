"""Issue 21 as fault scenarios (suite and soak): sources that depend on each other, served by real daemons that are
killed at random, and a SIGKILL while the upstream success that releases downstream dates commits.

The graph of both: `orders`; `rollup` after orders (the same date); `trail` after orders:-2..0 (a window of the
date and the two days before). All three run the demo handler, which logs every run with its start and end in
datesync_demo.run_log; invariants.check_dependencies reads that, the event log and the ledger afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import random

import asyncpg

from tests.faults import invariants
from tests.faults.common import Figures, Scale, dates_csv, day, insert_batch, wait_all_final, wait_until
from tests.faults.harness import ScenarioRun, scenario
from tests.faults.procs import Fleet
from tests.faults.scenarios import kill_inside_finish

GRAPH_ENV = {
    "DATESYNC_SOURCES": "orders=demo,rollup=demo,trail=demo",
    "DATESYNC_ROLLUP_AFTER": "orders",
    "DATESYNC_TRAIL_AFTER": "orders:-2..0",
}
DOWNSTREAM = {"rollup": (0, 0), "trail": (-2, 0)}  # source -> the window of orders dates it waits for
RANDOM_FAILURE = "DemoFailure: demo upstream returned 503"


async def dependent_sources(dsn: str, seed: int, scale: Scale) -> Figures:
    """Three daemons serve orders, rollup (after orders) and trail (after orders:-2..0); orders fail at random and
    on two dates always, rollup at random. The batches come in waves over consecutive stretches of days: the
    downstream batches of a stretch (overlapping ones among them) first, then, once those are expanded and wait,
    its orders batches in random chunks. Meanwhile daemons are SIGKILLed at random moments and respawned.

    At the end every batch is final with exact counts, no downstream date was claimed before its upstream dates'
    success committed nor ran before a successful upstream run had been written, no date ran twice at once, and
    each downstream date whose upstream date failed for good failed without running, naming that date."""
    async with scenario("dependent_sources", seed, dsn) as s:
        rng, fig, conn = s.rng, s.fig, s.conn
        n = max(scale.dep_days, 9)
        fail = {day(rng.randrange(n)) for _ in range(2)}
        fleet = await s.fleet({
            **GRAPH_ENV,
            "DATESYNC_ORDERS_DEMO_DELAY_MS": "150", "DATESYNC_ROLLUP_DEMO_DELAY_MS": "100",
            "DATESYNC_TRAIL_DEMO_DELAY_MS": "60",
            "DATESYNC_ORDERS_DEMO_FAIL_RATE": "0.3", "DATESYNC_ORDERS_DEMO_FAIL_DATES": dates_csv(fail),
            "DATESYNC_ROLLUP_DEMO_FAIL_RATE": "0.15",
            "DATESYNC_CONCURRENCY": "2", "DATESYNC_LEASE": "1", "DATESYNC_POLL_INTERVAL": "1",
            "DATESYNC_MAX_ATTEMPTS": "3",
        })
        for proc in [fleet.spawn() for _ in range(3)]:  # started together: each registers the graph at start
            await proc.wait_log("daemon_started")
        killer = asyncio.create_task(_kill_at_random(await s.connect(), random.Random(rng.random()), fleet,
                                                     scale.dep_kills))
        try:
            await _waves(s, n, scale.dep_linked)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(killer), 15)
        finally:
            killer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await killer
        if not fleet.alive():
            fleet.spawn()
        try:
            await wait_all_final(dsn, 90)
        except AssertionError as exc:  # the invariants below say which dates wait for what
            fig.problems.append(str(exc)[:2000])
        rules = invariants.Rules(max_attempts=3, fail_dates=frozenset(fail), fail_sources=frozenset({"orders"}),
                                 fault_errors=("lease expired", RANDOM_FAILURE))
        await s.settle(fleet, rules)
        await _check_failures_ran_down(conn, fig)
        if fig.kills < scale.dep_kills:
            fig.problems.append(f"only {fig.kills} of {scale.dep_kills} kills landed before the work ended")
        return fig


async def _waves(s: ScenarioRun, n: int, linked: int) -> None:
    """The batches, a stretch of days at a time. A downstream date waits for upstream dates not yet synced, and
    fails when one of them fails for good while it waits; one inserted after its upstream date failed for good
    waits for a re-sync that never comes in this scenario. So each stretch's downstream batches are expanded
    before its orders batches exist, and trail's window never reaches back into an earlier stretch."""
    rng, conn = s.rng, s.conn
    start = 0
    wave = 0
    while start < n:
        end = min(n, start + rng.randint(6, 10))
        if n - end < 3:
            end = n
        downstream = [await insert_batch(conn, day(start), day(end - 1), source="rollup")]
        first = rng.randrange(start, end)
        downstream.append(await insert_batch(conn, day(first), day(min(end - 1, first + rng.randint(0, 4))),
                                             source="rollup"))
        if end - start > 2:
            first = rng.randrange(start + 2, end)
            downstream.append(await insert_batch(conn, day(first), day(rng.randrange(first, end)), source="trail"))
        await wait_until(functools.partial(_expanded, conn, downstream), 20,
                         "the downstream batches were not expanded")
        if wave < linked:
            # rollup with_upstream: orders over the stretch first, rollup expanded after it (a race remains: an
            # orders date that fails for good before that rollup batch is expanded leaves its date waiting).
            await conn.fetch("SELECT * FROM datesync.batch_request_linked('rollup', $1, $2, false, NULL, 'faults', "
                             "true, false)", day(start), day(end - 1))
        else:
            cut = start
            while cut < end:
                upto = min(end, cut + rng.randint(2, 6))
                await insert_batch(conn, day(cut), day(upto - 1), source="orders")
                cut = upto
        await asyncio.sleep(rng.uniform(0.4, 1.2))
        start = end
        wave += 1


async def _expanded(conn: asyncpg.Connection, ids: list[int]) -> bool:
    return not await conn.fetchval("SELECT count(*) FROM datesync.batch WHERE id = ANY($1) AND state = 'queued'", ids)


async def _kill_at_random(conn: asyncpg.Connection, rng: random.Random, fleet: Fleet, kills: int) -> None:
    """SIGKILL a random daemon every so often while there is work, and respawn one at once (beside the waves: its
    own connection and randomness)."""
    while fleet.kills < kills:
        await asyncio.sleep(rng.uniform(0.4, 1.2))
        if not await conn.fetchval("SELECT count(*) FROM datesync.batch WHERE state IN ('queued', 'running')"):
            continue
        await fleet.sigkill(rng.choice(fleet.alive()))
        fleet.spawn()


async def _check_failures_ran_down(conn: asyncpg.Connection, fig: Figures) -> None:
    """Orders dates are never forced or retried here, so one that failed for good never synced: every downstream
    date whose window holds it must have failed without running (none may have waited for ever, run, or been
    skipped)."""
    for row in await conn.fetch(
        """
        SELECT t.id, t.source, t.day, t.state::text AS state, t.attempt, t.error,
               array_agg(u.day ORDER BY u.day) AS failed
        FROM datesync.task t JOIN datesync.dependency dep ON dep.source = t.source
        JOIN datesync.day u ON u.source = dep.upstream AND u.day BETWEEN t.day + dep.lo AND t.day + dep.hi
        WHERE u.status = 'failed'
        GROUP BY t.id
        HAVING NOT (t.state = 'failed' AND t.attempt = 0)
        ORDER BY t.id
        """
    ):
        fig.problems.append(f"task {row['id']} ({row['source']} {row['day']}) ended {row['state']} at attempt "
                            f"{row['attempt']} although orders {', '.join(map(str, row['failed']))} failed for good "
                            f"({row['error']})")
    always = await conn.fetchval("SELECT count(*) FROM datesync.task WHERE state = 'failed' AND attempt = 0")
    if not always:
        fig.problems.append("no downstream date failed because of its upstream: the scenario tested no failure")


async def kill_after_upstream_success(dsn: str, seed: int, scale: Scale) -> Figures:
    """A daemon SIGKILLed while the orders success that releases rollup's and trail's dates commits: the test
    holds the lock a finish takes last (event_serialize), waits until the daemon's backend is inside task_finish
    waiting for it, kills the daemon, then lets the orphaned transaction commit, or terminates it (alternately).

    Committed: with no daemon alive, the orders date is a success and both downstream dates are queued and
    claimable (the release was in that transaction; nothing else could have made it). Rolled back: the orders
    date is still running under the dead lease and they still wait. Either way a restarted daemon runs every
    date exactly once more than it had, downstream after upstream."""
    async with scenario("kill_after_upstream_success", seed, dsn) as s:
        rng, fig, conn = s.rng, s.fig, s.conn
        lock = await s.connect()
        # Orders dates slow enough to be caught running; the downstream ones quick.
        fleet = await s.fleet({**GRAPH_ENV, "DATESYNC_ORDERS_DEMO_DELAY_MS": str(rng.randint(250, 400)),
                               "DATESYNC_DEMO_DELAY_MS": "20", "DATESYNC_CONCURRENCY": "2", "DATESYNC_LEASE": "1",
                               "DATESYNC_POLL_INTERVAL": "1"})
        daemon = fleet.spawn()
        await daemon.wait_log("daemon_started")
        for round_ in range(scale.dep_crash_rounds):
            commit = round_ % 2 == 0
            d = day(10 * round_ + 2)
            # The two days before d synced, so that d alone is left for trail to wait for.
            await insert_batch(conn, day(10 * round_), day(10 * round_ + 1), source="orders")
            await wait_all_final(dsn, 30)
            rollup = await insert_batch(conn, d, d, source="rollup")
            trail = await insert_batch(conn, d, d, source="trail")
            await wait_until(functools.partial(_waiting, conn, [rollup, trail]), 20,
                             "the downstream dates did not wait")
            orders = await conn.fetchval("INSERT INTO datesync.batch (source, start_date, end_date) "
                                         "VALUES ('orders', $1, $1) RETURNING id", d)
            await wait_until(functools.partial(_orders_running, conn, orders), 20, "the orders date did not start")
            await kill_inside_finish(conn, lock, fleet, daemon, commit=commit)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            if fleet.alive():
                fig.problems.append("a daemon is alive: the released state below would prove nothing")
            await _check_released(conn, fig, orders, (rollup, trail), commit, d)
            daemon = fleet.spawn()
            await wait_all_final(dsn, 30)
            for batch_id in (orders, rollup, trail):
                row = await conn.fetchrow("SELECT t.source, t.state::text AS state, t.attempt, "
                                          "(SELECT count(*) FROM datesync_demo.run_log l WHERE l.batch_id = t.batch_id "
                                          "AND l.day = t.day) AS runs FROM datesync.task t WHERE t.batch_id = $1",
                                          batch_id)
                want = 1 if commit or row["source"] != "orders" else 2
                if (row["state"], row["attempt"], row["runs"]) != ("succeeded", want, want):
                    fig.problems.append(f"{'commit' if commit else 'rollback'} round {round_}: {row['source']} {d} "
                                        f"ended {row['state']} at attempt {row['attempt']} after {row['runs']} "
                                        f"run(s); expected succeeded after {want}")
        await s.settle(fleet, invariants.Rules())
        return fig


async def _waiting(conn: asyncpg.Connection, batches: list[int]) -> bool:
    return bool(await conn.fetchval("SELECT count(*) = $2 FROM datesync.task WHERE batch_id = ANY($1) "
                                    "AND state = 'waiting'", batches, len(batches)))


async def _orders_running(conn: asyncpg.Connection, batch_id: int) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM datesync.task WHERE batch_id = $1 "
                                    "AND state = 'running')", batch_id))


async def _check_released(conn: asyncpg.Connection, fig: Figures, orders: int, downstream: tuple[int, ...],
                          commit: bool, d: datetime.date) -> None:
    """With every daemon dead: what the finish's transaction left (committed) or did not (rolled back)."""
    how = "commit" if commit else "rollback"
    upstream = await conn.fetchrow("SELECT state::text AS state, lease_owner FROM datesync.task WHERE batch_id = $1",
                                   orders)
    ledger = await conn.fetchval("SELECT status::text FROM datesync.day WHERE source = 'orders' AND day = $1", d)
    expected = ("succeeded", "success") if commit else ("running", "running")
    if (upstream["state"], ledger) != expected:
        fig.problems.append(f"{how}: orders {d} is {upstream['state']} (ledger {ledger}), expected {expected}")
    for batch_id in downstream:
        row = await conn.fetchrow(
            """
            SELECT t.id, t.source, t.state::text AS state, t.lease_owner, t.run_after <= now() AS due,
                   EXISTS (SELECT 1 FROM datesync.task r WHERE r.source = t.source AND r.day = t.day
                           AND r.state = 'running') AS day_busy,
                   (SELECT e.state FROM datesync.event e WHERE e.task_id = t.id ORDER BY e.id DESC LIMIT 1) AS told
            FROM datesync.task t WHERE t.batch_id = $1
            """, batch_id)
        where = f"{how}: {row['source']} {d} (task {row['id']})"
        if commit:
            claimable = row["state"] == "queued" and row["lease_owner"] is None and row["due"] and not row["day_busy"]
            if not claimable:
                fig.problems.append(f"{where} is not claimable after the upstream success committed: {dict(row)}")
            if row["told"] != "queued":
                fig.problems.append(f"{where}: its last event says {row['told']}, not queued")
        elif row["state"] != "waiting":
            fig.problems.append(f"{where} is {row['state']} although the upstream success rolled back")
