"""Sources that depend on each other, in the engine's own functions (daemon/db/functions/45_dependency.sql):
waiting, release in the transaction of the upstream success, failure down the graph, windows, staleness, the
guard against queueing by hand, and the expansion order of linked batches."""

from __future__ import annotations

import datetime

import asyncpg
import pytest

from datesync.daemon.db.queries import q

D = datetime.date
SOURCES = ["orders", "rollup", "weekly"]


@pytest.fixture
async def graph(db: asyncpg.Connection) -> asyncpg.Connection:
    """orders; rollup after orders (the same date); weekly after rollup:-1..0 (the date and the day before)."""
    for name in SOURCES:
        await db.execute("INSERT INTO datesync.source (name, handler) VALUES ($1, 'noop') ON CONFLICT DO NOTHING", name)
    await db.execute("INSERT INTO datesync.dependency (source, upstream, lo, hi) VALUES "
                     "('rollup', 'orders', 0, 0), ('weekly', 'rollup', -1, 0)")
    return db


async def request(db: asyncpg.Connection, source: str, start: str, end: str, force: bool = False,
                  after: list[int] | None = None) -> int:
    return int(await db.fetchval(
        "INSERT INTO datesync.batch (source, start_date, end_date, force, after_batches) VALUES ($1, $2, $3, $4, $5) "
        "RETURNING id", source, D.fromisoformat(start), D.fromisoformat(end), force, after or []))


async def expand_all(db: asyncpg.Connection) -> list[int]:
    expanded = []
    while rows := await db.fetch("SELECT * FROM datesync.batch_expand_claim(3, 'w', 0, 60, $1)", SOURCES):
        expanded += [r["id"] for r in rows if r["kind"] == "expanded"]
    return expanded


async def claim(db: asyncpg.Connection) -> list[tuple[str, D, str]]:
    rows = await db.fetch("SELECT * FROM datesync.task_claim('w', 100, 60, $1)", SOURCES)
    return sorted((r["source"], r["day"], r["state"]) for r in rows)


async def finish(db: asyncpg.Connection, outcomes: dict[tuple[str, str], str], error: str | None = None) -> list:
    ids, attempts, states = [], [], []
    for (source, day), state in outcomes.items():
        row = await db.fetchrow("SELECT id, attempt FROM datesync.task WHERE source = $1 AND day = $2 "
                                "AND state = 'running'", source, D.fromisoformat(day))
        ids.append(row["id"])
        attempts.append(row["attempt"])
        states.append(state)
    n = len(ids)
    return await db.fetch("SELECT * FROM datesync.task_finish('w', $1, $2, $3, $4, $5, $6, '{}', 0, 60, $7)",
                          ids, attempts, states, [error] * n, [1] * n, [0.0] * n, SOURCES)



async def requested_and_claimed(db: asyncpg.Connection, upstream: tuple[str, ...], *downstream: tuple[str, ...]
                                ) -> list[int]:
    """Request each (source, start[, end]) in turn, expand them all and claim what can run; the downstream batch
    ids."""
    await request(db, upstream[0], upstream[1], upstream[-1])
    ids = [await request(db, d[0], d[1], d[-1]) for d in downstream]
    await expand_all(db)
    await claim(db)
    return ids

async def states(db: asyncpg.Connection, source: str) -> dict[D, str]:
    rows = await db.fetch("SELECT day, state::text FROM datesync.task WHERE source = $1 ORDER BY id", source)
    return {r["day"]: r["state"] for r in rows}


async def test_a_downstream_date_waits_and_is_released_by_its_upstream_success(graph: asyncpg.Connection) -> None:
    db = graph
    orders = await request(db, "orders", "2026-03-01", "2026-03-02")
    rollup = await request(db, "rollup", "2026-03-01", "2026-03-02")
    await expand_all(db)
    assert await states(db, "rollup") == {D(2026, 3, 1): "waiting", D(2026, 3, 2): "waiting"}
    counts = await db.fetchrow("SELECT waiting, queued FROM datesync.batch_progress WHERE batch_id = $1", rollup)
    assert tuple(counts) == (2, 0)
    # The waiting dates hold no slot: a claim takes only the upstream dates.
    assert await claim(db) == [("orders", D(2026, 3, 1), "running"), ("orders", D(2026, 3, 2), "running")]
    waiting = await db.fetch("SELECT day, data FROM datesync.event WHERE batch_id = $1 AND state = 'waiting'",
                             rollup)
    assert {r["data"]["waiting_for"] for r in waiting} == {"orders 2026-03-01", "orders 2026-03-02"}
    # The upstream success releases the same date in the same call, with its event, and nothing else.
    await finish(db, {("orders", "2026-03-01"): "succeeded"})
    assert await states(db, "rollup") == {D(2026, 3, 1): "queued", D(2026, 3, 2): "waiting"}
    released = await db.fetchrow("SELECT state, data FROM datesync.event WHERE batch_id = $1 AND kind = 'task' "
                                 "ORDER BY id DESC LIMIT 1", rollup)
    assert released["state"] == "queued" and released["data"]["counts"]["waiting"] == 1
    assert await claim(db) == [("rollup", D(2026, 3, 1), "running")]
    await finish(db, {("orders", "2026-03-02"): "succeeded", ("rollup", "2026-03-01"): "succeeded"})
    assert await claim(db) == [("rollup", D(2026, 3, 2), "running")]
    await finish(db, {("rollup", "2026-03-02"): "succeeded"})
    ended = await db.fetch("SELECT id, state::text FROM datesync.batch ORDER BY id")
    assert [tuple(r) for r in ended] == [(orders, "succeeded"), (rollup, "succeeded")]


