"""Issue 21 against real `datesync daemon` processes: sources that depend on each other keep their order, never run
a date twice at once, fail down the graph, and lose no release to a SIGKILL (tests.faults.dependency_scenarios)."""

from __future__ import annotations

import asyncpg

from datesync.daemon.db.connect import connect
from tests.faults import dependency_scenarios
from tests.faults.common import SUITE, day


async def test_dependent_sources_keep_their_order_across_random_sigkills_and_failures(dsn: str, seed: int) -> None:
    fig = await dependency_scenarios.dependent_sources(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.kills >= SUITE.dep_kills and fig.failed_by_upstream > 0 and fig.overlaps == 0


async def test_a_sigkill_as_the_upstream_success_commits_loses_no_release(dsn: str, seed: int) -> None:
    fig = await dependency_scenarios.kill_after_upstream_success(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.kills == SUITE.dep_crash_rounds


async def rollup_after_orders(dsn: str) -> asyncpg.Connection:
    """A connection to a database with sources orders and rollup, rollup's dates after the same date of orders."""
    conn = await connect(dsn, "datesync-faults")
    for name in ("orders", "rollup"):
        await conn.execute("INSERT INTO datesync.source (name, handler) VALUES ($1, 'demo') ON CONFLICT DO NOTHING",
                           name)
    await conn.execute("INSERT INTO datesync.dependency (source, upstream, lo, hi) VALUES ('rollup', 'orders', 0, 0)")
    return conn


async def test_a_with_upstream_request_whose_upstream_date_fails_before_its_expansion_still_ends(dsn: str) -> None:
    """`with_upstream` links rollup's batch after the orders batch it requests: it is expanded once that batch is,
    not once it has ended. When the orders date fails for good in between (a fast failure, max_attempts 1, or a
    daemon killed while expanding rollup's batch), the failure's trigger finds no waiting date: the expansion (and
    the catch-up scan) must fail it, seeing the ledger's failure with nothing left to run it again. Before that,
    rollup's date waited for ever and its batch never ended."""
    conn = await rollup_after_orders(dsn)
    sources = ["orders", "rollup"]
    try:
        linked = await conn.fetch("SELECT * FROM datesync.batch_request_linked('rollup', $1, $1, false, NULL, "
                                  "'faults', true, false)", day(0))
        rollup = next(r["batch_id"] for r in linked if r["role"] == "requested")
        # A daemon expands the orders batch and claims its date; the date fails for good at once.
        claimed = [r for r in await conn.fetch("SELECT * FROM datesync.batch_expand_claim(1, 'w', 1, 60, $1)",
                                               sources) if r["kind"] == "claimed"]
        assert [r["source"] for r in claimed] == ["orders"]
        await conn.fetch("SELECT * FROM datesync.task_finish('w', $1, $2, '{failed}', '{HTTP 404}', '{0}', '{0}', "
                         "'{}', 0, 60, $3)", [claimed[0]["id"]], [claimed[0]["attempt"]], sources)
        # Then rollup's batch is expanded, and the catch-up scan runs.
        await conn.fetch("SELECT * FROM datesync.batch_expand_claim(1, 'w', 1, 60, $1)", sources)
        await conn.fetchval("SELECT datesync.task_release_ready()")
        task = await conn.fetchrow("SELECT state::text, error FROM datesync.task WHERE batch_id = $1", rollup)
        assert (task["state"], task["error"]) == ("failed", "orders 2024-01-01 failed: HTTP 404")
    finally:
        await conn.close()


async def test_a_downstream_date_failed_through_an_upstream_lease_expiry_gets_its_event(dsn: str) -> None:
    """An orders date whose daemon died during its last attempt fails when another daemon takes its lease back
    (task_requeue_expired, daemon/sync/store.py requeue_expired). The trigger fails rollup's waiting date in that
    transaction, and its event must be written there too (event_log_tasks reads the moves the trigger noted); it
    once was not, so SSE and the page never heard of the failure (seen in the dependent_sources scenario when a
    SIGKILL hit a last attempt)."""
    from datesync.daemon.db.queries import q

    conn = await rollup_after_orders(dsn)
    sources = ["orders", "rollup"]
    try:
        await conn.execute("INSERT INTO datesync.batch (source, start_date, end_date) VALUES ('rollup', $1, $1)",
                           day(0))
        await conn.execute("INSERT INTO datesync.batch (source, start_date, end_date) VALUES ('orders', $1, $1)",
                           day(0))
        while await conn.fetch("SELECT * FROM datesync.batch_expand_claim(1, 'dead', 1, 0.01, $1)", sources):
            pass
        await conn.execute("SELECT pg_sleep(0.05)")  # the dead daemon's lease runs out on its only attempt
        # What store.requeue_expired does, in one transaction.
        async with conn.transaction():
            rows = await conn.fetch(q("task_requeue_expired"), "alive")
            assert [(r["source"], r["state"]) for r in rows] == [("orders", "failed")]
            await conn.execute(q("day_mark_failed"), ["orders"], [day(0)], [rows[0]["error"]])
            from datesync.daemon.sync.store import _insert_task_events
            await _insert_task_events(conn, rows)
        task = await conn.fetchrow("SELECT id, state::text, error FROM datesync.task WHERE source = 'rollup'")
        assert task["state"] == "failed" and task["error"].startswith("orders 2024-01-01 failed: lease expired")
        told = await conn.fetchval("SELECT count(*) FROM datesync.event WHERE task_id = $1 AND state = 'failed'",
                                   task["id"])
        assert told == 1
    finally:
        await conn.close()
