"""No global serialisation point on the engine's hot path (issue 20): daemons finishing dates of one batch, and
transactions writing events, do not wait for each other; batch counts stay exact for readers while they do; and
the event log stays gapless for a reader that reads up to datesync.event_horizon(), whatever order concurrent
writers commit in."""

from __future__ import annotations

import asyncio
import datetime
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from tests.support.daemons import counts_mismatch, insert

D = datetime.date
SOURCES = ["default"]
Connect = Callable[[int], Awaitable[list[asyncpg.Connection]]]


@pytest.fixture
async def connections(dsn: str) -> AsyncIterator[Connect]:
    """Opens n more connections to the test database (other sessions, as other daemons or an operator's psql);
    all are closed when the test ends."""
    opened: list[asyncpg.Connection] = []

    async def connect(n: int) -> list[asyncpg.Connection]:
        opened.extend([await asyncpg.connect(dsn) for _ in range(n)])
        return opened[-n:]

    yield connect
    for conn in opened:
        await conn.close()


async def running_tasks(db: asyncpg.Connection, batch_id: int, n: int) -> list[asyncpg.Record]:
    """Expand batch_id and claim n of its dates as worker 'w'."""
    await db.fetch("SELECT * FROM datesync.batch_expand_claim(3, 'w', 0, 60, $1)", SOURCES)
    return list(await db.fetch("SELECT id, attempt FROM datesync.task_claim('w', $1, 60, $2)", n, SOURCES))


def finish_sql(task: asyncpg.Record, state: str = "succeeded") -> tuple[str, list]:
    return ("SELECT * FROM datesync.task_finish('w', $1, $2, $3, '{NULL}', '{1}', '{0}', '{}', 0, 60, $4)",
            [[task["id"]], [task["attempt"]], [state], SOURCES])


async def test_two_finishes_of_one_batch_do_not_wait_for_each_other(
        db: asyncpg.Connection, connections: Connect) -> None:
    batch_id = await insert(db, "2026-01-01", "2026-01-03")
    first, second, third = await running_tasks(db, batch_id, 3)
    a, b = await connections(2)
    tx = a.transaction()
    await tx.start()
    sql, args = finish_sql(first)
    await a.fetch(sql, *args)  # holds whatever a finish holds until its commit
    # Before issue 20 this waited on the batch row's counters and on the event lock until a committed.
    await b.execute("SET lock_timeout = '2s'")
    sql, args = finish_sql(second, "failed")
    await b.fetch(sql, *args)
    live = await db.fetchrow("SELECT queued, running, succeeded, failed FROM datesync.batch_progress "
                             "WHERE batch_id = $1", batch_id)
    assert tuple(live) == (0, 2, 0, 1)  # b's outcome is committed, a's not yet
    await tx.commit()
    live = await db.fetchrow("SELECT running, succeeded, failed, state::text FROM datesync.batch_progress "
                             "WHERE batch_id = $1", batch_id)
    assert tuple(live) == (1, 1, 1, "running")
    sql, args = finish_sql(third)
    rows = await b.fetch(sql, *args)
    assert {r["batch_state"] for r in rows} == {"failed"}  # the last outcome ends the batch
    ended = await db.fetchrow("SELECT state::text, succeeded, failed, queued, running FROM datesync.batch "
                              "WHERE id = $1", batch_id)
    assert tuple(ended) == ("failed", 2, 1, 0, 0)  # the batch row itself holds the final counts
    assert await counts_mismatch(db) == []
    final = await db.fetchval("SELECT data FROM datesync.event WHERE batch_id = $1 AND kind = 'batch' "
                              "AND data ? 'final'", batch_id)
    assert (final["succeeded"], final["failed"]) == (2, 1)


async def test_the_last_two_dates_finished_at_once_end_the_batch_after_their_commits(
        db: asyncpg.Connection, connections: Connect) -> None:
    """Neither finish sees the other's outcome, so neither can end the batch in its own transaction: the call
    made after a commit (what the daemon does when it holds no more dates of the batch) ends it."""
    batch_id = await insert(db, "2026-01-01", "2026-01-02")
    first, second = await running_tasks(db, batch_id, 2)
    a, b = await connections(2)
    await b.execute("SET lock_timeout = '2s'")
    tx_a, tx_b = a.transaction(), b.transaction()
    await tx_a.start()
    await tx_b.start()
    for conn, task in ((a, first), (b, second)):
        sql, args = finish_sql(task)
        rows = await conn.fetch(sql, *args)
        assert {r["batch_state"] for r in rows} == {None}
    await tx_a.commit()
    await tx_b.commit()
    assert await db.fetchval("SELECT state::text FROM datesync.batch WHERE id = $1", batch_id) == "running"
    ended = await db.fetch("SELECT * FROM datesync.batch_end_settled($1)", [batch_id])
    assert [(r["id"], r["state"], r["succeeded"]) for r in ended] == [(batch_id, "succeeded", 2)]
    assert await db.fetch("SELECT * FROM datesync.batch_end_settled($1)", [batch_id]) == []


async def test_counts_stay_exact_through_many_small_transactions(db: asyncpg.Connection) -> None:
    """Each finish adds a row of count changes; now and then they are folded into the batch row. Readers see
    the batch row plus the rows not yet folded, equal to a count of the tasks at every step."""
    batch_id = await insert(db, "2025-01-01", "2025-04-30")  # 120 dates
    tasks = await running_tasks(db, batch_id, 120)
    for i, task in enumerate(tasks):
        sql, args = finish_sql(task, "failed" if i % 7 == 0 else "succeeded")
        await db.fetch(sql, *args)
        if i % 10 == 0:
            assert await counts_mismatch(db) == []
    assert await db.fetchval("SELECT count(*) FROM datesync.batch_count WHERE batch_id = $1", batch_id) == 0
    row = await db.fetchrow("SELECT state::text, succeeded, failed FROM datesync.batch WHERE id = $1", batch_id)
    assert tuple(row) == ("failed", 102, 18)