async def test_an_upstream_date_already_synced_lets_the_date_run_at_once(graph: asyncpg.Connection) -> None:
    db = graph
    await request(db, "orders", "2026-03-01", "2026-03-01")
    await expand_all(db)
    await claim(db)
    await finish(db, {("orders", "2026-03-01"): "succeeded"})
    rollup = await request(db, "rollup", "2026-03-01", "2026-03-02")
    await expand_all(db)
    assert await states(db, "rollup") == {D(2026, 3, 1): "queued", D(2026, 3, 2): "waiting"}
    live = await db.fetchrow("SELECT waiting, queued FROM datesync.batch_progress WHERE batch_id = $1", rollup)
    assert tuple(live) == (1, 1)


async def test_an_upstream_failure_fails_the_dates_down_the_graph_without_running_them(
    graph: asyncpg.Connection,
) -> None:
    db = graph
    rollup, weekly = await requested_and_claimed(db, ("orders", "2026-03-01", "2026-03-02"),
                                                 ("rollup", "2026-03-01", "2026-03-02"),
                                                 ("weekly", "2026-03-02", "2026-03-03"))
    await finish(db, {("orders", "2026-03-01"): "failed"}, error="HTTP 503 from the upstream")
    rollup_states = await db.fetch("SELECT day, state::text, error, attempt FROM datesync.task WHERE batch_id = $1 "
                                   "ORDER BY day", rollup)
    assert [(r["day"], r["state"], r["attempt"]) for r in rollup_states] == [
        (D(2026, 3, 1), "failed", 0), (D(2026, 3, 2), "waiting", 0)]
    assert rollup_states[0]["error"] == "orders 2026-03-01 failed: HTTP 503 from the upstream"
    # weekly 03-02 waits for rollup 03-01 and 03-02: the failure ran down to it; weekly 03-03 still waits.
    weekly_states = await db.fetch("SELECT day, state::text, error FROM datesync.task WHERE batch_id = $1 "
                                   "ORDER BY day", weekly)
    assert [(r["day"], r["state"]) for r in weekly_states] == [(D(2026, 3, 2), "failed"), (D(2026, 3, 3), "waiting")]
    assert weekly_states[0]["error"].startswith("rollup 2026-03-01 failed: orders 2026-03-01 failed")
    # The rest still runs in order; the downstream batches end failed with exact counts.
    await finish(db, {("orders", "2026-03-02"): "succeeded"})
    assert await claim(db) == [("rollup", D(2026, 3, 2), "running")]
    await finish(db, {("rollup", "2026-03-02"): "succeeded"})
    assert await states(db, "weekly") == {D(2026, 3, 2): "failed", D(2026, 3, 3): "waiting"}
    row = await db.fetchrow("SELECT state::text, succeeded, failed, waiting FROM datesync.batch WHERE id = $1", rollup)
    assert tuple(row) == ("failed", 1, 1, 0)


async def test_a_window_waits_for_every_date_in_it(graph: asyncpg.Connection) -> None:
    db = graph
    await request(db, "rollup", "2026-03-01", "2026-03-02")
    weekly = await request(db, "weekly", "2026-03-02", "2026-03-02")
    await request(db, "orders", "2026-03-01", "2026-03-02")
    await expand_all(db)
    waiting = await db.fetchval("SELECT data ->> 'waiting_for' FROM datesync.event WHERE batch_id = $1 "
                                "AND state = 'waiting'", weekly)
    assert waiting == "rollup 2026-03-01, rollup 2026-03-02"
    await claim(db)
    await finish(db, {("orders", "2026-03-02"): "succeeded"})
    assert await claim(db) == [("rollup", D(2026, 3, 2), "running")]
    await finish(db, {("rollup", "2026-03-02"): "succeeded"})
    assert await states(db, "weekly") == {D(2026, 3, 2): "waiting"}  # rollup 03-01 has not synced yet
    await finish(db, {("orders", "2026-03-01"): "succeeded"})
    await claim(db)
    await finish(db, {("rollup", "2026-03-01"): "succeeded"})
    assert await states(db, "weekly") == {D(2026, 3, 2): "queued"}


