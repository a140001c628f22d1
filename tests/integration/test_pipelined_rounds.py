"""Pipelined rounds (daemon/sync/worker.py, PIPELINE_*, ROUND_FULL): a daemon with quick handlers leases dates
ahead and writes a round while others are in flight; a small one writes all the dates it holds in one
round. Handlers still never run more than `concurrency` at once, a slow daemon never leases ahead, and a stop hands
the dates leased ahead back without running them or counting an attempt."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from typing import NoReturn

import asyncpg

from datesync.daemon.sync.context import SyncContext
from datesync.daemon.sync.handlers.base import Handler
from datesync.daemon.sync.worker import ROUND_FULL, ROUNDS_IN_FLIGHT
from tests.support.daemons import FAST, counts_mismatch, insert, running_daemon, wait_batch_final
from tests.support.waiting import wait_for

LEASED = "SELECT count(*) FROM datesync.task WHERE state = 'running' AND lease_owner = $1"
SLOTS = 8
# Outcomes written by one transaction share its finished_at (now()): the largest round of a batch.
LARGEST_ROUND = ("SELECT max(n) FROM (SELECT count(*) AS n FROM datesync.task WHERE batch_id = $1 "
                 "GROUP BY finished_at) r")


@dataclasses.dataclass
class Probe:
    """A handler that records how many of its calls run at once and the most dates its daemon had leased."""

    seconds: float = 0.0
    block_after: int | None = None  # calls after this many wait until cancelled
    calls: int = 0
    now: int = 0
    most_at_once: int = 0
    most_leased: int = 0

    async def sync(self, day: datetime.date, ctx: SyncContext) -> int:
        self.calls += 1
        call = self.calls
        self.now += 1
        self.most_at_once = max(self.most_at_once, self.now)
        try:
            self.most_leased = max(self.most_leased, await ctx.db.fetchval(LEASED, ctx.worker))
            if self.block_after is not None and call > self.block_after:
                await asyncio.Event().wait()
            await asyncio.sleep(self.seconds)
            return 1
        finally:
            self.now -= 1

    def handler(self) -> Handler:
        return Handler(name="probe", sync=self.sync, session_safe=True)


async def test_a_pipelined_daemon_leases_ahead_and_still_runs_at_most_its_slots(
    db: asyncpg.Connection, dsn: str
) -> None:
    probe = Probe()
    slots = SLOTS
    async with running_daemon(dsn, FAST.replace(concurrency=slots), handler=probe.handler()):
        final = await wait_batch_final(db, await insert(db, "2024-01-01", "2024-09-30"), timeout=60)
    assert (final["state"], final["succeeded"]) == ("succeeded", 274)
    assert probe.calls == 274 and probe.most_at_once <= slots
    assert probe.most_leased > slots  # it did lease ahead: the dates waiting for a slot are running in the database
    assert await db.fetchval("SELECT count(*) FROM datesync.task WHERE attempt <> 1") == 0
    assert await counts_mismatch(db) == []


async def test_a_small_daemon_writes_all_the_dates_it_holds_in_one_round(db: asyncpg.Connection, dsn: str) -> None:
    """A round's fixed cost is most of a small round's work: a daemon of 4 slots leases 4 ahead, and its rounds carry
    up to all 8 (before, at most 4: one per slot)."""
    small = Probe()
    slots = 4
    async with running_daemon(dsn, FAST.replace(concurrency=slots), handler=small.handler()):
        batch_id = await insert(db, "2024-01-01", "2024-03-31")
        final = await wait_batch_final(db, batch_id, timeout=60)
    assert (final["state"], final["succeeded"]) == ("succeeded", 91)
    assert small.calls == 91 and small.most_at_once <= slots < small.most_leased
    assert slots < await db.fetchval(LARGEST_ROUND, batch_id) <= min(2 * slots, ROUND_FULL)
    assert await counts_mismatch(db) == []


async def test_a_slow_daemon_never_leases_ahead(db: asyncpg.Connection, dsn: str) -> None:
    slow = Probe(seconds=0.08)
    async with running_daemon(dsn, FAST.replace(concurrency=SLOTS), handler=slow.handler()):
        batch_id = await insert(db, "2023-01-01", "2023-02-28", force=True)
        await wait_batch_final(db, batch_id, timeout=60)
    assert slow.calls == 59 and slow.most_leased <= SLOTS
    assert await db.fetchval(LARGEST_ROUND, batch_id) <= SLOTS


async def test_a_stop_hands_the_dates_leased_ahead_back_unrun_and_uncounted(db: asyncpg.Connection, dsn: str) -> None:
    slots = SLOTS
    probe = Probe(block_after=60)
    async with running_daemon(dsn, FAST.replace(concurrency=slots), handler=probe.handler(), grace=0.3) as daemon:
        batch_id = await insert(db, "2024-01-01", "2024-12-31")
        # The slots are full of blocked dates, and a slot's worth more per other round in flight is leased ahead.
        async def full() -> bool:
            return probe.calls == 60 + slots and await db.fetchval(LEASED, daemon.worker) == ROUNDS_IN_FLIGHT * slots

        await wait_for(full, timeout=30)
    assert probe.calls == 60 + slots  # the dates leased ahead never ran
    rows = await db.fetch("SELECT state::text, attempt, count(*) FROM datesync.task WHERE batch_id = $1 "
                          "GROUP BY 1, 2 ORDER BY 1, 2", batch_id)
    # Handed back at the stop: queued, the attempt not counted (the blocked ones' and the ones leased ahead).
    assert [tuple(r) for r in rows] == [("queued", 0, 366 - 60), ("succeeded", 1, 60)]
    assert await counts_mismatch(db) == []


async def test_a_round_that_fails_beyond_its_retries_stops_the_daemon(db: asyncpg.Connection, dsn: str) -> None:
    """A round's write runs beside the finisher: a failure the write does not retry (a bug, not the database)
    stops the daemon, as a crash of the finisher itself did, instead of dying unseen with its slots taken."""
    probe = Probe()
    settings = FAST.replace(concurrency=SLOTS, lease=1)
    async with running_daemon(dsn, settings, handler=probe.handler()) as daemon:
        written = daemon.store.finish

        async def broken(*args: object, **kwargs: object) -> NoReturn:
            raise RuntimeError("a bug in a round")

        daemon.store.finish = broken  # type: ignore[method-assign]
        batch_id = await insert(db, "2024-01-01", "2024-01-05")

        async def stopping() -> bool:
            return daemon.stopping

        await wait_for(stopping, timeout=10)
        daemon.store.finish = written  # type: ignore[method-assign]
    assert probe.calls >= 1
    # The failed round's outcomes are lost with it, not its dates: their leases run out and another daemon runs them.
    async with running_daemon(dsn, settings, handler=Probe().handler()):
        final = await wait_batch_final(db, batch_id, timeout=30)
    assert (final["state"], final["succeeded"]) == ("succeeded", 5)
    assert await counts_mismatch(db) == []
