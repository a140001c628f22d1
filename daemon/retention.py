"""Retention (`DATESYNC_RETENTION`, days): a finished batch older than that loses its task and event rows.

Kept: the batch row with its final counts and its latest final event, every `datesync.day` row (the ledger, with the
errors of failed dates), and the Idempotency-Keys that named the batch. The work is done by
`datesync.batch_prune_step` (migration 0008), one small transaction at a time, so that it never holds the engine up:
see that function for how it stays out of the hot path's way and how several daemons share it.

A daemon side task: one pass at start, then one an hour. When the operator lets an idle database sleep
(DATESYNC_POLL_INTERVAL of 300 s or more) an hourly pass waits until this daemon is busy anyway, so that pruning
never wakes a suspended Neon compute on its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import asyncpg
import structlog

from datesync.daemon import metrics
from datesync.daemon.backoff import Backoff
from datesync.daemon.db.connect import DB_ERRORS
from datesync.daemon.db.queries import q
from datesync.daemon.sync.outcome import error_text

log = structlog.get_logger("datesync.retention")

INTERVAL = 3600.0  # seconds between passes
STEP_ROWS = 2000  # task rows and event rows deleted per transaction, at most
AWAKE_CHECK = 60.0  # seconds between looks at whether the database is awake anyway (when it may sleep)


@dataclasses.dataclass
class Pruned:
    """What one pass removed."""

    batches: int = 0  # batches whose pruning this pass completed
    tasks: int = 0
    events: int = 0
    steps: int = 0

    @property
    def anything(self) -> bool:
        return bool(self.tasks or self.events or self.batches)


# Waits after a failed prune (the next hourly pass is never more than the cap away).
RETRY = Backoff(2.0, cap=300.0)


@dataclasses.dataclass(eq=False)
class Retention:
    """The pruner of one daemon; `prune_batches` is the loop the daemon supervises. `may_sleep`: the database may
    suspend when idle, so passes after the first wait until `awake()` (this daemon has work, which keeps the
    database awake anyway)."""

    pool: asyncpg.Pool
    days: int
    _: dataclasses.KW_ONLY
    may_sleep: bool = False
    awake: Callable[[], bool] = lambda: True
    interval: float = INTERVAL
    step_rows: int = STEP_ROWS
    awake_check: float = AWAKE_CHECK

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError("retention needs at least 1 day (0 keeps everything: run no pruner)")

    async def prune_once(self) -> Pruned:
        """Prune every batch that finished more than `days` ago (by the database's clock); a transaction a step."""
        done = Pruned()
        sql = q("batch_prune_step")
        while True:
            # Each step commits on its own (no explicit transaction): a few thousand rows, then the locks go.
            async with self.pool.acquire() as conn:
                row = await conn.fetchrow(sql, self.days, self.step_rows)
            if row is None:
                break
            done.steps += 1
            done.tasks += row["tasks"]
            done.events += row["events"]
            done.batches += row["pruned"]
            # Counted per committed step: a pass cut short by a database error still reports what it removed.
            metrics.PRUNED.labels("tasks").inc(row["tasks"])
            metrics.PRUNED.labels("events").inc(row["events"])
            metrics.PRUNED.labels("batches").inc(row["pruned"])
            if not (row["tasks"] or row["events"] or row["pruned"]):
                break  # a batch with nothing deletable left that could not be marked: not ours to spin on
            await asyncio.sleep(0)  # let the engine's coroutines in between steps
        return done

    async def prune_batches(self) -> None:
        """Prune at start and then every `interval` seconds, until cancelled; database errors are retried."""
        log.info("retention_started", days=self.days, interval_s=self.interval)
        failures = 0
        first = True
        due = time.monotonic()
        while True:
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if not first and failures == 0 and self.may_sleep and not self.awake():
                await asyncio.sleep(self.awake_check)  # a pass now would wake a sleeping database just for this
                continue
            started = time.monotonic()
            try:
                done = await self.prune_once()
            except DB_ERRORS as exc:
                failures += 1
                log.warning("retention_database_error", error=error_text(exc), failures=failures)
                due = time.monotonic() + RETRY.delay(failures)
                continue
            failures = 0
            first = False
            log.info("retention_pruned" if done.anything else "retention_nothing_to_prune", days=self.days,
                     batches=done.batches, tasks=done.tasks, events=done.events, transactions=done.steps,
                     seconds=round(time.monotonic() - started, 3))
            due = time.monotonic() + self.interval