async def test_two_event_writers_do_not_wait_for_each_other(db: asyncpg.Connection, connections: Connect) -> None:
    batch_id = await insert(db, "2026-01-01", "2026-01-01")
    a, b = await connections(2)
    tx = a.transaction()
    await tx.start()
    await a.execute("INSERT INTO datesync.event (batch_id, kind, state) VALUES ($1, 'batch', 'running')", batch_id)
    await b.execute("SET lock_timeout = '2s'")
    await b.execute("INSERT INTO datesync.event (batch_id, kind, state) VALUES ($1, 'batch', 'running')", batch_id)
    # A reader's horizon stops before a's event, still uncommitted, although b's later id is committed.
    a_id = await a.fetchval("SELECT max(id) FROM datesync.event")
    horizon = asyncio.create_task(db.fetchval("SELECT datesync.event_horizon()"))
    await asyncio.sleep(0.2)
    assert not horizon.done()  # it waits for a's commit rather than answer past a's event
    await tx.commit()
    assert await horizon >= a_id


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_reader_up_to_the_horizon_sees_every_event_once_in_order(
        db: asyncpg.Connection, dsn: str, seed: int) -> None:
    """Property: writers insert events in transactions that commit (or roll back) in random order, while a
    reader follows "id > last AND id <= event_horizon()". It sees every committed event exactly once, in id
    order, and none of a rolled-back transaction."""
    rng = random.Random(seed)
    batch_id = await insert(db, "2026-01-01", "2026-01-01")
    start = await db.fetchval("SELECT datesync.event_horizon()")
    writers = [await asyncpg.connect(dsn) for _ in range(6)]
    committed: list[int] = []
    seen: list[int] = []
    stop = asyncio.Event()

    async def writer(conn: asyncpg.Connection) -> None:
        for _ in range(15):
            tx = conn.transaction()
            await tx.start()
            ids = [await conn.fetchval("INSERT INTO datesync.event (batch_id, kind, state) "
                                       "VALUES ($1, 'batch', 'running') RETURNING id", batch_id)
                   for _ in range(rng.randint(1, 3))]
            await asyncio.sleep(rng.random() * 0.02)
            if rng.random() < 0.2:
                await tx.rollback()
            else:
                await tx.commit()
                committed.extend(ids)

    async def reader() -> None:
        last = start
        while True:
            done = stop.is_set()
            horizon = await db.fetchval("SELECT datesync.event_horizon()")
            rows = await db.fetch("SELECT id FROM datesync.event WHERE id > $1 AND id <= $2 ORDER BY id",
                                  last, horizon)
            seen.extend(r["id"] for r in rows)
            last = max([last, *[r["id"] for r in rows]])
            if done:
                return
            await asyncio.sleep(rng.random() * 0.005)

    try:
        read = asyncio.create_task(reader())
        await asyncio.gather(*(writer(w) for w in writers))
        stop.set()
        await read
    finally:
        for w in writers:
            await w.close()
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen))
    assert seen == sorted(committed)


async def test_an_open_transaction_that_wrote_an_event_delays_a_reader_but_wedges_no_writer(
        db: asyncpg.Connection, connections: Connect) -> None:
    """An operator's psql session inserted a batch (its trigger writes an event) and left the transaction open.
    Before issue 20 every daemon's finish then waited on the event lock until it ended. Now a reader asking for
    the horizon gives up after a second, and a writer queued behind that reader goes on as soon as it does."""
    batch_id = await insert(db, "2026-02-01", "2026-02-01")
    operator, writer = await connections(2)
    tx = operator.transaction()
    await tx.start()
    await operator.execute("INSERT INTO datesync.batch (start_date, end_date) VALUES ('2026-01-01', '2026-01-01')")
    reader = asyncio.create_task(db.fetchval("SELECT datesync.event_horizon()"))
    await asyncio.sleep(0.1)  # the reader waits for the operator's transaction now
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(writer.execute(
        "INSERT INTO datesync.event (batch_id, kind, state) VALUES ($1, 'batch', 'running')", batch_id), 5)
    assert loop.time() - started < 3
    with pytest.raises(asyncpg.LockNotAvailableError):
        await reader
    await tx.commit()
    assert await db.fetchval("SELECT datesync.event_horizon()") >= await db.fetchval(
        "SELECT max(id) FROM datesync.event")


async def test_an_expansion_notifies_the_other_daemons_only_when_it_leaves_dates_to_share(
        db: asyncpg.Connection, connections: Connect) -> None:
    # A NOTIFY costs its commit the server-wide notification lock and wakes every daemon, the expanding one too.
    (listener,) = await connections(1)
    heard: list[str] = []
    await listener.add_listener("datesync_batch", lambda *args: heard.append(args[3]))
    await insert(db, "2026-01-01", "2026-01-01")
    await asyncio.sleep(0.2)
    heard.clear()  # the INSERT's own
    await db.fetch("SELECT * FROM datesync.batch_expand_claim(3, 'w', 5, 60, $1)", SOURCES)
    await asyncio.sleep(0.2)
    assert heard == []  # its one date was claimed in the same transaction: nothing left for another daemon
    more = await insert(db, "2026-02-01", "2026-02-10")
    await asyncio.sleep(0.2)
    heard.clear()
    await db.fetch("SELECT * FROM datesync.batch_expand_claim(3, 'w', 5, 60, $1)", SOURCES)
    await asyncio.sleep(0.2)
    assert heard == [str(more)]  # five dates left queued