async def test_a_forced_resync_marks_downstream_days_stale_until_they_sync_again(graph: asyncpg.Connection) -> None:
    db = graph
    await request(db, "orders", "2026-03-01", "2026-03-01")
    await request(db, "rollup", "2026-03-01", "2026-03-01")
    await expand_all(db)
    await claim(db)
    await finish(db, {("orders", "2026-03-01"): "succeeded"})
    await claim(db)
    await finish(db, {("rollup", "2026-03-01"): "succeeded"})
    resync = await request(db, "orders", "2026-03-01", "2026-03-01", force=True)
    await expand_all(db)
    await claim(db)
    assert await db.fetchval("SELECT stale_since FROM datesync.day WHERE source = 'rollup'") is None
    await finish(db, {("orders", "2026-03-01"): "succeeded"})
    assert await db.fetchval("SELECT stale_since IS NOT NULL FROM datesync.day WHERE source = 'rollup'")
    event = await db.fetchrow("SELECT kind, state, day, data FROM datesync.event WHERE batch_id = $1 AND kind = 'day'",
                              resync)
    assert (event["state"], event["day"]) == ("stale", D(2026, 3, 1))
    assert event["data"] == {"source": "rollup", "upstream": "orders", "upstream_day": "2026-03-01"}
    # A cascade: the downstream re-sync, expanded after the upstream one, waits for it and clears the mark.
    resync = await request(db, "orders", "2026-03-01", "2026-03-01", force=True)
    cascade = await request(db, "rollup", "2026-03-01", "2026-03-01", force=True, after=[resync])
    await expand_all(db)
    assert await states(db, "rollup") == {D(2026, 3, 1): "waiting"}
    assert await claim(db) == [("orders", D(2026, 3, 1), "running")]
    await finish(db, {("orders", "2026-03-01"): "succeeded"})
    assert await claim(db) == [("rollup", D(2026, 3, 1), "running")]
    await finish(db, {("rollup", "2026-03-01"): "succeeded"})
    assert await db.fetchval("SELECT stale_since FROM datesync.day WHERE source = 'rollup'") is None
    assert await db.fetchval("SELECT state::text FROM datesync.batch WHERE id = $1", cascade) == "succeeded"


async def test_a_batch_linked_after_another_is_not_expanded_before_it(graph: asyncpg.Connection, dsn: str) -> None:
    db = graph
    first = await request(db, "orders", "2026-03-01", "2026-03-01", force=True)
    linked = await request(db, "rollup", "2026-03-01", "2026-03-01", after=[first])
    other = await asyncpg.connect(dsn)
    try:
        async with other.transaction():
            # Another daemon is expanding `first` (its row locked): the linked batch is not taken instead.
            await other.execute("SELECT 1 FROM datesync.batch WHERE id = $1 FOR UPDATE", first)
            assert await expand_all(db) == []
    finally:
        await other.close()
    assert await expand_all(db) == [first, linked]
    assert await states(db, "rollup") == {D(2026, 3, 1): "waiting"}


async def test_queueing_a_waiting_date_by_hand_is_refused_with_what_it_waits_for(graph: asyncpg.Connection) -> None:
    db = graph
    await request(db, "rollup", "2026-03-01", "2026-03-01")
    await expand_all(db)
    with pytest.raises(asyncpg.CheckViolationError, match="it waits for orders 2026-03-01"):
        await db.execute("UPDATE datesync.task SET state = 'queued' WHERE source = 'rollup'")
    # Marking the upstream day synced by hand is honoured by the catch-up scan.
    await db.execute("INSERT INTO datesync.day (source, day, status, synced_at) "
                     "VALUES ('orders', '2026-03-01', 'success', now())")
    assert await db.fetchval("SELECT datesync.task_release_ready()") == 1
    assert await states(db, "rollup") == {D(2026, 3, 1): "queued"}


async def test_a_cancelled_batch_cancels_its_waiting_dates(graph: asyncpg.Connection) -> None:
    db = graph
    rollup = await request(db, "rollup", "2026-03-01", "2026-03-02")
    await expand_all(db)
    await db.fetch(q("task_cancel_queued"), [rollup])
    row = await db.fetchrow("SELECT waiting, cancelled FROM datesync.batch_progress WHERE batch_id = $1", rollup)
    assert tuple(row) == (0, 2)


async def test_an_upstream_lost_for_good_with_its_lease_fails_the_dates_built_on_it_with_their_events(
    graph: asyncpg.Connection,
) -> None:
    db = graph
    [rollup] = await requested_and_claimed(db, ("orders", "2026-03-01"), ("rollup", "2026-03-01"))
    # The daemon running orders 03-01 died during its last attempt; another daemon takes the lease back.
    await db.execute("UPDATE datesync.task SET attempt = max_attempts, lease_expires_at = now() - interval '1 s' "
                     "WHERE source = 'orders'")
    async with db.transaction():
        rows = await db.fetch(q("task_requeue_expired"), "other")
        await db.execute(q("event_log_tasks"), [r["id"] for r in rows])
    failed = await db.fetchrow("SELECT state::text, error FROM datesync.task WHERE batch_id = $1", rollup)
    assert failed["state"] == "failed" and failed["error"].startswith("orders 2026-03-01 failed: lease expired")
    event = await db.fetchrow("SELECT state, data FROM datesync.event WHERE batch_id = $1 AND kind = 'task' "
                              "ORDER BY id DESC LIMIT 1", rollup)
    assert event["state"] == "failed" and event["data"]["counts"]["failed"] == 1
    assert await db.fetchval("SELECT state::text FROM datesync.batch WHERE id = $1", rollup) == "running"
