"""The daemon's run loop: wake, expand batches, claim dates under a bounded number of slots, run handlers,
renew leases, write outcomes, and hand work back on shutdown.

One asyncio task per running date; a finisher task writes outcomes in batches (one transaction for all that
finished since its last write); a heartbeat task renews leases and notices cancels and takeovers. A NOTIFY or a
finished date only wakes the loop early: the loop itself rescans the tables on start, on every listener
(re)connect and every `poll_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from datesync.daemon import metrics
from datesync.daemon.backoff import Backoff
from datesync.daemon.db.connect import DB_ERRORS as CONNECT_DB_ERRORS
from datesync.daemon.listener import Listener
from datesync.daemon.settings import Settings
from datesync.daemon.sync.attempt import (
    UNWIND_S,
    Ended,
    absorb_cancel,
    connection_gone,
    lost_connection,
    run_handler,
    terminate,
)
from datesync.daemon.sync.clean import error_text, row_count, traceback_text
from datesync.daemon.sync.context import SyncContext
from datesync.daemon.sync.handlers.base import Handler
from datesync.daemon.sync.outcome import Kind, Outcome, fallbacks, retry_delay, retry_may_cure
from datesync.daemon.sync.store import Claimed, Store

log = structlog.get_logger("datesync.daemon")

BATCH_CHANNEL = "datesync_batch"
# A batch at least this long refreshes the task table's statistics once expanded: PostgreSQL keeps the hot path's
# plans per connection, made from the statistics of their time, and a plan made while the queue was tiny walks whole
# indexes once it is large. Autovacuum would catch up within a minute or so; this is at once.
ANALYZE_AFTER_DAYS = 500
# Database failures to retry or report, never to die of. asyncpg's InternalClientError ("cannot switch to state
# 11; another operation is in progress") comes from a pooled connection that a server shutdown cut mid-operation;
# it once crashed the finisher, which stopped the daemon with its dates unwritten (issue 15's restart soak).
DB_FAILURES: tuple[type[BaseException], ...] = (*CONNECT_DB_ERRORS, asyncpg.InternalClientError)
# After the shutdown grace, how long stopping dates and writing their outcomes may take before the process goes
# anyway (an unwritten date's lease then runs out and another daemon takes it): past UNWIND_S, with room for writes.
AFTER_GRACE_S = UNWIND_S + 4.0
# A date whose own connection broke under it this many times in a row (here) counts the next such attempt.
MAX_LOST_HANDBACKS = 5
# Waits while the database fails the loop's looks (each failure doubles it), and while it refuses an outcome's
# write (from 20 ms, quadrupling: a write is usually back within a few tries, and slots wait meanwhile).
DATABASE_RETRY = Backoff(0.5, cap=10.0)
FINISH_RETRY = Backoff(0.02, cap=5.0, factor=4.0)
# Pipelined rounds. A round (write outcomes, claim dates for the slots they free) is one transaction the daemon
# waits for: with quick handlers the dates waited for the database, then the database for the dates, in turn, and
# one daemon used one core of each. While the recent handler runs average under PIPELINE_BELOW_S, a daemon leases
# dates ahead, which wait in it for a slot (handlers still run at most `concurrency` at once), and writes a round
# while others are in flight.
# A round's fixed cost (about 0.7 ms of the database's time, against 0.05 ms per date) is most of a small round's
# work, so a small daemon (at most ROUND_FULL dates held: 5 slots and fewer) holds twice its slots and writes them
# all in one round; a bigger one holds a slot's worth per round in flight (ROUNDS_IN_FLIGHT) and writes rounds of
# `concurrency`, which overlap.
# Measured (issue 20, alternated with the code before each step): two rounds in flight made one daemon at 10 a third
# faster, at 20 29-50 %; three, 7 % more at 10 and 8 % at 20; rounds of all held dates made one daemon at 4 50 %
# faster and four daemons at 5 40 % (two half-size rounds in flight instead gained nothing: the same fixed cost,
# twice as often). A date leased ahead waits at most ROUNDS_IN_FLIGHT - 1 handler runs for its slot.
PIPELINE_BELOW_S = 0.05
ROUND_FULL = 10
ROUNDS_IN_FLIGHT = 3


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclasses.dataclass
class _Held:
    """The connection a date's handler call took, while the date is to give it back (None before it was taken
    and once the call gave it back itself)."""

    conn: PoolConnectionProxy | None = None


class _NoConnection(Exception):
    """No connection could be taken for the date: the database is away."""


@dataclasses.dataclass
class Running:
    claimed: Claimed
    task: asyncio.Task[None]
    stop_as: Kind | None = None  # why we cancelled it: CANCELLED, RELEASED or LOST


class Daemon:
    """Runs the dates of the configured sources until stopped."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        handlers: Mapping[str, Handler],
        direct_dsn: str,
        *,
        source_caps: Mapping[str, int] | None = None,
        side_tasks: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
        worker_id: str | None = None,
        grace: float = 20.0,
        pooled: bool = False,
    ) -> None:
        """`source_caps` limits how many dates of a source run at once in this daemon (within `concurrency`);
        `side_tasks` are extra loops (the schedule) supervised like the listener: if one dies, the daemon stops.
        `pooled`: the pool leads through a transaction pooler (DATESYNC_POOLED)."""
        self.settings = settings
        self.pooled = pooled
        self.pool = pool
        self.handlers = dict(handlers)
        self.source_caps = dict(source_caps or {})
        self.side_tasks = list(side_tasks)
        self.worker = worker_id or new_worker_id()
        self.grace = grace
        self.store = Store(pool, self.worker, settings.lease)
        self.listener = Listener(direct_dsn, [BATCH_CHANNEL], self._on_notify, self._on_listener_connect,
                                 application_name="datesync-daemon-listener",
                                 idle=lambda: settings.lets_database_sleep and not self.running)
        self.running: dict[int, Running] = {}
        self._outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._full_scan = True
        self._stopping = asyncio.Event()
        self._seen_batches: set[int] = set()
        # Batches whose dates this daemon settled without its transaction ending them: when it holds none of
        # their dates any more, it asks the database to end them after its commit (_end_settled).
        self._maybe_settled: set[int] = set()
        self._analyzing: asyncio.Task[None] | None = None
        # Slots promised to claims in flight (the rounds', the loop's own), in all and per source, and the dates
        # whose outcomes a round in flight carries: the claim of that round counted their slots as free.
        self._reserved = 0
        self._reserved_for: Counter[str] = Counter()
        self._writing: set[int] = set()
        self._rounds = asyncio.Semaphore(ROUNDS_IN_FLIGHT)  # outcome writes in flight (when pipelined)
        self._round_writes: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.concurrency)  # handlers running at once
        self._handler_s = PIPELINE_BELOW_S  # recent handler runs, averaged (exponentially): whether to pipeline
        self._work_waiting = False
        self._housekept_at = 0.0
        self._lost_handbacks: dict[int, int] = {}  # task id -> connection-loss hand-backs in a row
        self._cleanups: set[asyncio.Future[None]] = set()  # connection give-backs of ended dates
        self._spare: list[PoolConnectionProxy] = []  # handler connections kept between dates while busy
        self._taking = asyncio.Lock()  # held by the date taking a connection (_take_connection)
        self._idle = asyncio.Event()  # set whenever no date is running
        self._idle.set()
        self.started_at = time.monotonic()

    # -- control ------------------------------------------------------------------------------------

    def wake(self, full: bool = True) -> None:
        """Look for work now (called on NOTIFY, by an in-process web app after a commit, or a slot freeing)."""
        if full:
            self._full_scan = True
        self._wake.set()

    def request_stop(self) -> None:
        """Stop claiming; running dates get `grace` seconds, then are handed back."""
        if not self._stopping.is_set():
            log.info("daemon_stopping", running=len(self.running), grace_s=self.grace)
        self._stopping.set()
        self._wake.set()

    @property
    def listener_connected(self) -> bool:
        """Connected, or deliberately disconnected while idle so that the database may sleep."""
        return self.listener.connected.is_set() or self.listener.idle()

    @property
    def stopping(self) -> bool:
        """Asked to stop (request_stop, or a crashed side task): no more claims."""
        return self._stopping.is_set()

    @property
    def busy(self) -> bool:
        """Dates are running here, or queued work was seen at the last look (retries waiting included)."""
        return bool(self.running) or self._work_waiting

    async def run(self) -> None:
        """Run until request_stop(); a crashed side task (listener, heartbeat, finisher) stops everything."""
        for handler in self.handlers.values():
            if handler.setup is not None:
                await handler.setup(self.pool)
        log.info("daemon_started", worker=self.worker, concurrency=self.settings.concurrency,
                 sources=sorted(self.handlers))
        side = [
            asyncio.create_task(self.listener.run(), name="listener"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._finisher_loop(), name="finisher"),
            *(asyncio.create_task(fn(), name=getattr(fn, "__name__", "side")) for fn in self.side_tasks),
        ]
        main = asyncio.create_task(self._main_loop(), name="main")
        try:
            done, _ = await asyncio.wait([main, *side], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not main and not task.cancelled() and task.exception() is not None:
                    log.error("daemon_side_task_crashed", task=task.get_name(), exc_info=task.exception())
                    self.request_stop()
            await main
            await self._drain()
        finally:
            extra = [self._analyzing] if self._analyzing is not None else []
            for task in [main, *side, *extra]:
                task.cancel()
            await asyncio.gather(main, *side, *extra, return_exceptions=True)
            await self.store.nudge.close()
            for handler in self.handlers.values():
                if handler.close is not None:
                    await self._close_handler(handler.close)
            log.info("daemon_stopped", worker=self.worker)

    @staticmethod
    async def _close_handler(close: Callable[[], Awaitable[None]]) -> None:
        """A handler's close hook, waited for at most UNWIND_S (not wait_for: it waits for a cancel to land)."""
        task = asyncio.ensure_future(close())
        done, _ = await asyncio.wait({task}, timeout=UNWIND_S)
        if not done:
            log.warning("handler_close_timed_out", waited_s=UNWIND_S)
            task.cancel()
        elif not task.cancelled() and task.exception() is not None:
            log.warning("handler_close_failed", error=error_text(task.exception() or Exception()))

    # -- loop ---------------------------------------------------------------------------------------

    async def _main_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()
            self.listener.resume()  # we are about to query anyway: a dropped listener may reconnect now
            timeout = self.settings.poll_interval
            try:
                # A busy daemon is woken by its own finishes, never by the poll: still look for expired leases
                # (a dead peer's dates, whose lease may be shorter than ours) at least every second.
                if time.monotonic() - self._housekept_at > min(self.settings.lease / 2, 1.0):
                    self._full_scan = True
                if self._full_scan:
                    self._full_scan = False
                    self._housekept_at = time.monotonic()
                    await self._expand()
                    await self._claim()  # work that needs no expansion also starts before the housekeeping
                    await self._housekeep()
                await self._claim()
                if len(self.running) < self._holdable():
                    nxt = await self.store.seconds_until_next_task()
                    self._work_waiting = nxt is not None
                    if nxt is not None:
                        timeout = min(timeout, max(nxt, 0.01))
                if failures:
                    log.info("daemon_database_recovered", after_failures=failures)
                failures = 0
            except DB_FAILURES as exc:
                failures += 1
                self._full_scan = True
                if failures == 1:
                    log.warning("daemon_database_error", error=error_text(exc))
                timeout = DATABASE_RETRY.delay(failures)
            if not self.running and self._spare:
                await self._release_spare_connections()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            if not self._wake.is_set():
                self._full_scan = True  # the safety poll: a missed NOTIFY costs at most poll_interval

    async def _expand(self) -> None:
        """Turn every queued batch into tasks. A new batch's first dates are claimed in the transaction that
        expands it, before the look for another batch and the slower housekeeping: that is the wake-up latency."""
        while not self._stopping.is_set():
            with self._claiming() as (sources, free):
                try:
                    expanded, claimed = await self.store.expand_next_batch(self.settings.max_attempts, free, sources)
                except asyncpg.UniqueViolationError:
                    # Another daemon started one of the dates a moment ago: expand now; the next claim round runs.
                    expanded, claimed = await self.store.expand_next_batch(self.settings.max_attempts, 0, sources)
                self._take(claimed)
            if expanded is None:
                break
            if claimed:
                # Let the dates just claimed reach their handlers before the look for another batch: a date's task
                # starts its handler's own task (attempt.py), which starts on the loop's turn after that.
                for _ in range(3):
                    await asyncio.sleep(0)
            log.info("batch_expanded", batch_id=expanded["id"], days=expanded["days"], source=expanded["source"])
            if expanded["days"] >= ANALYZE_AFTER_DAYS and self._analyzing is None:
                self._analyzing = asyncio.create_task(self._refresh_statistics(), name="analyze")

    async def _refresh_statistics(self) -> None:
        """ANALYZE the task table beside the loop (it blocks no reads or writes, but may wait on autovacuum)."""
        try:
            await self.store.analyze_tasks()
        except DB_FAILURES as exc:
            log.info("task_statistics_not_refreshed", error=error_text(exc))
        finally:
            self._analyzing = None

    async def _housekeep(self) -> None:
        """The rest of the catch-up scan: cancels, expired leases, waiting dates whose upstream dates synced unseen,
        batches a crashed daemon left unfinished."""
        for row in await self.store.cancel_requested():
            await self.store.cancel_batch(row["id"], row["state"])
            for running in self.running.values():
                if running.claimed.batch_id == row["id"]:
                    self._stop_task(running, Kind.CANCELLED)
        for row in await self.store.requeue_expired():
            log.warning("task_lease_expired", batch_id=row["batch_id"], day=str(row["day"]), state=row["state"],
                        attempt=row["attempt"])
        if released := await self.store.release_ready():
            log.info("tasks_released_by_scan", tasks=released)
        await self._finalize(await self.store.running_batches())

    def _claimable_sources(self, freeing: frozenset[int] = frozenset()) -> tuple[list[str], int]:
        """Sources with room under their cap, and how many dates we may claim in one round, counting the slots
        of `freeing` (tasks whose outcome is being written in the same transaction) as free. The slots of a write
        in flight are its claim's: its dates count as free here, the dates it may claim as taken (_reserved)."""
        if self._stopping.is_set():
            return [], 0
        occupied = [r for task_id, r in self.running.items() if task_id not in freeing and task_id not in self._writing]
        free = self._holdable() - len(occupied) - self._reserved
        if not self.source_caps:
            return list(self.handlers), free
        busy = Counter(r.claimed.source for r in occupied) + self._reserved_for
        room = {s: self.source_caps.get(s, free) - busy.get(s, 0) for s in self.handlers}
        open_sources = [s for s, n in room.items() if n > 0]
        # One round claims for all open sources at once; a capped source may then take at most its room.
        return open_sources, min([free, *(room[s] for s in open_sources)]) if open_sources else 0

    @contextlib.contextmanager
    def _claiming(self, finishing: frozenset[int] = frozenset()) -> Iterator[tuple[list[str], int]]:
        """The sources and number of dates a claim may take, reserved until its dates are taken or it failed: the
        loop and the rounds in flight claim, each for the slots it sees free. A claim capped per source reserves
        its number under each of its sources (it may take them all from any one)."""
        sources, free = self._claimable_sources(finishing)
        free = max(free, 0)
        reserved_for = Counter(dict.fromkeys(sources, free)) if self.source_caps else Counter()
        self._reserved += free
        self._reserved_for += reserved_for
        self._writing |= finishing
        try:
            yield sources, free
        finally:
            self._reserved -= free
            self._reserved_for -= reserved_for
            self._writing -= finishing

    def _pipelined(self) -> bool:
        return self._handler_s < PIPELINE_BELOW_S

    def _holdable(self) -> int:
        """How many dates this daemon may hold: its slots, and when pipelined those leased ahead (see
        ROUND_FULL)."""
        slots = self.settings.concurrency
        if not self._pipelined():
            return slots
        return 2 * slots if 2 * slots <= ROUND_FULL else ROUNDS_IN_FLIGHT * slots

    def _round_size(self) -> int:
        """The most outcomes one round carries: every date held while they are at most ROUND_FULL, else a slot's
        worth each, so that the rounds in flight can all be full."""
        holdable = self._holdable()
        return holdable if holdable <= ROUND_FULL else self.settings.concurrency

    async def _claim(self) -> None:
        while not self._stopping.is_set():
            with self._claiming() as (sources, free):
                if free <= 0 or not sources:
                    return
                try:
                    claimed = await self.store.claim(free, sources)
                except asyncpg.UniqueViolationError:
                    # Another daemon started the same (source, day) a moment ago; the index refused ours.
                    claimed = None
                if claimed is not None:
                    self._take(claimed)
            if claimed is None:
                await asyncio.sleep(0.005)
                continue
            await self._end_settled()
            if len(claimed) < free:
                return

    def _take(self, claimed: list[Claimed]) -> None:
        """Start the claimed dates; account for the skipped ones and any batch the claim ended."""
        for task in claimed:
            if task.state == "skipped":
                log.info("date_sync_skipped", batch_id=task.batch_id, day=str(task.day))
                metrics.TASKS_FINISHED.labels(task.source, "skipped").inc()
            else:
                self._observe_wake(task)
                self._start(task)
        for batch_id, state in sorted({(t.batch_id, t.batch_ended) for t in claimed if t.batch_ended}):
            log.info("batch_finished", batch_id=batch_id, state=state)
        self._maybe_settled.update(t.batch_id for t in claimed if t.state == "skipped" and not t.batch_ended)

    def _observe_wake(self, task: Claimed) -> None:
        """The first date of a batch that this daemon starts measures the wake latency."""
        if task.batch_id in self._seen_batches or task.batch_created_at is None:
            return
        if len(self._seen_batches) > 10_000:
            self._seen_batches.clear()
        self._seen_batches.add(task.batch_id)
        if task.attempt == 1:
            metrics.WAKE_SECONDS.observe(max(0.0, time.time() - task.batch_created_at.timestamp()))

    def _start(self, claimed: Claimed) -> None:
        if claimed.id in self.running:
            # Our own row came back to us while the old run is still here (its lease was taken back): the old
            # run is stale. Its outcome is fenced by its attempt number; stop it.
            self._stop_task(self.running[claimed.id], Kind.LOST)
        task = asyncio.create_task(self._run_one(claimed), name=f"date-{claimed.source}-{claimed.day}")
        # A task cancelled before it ever ran never enters _run_one's handlers: account for it here.
        task.add_done_callback(functools.partial(self._cancelled_before_start, claimed=claimed))
        self.running[claimed.id] = Running(claimed, task)
        metrics.RUNNING_HERE.set(len(self.running))
        self._idle.clear()

    def _cancelled_before_start(self, task: asyncio.Task[None], claimed: Claimed) -> None:
        if not task.cancelled():
            return
        c = claimed
        running = self.running.get(c.id)
        kind = running.stop_as if running is not None and running.task is task else None
        if kind is not None:
            self._outcomes.put_nowait(Outcome(c.id, c.batch_id, kind, c.attempt))

    async def _run_one(self, c: Claimed) -> None:
        structlog.contextvars.bind_contextvars(batch_id=c.batch_id, day=c.day.isoformat(), attempt=c.attempt,
                                               source=c.source)
        try:
            async with self._slots:
                if self._stopping.is_set():  # claimed ahead, its slot came after the stop: hand it back unrun
                    outcome = Outcome(c.id, c.batch_id, Kind.RELEASED, c.attempt)
                else:
                    log.debug("date_sync_started")  # the outcome line says how long it took: one line per date
                    outcome = await self._attempt(c)
        except asyncio.CancelledError:
            outcome = self._interrupted(c)  # re-raises when the cancel was not ours
        except Exception as exc:
            # Our own bookkeeping failed (the handler's errors never come here): a date without an outcome would
            # hold its slot, its lease renewed, for good. Hand it back, uncounted a few times in a row.
            log.error("date_sync_internal_error", error=error_text(exc), exception=traceback_text(exc))
            if self._hand_back_lost(c):
                outcome = Outcome(c.id, c.batch_id, Kind.RELEASED, c.attempt)
            else:
                outcome = self._failure(c, error_text(exc), exc)
        await self._outcomes.put(outcome)

    async def _attempt(self, c: Claimed) -> Outcome:
        """Run the handler once; every way it can end becomes an outcome (a cancel not ours propagates)."""
        handler = self.handlers[c.source]
        started = time.monotonic()
        held = _Held()
        ended = await run_handler(self._call, handler, c, held, timeout=self.settings.task_timeout,
                                  name=f"handler-{c.source}-{c.day}")
        self._handler_s += (time.monotonic() - started - self._handler_s) / 8
        if isinstance(ended.error, _NoConnection):
            # The date never started: our database is away. Not the date's fault; hand it back uncounted.
            log.warning("date_sync_connection_lost", error=error_text(ended.error.__cause__ or ended.error))
            return Outcome(c.id, c.batch_id, Kind.RELEASED, c.attempt)
        conn = held.conn
        gone = conn is not None and connection_gone(conn)
        if conn is not None:
            # The connection goes back even if this date is cancelled meanwhile (a pool that never gets it back
            # would hold the process at its close); drain waits for these.
            cleanup = asyncio.ensure_future(self._after_handler(conn, handler.session_safe, ended, gone))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            try:
                await asyncio.shield(cleanup)
            except asyncio.CancelledError:
                # Our stop (a shutdown's grace over, a cancel) landed while the connection went back: the handler
                # had already ended, so its outcome stands. Handed back instead, a success already committed would
                # run again (the fault suite's "attempt 1 but 2 counted runs").
                if not self._stopping_this_run(c):
                    raise
                absorb_cancel()
        if ended.interrupted:
            return self._interrupted(c)
        if ended.timed_out:
            return self._failure(c, f"timed out after {self.settings.task_timeout:g} s", None)
        if ended.error is not None:
            if gone and lost_connection(ended.error) and self._hand_back_lost(c):
                # Our database went away under the handler (a Neon suspend, a restart): not the date's fault,
                # so the attempt is handed back rather than counted. The write waits until the database is back.
                log.warning("date_sync_connection_lost", error=error_text(ended.error))
                return Outcome(c.id, c.batch_id, Kind.RELEASED, c.attempt)
            return self._failure(c, error_text(ended.error), ended.error)
        try:
            rows = row_count(ended.result)
        except (TypeError, ValueError) as exc:
            return self._failure(c, error_text(exc), None)
        self._lost_handbacks.pop(c.id, None)
        log.info("date_sync_succeeded", rows=rows, seconds=round(time.monotonic() - started, 3))
        metrics.TASK_SECONDS.labels(c.source).observe(time.monotonic() - started)
        return Outcome(c.id, c.batch_id, Kind.SUCCEEDED, c.attempt, rows=rows)

    async def _call(self, handler: Handler, c: Claimed, held: _Held) -> object:
        """The handler's own task (attempt.py): take a connection, run the handler, and give a connection that
        needs no reset straight back. Dates claimed together start together; a handler that never waits then holds
        its connection only while it runs, so they share one instead of each holding one until its date's task
        resumes, turns later. Every other ending leaves the connection in `held`, for the date to give back."""
        try:
            held.conn = await self._take_connection()
        except DB_FAILURES as exc:
            raise _NoConnection from exc
        ctx = SyncContext(
            day=c.day, db=held.conn, log=log.bind(), attempt=c.attempt, batch_id=c.batch_id, source=c.source,
            task_id=c.id, worker=self.worker,
            _write_progress=lambda done, total, note: self.store.write_progress(c, done, total, note),
        )
        result = await handler.sync(c.day, ctx)
        if (handler.session_safe or self.pooled) and self._keepable(held.conn):  # no await from here on
            self._spare.append(held.conn)
            held.conn = None
        return result

    def _hand_back_lost(self, c: Claimed) -> bool:
        """Whether to hand back a date whose connection broke under it, uncounted. A handler that closes ctx.db
        itself would otherwise be handed back for ever: past MAX_LOST_HANDBACKS in a row, the attempt counts."""
        if len(self._lost_handbacks) > 10_000:
            self._lost_handbacks.clear()
        times = self._lost_handbacks.get(c.id, 0) + 1
        self._lost_handbacks[c.id] = times
        return times <= MAX_LOST_HANDBACKS

    def _stopping_this_run(self, c: Claimed) -> bool:
        """We asked this run of `c` to stop (not a stale run of a date claimed again, not the process going down)."""
        running = self.running.get(c.id)
        return running is not None and running.task is asyncio.current_task() and running.stop_as is not None

    def _interrupted(self, c: Claimed) -> Outcome:
        """The outcome of a date we stopped (cancel, shutdown, lost lease); re-raise a cancel that was not ours."""
        running = self.running.get(c.id)
        task = asyncio.current_task()
        if running is not None and running.task is not task:
            stop_as: Kind | None = Kind.LOST  # our row was claimed again by us: this run is stale
        else:
            stop_as = running.stop_as if running is not None else None
        if stop_as is None:
            raise asyncio.CancelledError  # not ours: the process is going down hard
        absorb_cancel()
        log.info("date_sync_interrupted", reason=stop_as.value)
        error = "cancelled: its batch was cancelled" if stop_as is Kind.CANCELLED else None
        return Outcome(c.id, c.batch_id, stop_as, c.attempt, error=error)

    async def _after_handler(self, conn: PoolConnectionProxy, session_safe: bool, ended: Ended, gone: bool) -> None:
        """Give the date's connection back (reset, or closed if its handler was abandoned)."""
        try:
            if ended.abandoned:
                # The handler may still use it, in a transaction holding locks: close it so that its work rolls
                # back.
                terminate(conn)
                await self.pool.release(conn)
                return
            clean = not gone and ended.error is None and not ended.timed_out and not ended.interrupted
            # Through a transaction pooler a reset would run on whichever server connection the pooler picks, not
            # the one a handler's SET went to: it costs a round trip and undoes nothing.
            if not gone and not session_safe and not self.pooled:
                try:
                    await conn.reset()
                except DB_FAILURES:
                    clean = False
            await self._give_back_connection(conn, keep=clean)
        except Exception as exc:  # never lose the date over its connection's clean-up
            log.warning("date_connection_cleanup_failed", error=error_text(exc))

    # -- handler connections ------------------------------------------------------------------------

    async def _take_connection(self) -> PoolConnectionProxy:
        # One date at a time: while it opens a connection, the dates that started with it wait rather than open
        # one each, and a handler that never waits gives its connection back before the next of them looks (the
        # bench's no-op drain at concurrency 10 opened all 12 otherwise). The cost: after an idle spell (the pool
        # closes connections unused for 120 s), dates with slow handlers open their connections one after another.
        async with self._taking:
            while self._spare:
                spare = self._spare.pop()
                if not connection_gone(spare):
                    return spare
                await self.pool.release(spare)
            conn: PoolConnectionProxy = await self.pool.acquire()
            return conn

    async def _give_back_connection(self, conn: PoolConnectionProxy, *, keep: bool) -> None:
        """Keep a date's connection for the next date while the daemon is busy: a pool acquire and release cost an
        event-loop task each (asyncpg shields the release), a fifth of the daemon's time at short dates. Only a
        connection left clean by a date that ended normally is kept; the rest go back through the pool's reset."""
        if keep and self._keepable(conn):
            self._spare.append(conn)
            return
        with contextlib.suppress(*DB_FAILURES):
            await asyncio.shield(self.pool.release(conn))

    def _keepable(self, conn: PoolConnectionProxy) -> bool:
        return not connection_gone(conn) and not conn.is_in_transaction() and not self._stopping.is_set()

    async def _release_spare_connections(self) -> None:
        """Hand kept connections back to the pool once no date runs, so that an idle daemon holds none."""
        spare, self._spare = self._spare, []
        for conn in spare:
            with contextlib.suppress(*DB_FAILURES):
                await self.pool.release(conn)

    def _failure(self, c: Claimed, message: str, exc: BaseException | None) -> Outcome:
        metrics.ATTEMPTS_FAILED.labels(c.source).inc()
        # The traceback goes through the same boundary as the message: it holds the handler's text too.
        trace = {"exception": traceback_text(exc)} if exc is not None else {}
        if c.attempt < c.max_attempts:
            metrics.RETRIES.labels(c.source).inc()
            delay = retry_delay(self.settings.retry_delay, c.attempt)
            # One line per retried attempt; its traceback only at debug level. The final failure carries it.
            log.warning("date_sync_failed_will_retry", error=message, retry_in_s=round(delay, 2))
            log.debug("date_sync_attempt_traceback", **trace)
            return Outcome(c.id, c.batch_id, Kind.FAILED, c.attempt, error=message, retry_in=delay)
        log.error("date_sync_failed", error=message, **trace)
        return Outcome(c.id, c.batch_id, Kind.FAILED, c.attempt, error=message)

    def _stop_task(self, running: Running, kind: Kind) -> None:
        if running.stop_as is None and not running.task.done():
            running.stop_as = kind
            running.task.cancel()

    # -- side tasks ---------------------------------------------------------------------------------

    async def _finisher_loop(self) -> None:
        try:
            while True:
                batch = [await self._outcomes.get()]
                # Dates that finish together (short handlers) are a few loop turns apart: wait those turns while
                # more keep arriving, so that one transaction records them all, up to a round's size (dates leased
                # ahead start as these end, and may make the same round). Slow dates cost eight idle turns.
                quiet, cap = 0, self._round_size()
                while quiet < 8 and len(batch) < min(cap, self._unwritten()):
                    await asyncio.sleep(0)
                    if self._outcomes.empty():
                        quiet += 1
                    while not self._outcomes.empty() and len(batch) < cap:
                        batch.append(self._outcomes.get_nowait())
                await self._rounds.acquire()
                while not self._outcomes.empty() and len(batch) < cap:  # came while a round was in flight
                    batch.append(self._outcomes.get_nowait())
                write = asyncio.create_task(self._write_round(batch), name="round")
                self._round_writes.add(write)
                write.add_done_callback(self._round_writes.discard)
                if not self._pipelined():
                    await asyncio.wait({write})
        finally:
            for write in list(self._round_writes):
                write.cancel()
            await asyncio.gather(*self._round_writes, return_exceptions=True)

    def _unwritten(self) -> int:
        """Running dates whose outcome no write in flight carries."""
        return sum(1 for task_id in self.running if task_id not in self._writing)

    async def _write_round(self, batch: list[Outcome]) -> None:
        """One round's write, beside the finisher. A failure that our retries do not cover (a bug, not the
        database) stops the daemon, as a crash of the finisher itself does; the round's dates give up their slots,
        so that their leases run out and another daemon takes them, and the stop does not wait for them."""
        try:
            await self._write_outcomes(batch)
        except Exception as exc:
            log.error("daemon_side_task_crashed", task="finisher", exc_info=exc)
            self._settle(batch, [])
            self.request_stop()
        finally:
            self._rounds.release()

    async def _write_outcomes(self, batch: list[Outcome], deadline: float | None = None) -> None:
        """Write outcomes and, in the same transaction, claim dates for the slots they free. A write that fails for
        a reason retrying cannot cure is split per outcome (outcome.fallbacks); `deadline` (loop time) bounds the
        retries at shutdown."""
        failures = 0
        finishing = frozenset(o.task_id for o in batch)
        while True:
            with self._claiming(finishing) as (sources, free):
                try:
                    changed, claimed = await self.store.finish(batch, free, sources)
                except DB_FAILURES as exc:
                    changed, claimed = None, []
                    error = exc
                if changed is not None:
                    self._settle(batch, changed)
                    self._take(claimed)
                    break
            if not retry_may_cure(error):
                await self._write_apart(batch, error, deadline)
                break
            # Keep the outcomes until the database takes them; meanwhile the slots stay taken. If our lease
            # runs out first, the guarded update writes nothing and the takeover stands.
            failures += 1
            if failures == 1 and not isinstance(error, asyncpg.UniqueViolationError):
                log.warning("finish_write_failed_retrying", error=error_text(error), outcomes=len(batch))
            pause = FINISH_RETRY.delay(failures)
            if deadline is not None and asyncio.get_running_loop().time() + pause > deadline:
                log.warning("finish_write_given_up", error=error_text(error), outcomes=len(batch))
                break
            await asyncio.sleep(pause)
        await self._end_settled()
        self.wake(full=False)

    async def _write_apart(self, batch: list[Outcome], error: BaseException, deadline: float | None) -> None:
        """The database refused the outcomes themselves (a text or a number it cannot store): write each alone,
        then with its error replaced, then as a bare failed attempt. One that cannot be written even so gives up
        its slot, so that its lease is no longer renewed and runs out: an outcome never holds a slot for good."""
        log.error("finish_write_refused", error=error_text(error), outcomes=len(batch))
        for i, outcome in enumerate(batch):
            running = self.running.get(outcome.task_id)
            for variant in fallbacks(outcome, error, running.claimed if running else None, self.settings):
                refused = await self._write_one(variant)
                if refused is None:
                    break
                if retry_may_cure(refused):  # the database went away meanwhile: back to the patient loop
                    await self._write_outcomes([variant, *batch[i + 1:]], deadline)
                    return
            else:
                log.error("task_outcome_unwritable", task_id=outcome.task_id, error=error_text(error))
                self._settle([outcome], [])

    async def _write_one(self, outcome: Outcome) -> BaseException | None:
        """One outcome alone, once; None when written, else the error."""
        try:
            changed, _ = await self.store.finish([outcome])
        except DB_FAILURES as exc:
            return exc
        self._settle([outcome], changed)
        await self._end_settled()
        return None

    def _settle(self, batch: list[Outcome], changed: list[asyncpg.Record]) -> None:
        """Free the slots of written outcomes; count them; log the batches they ended."""
        sources = {o.task_id: r.claimed.source for o in batch if (r := self.running.get(o.task_id))}
        for row in changed:
            if row["state"] in ("succeeded", "failed", "cancelled"):
                metrics.TASKS_FINISHED.labels(sources.get(row["id"], "?"), row["state"]).inc()
        for outcome in batch:
            current = self.running.get(outcome.task_id)
            if current is not None and current.claimed.attempt == outcome.attempt:
                self.running.pop(outcome.task_id)
        metrics.RUNNING_HERE.set(len(self.running))
        if not self.running:
            self._idle.set()
        for batch_id, state in sorted({(r["batch_id"], r["batch_state"]) for r in changed if r["batch_state"]}):
            log.info("batch_finished", batch_id=batch_id, state=state)
        self._maybe_settled.update(r["batch_id"] for r in changed
                                   if r["state"] in ("succeeded", "failed", "cancelled") and not r["batch_state"])

    async def _end_settled(self) -> None:
        """End the batches whose last dates finished in transactions that could not see each other (each saw the
        others' dates still running: task_finish), once this daemon holds none of their dates. Any daemon that
        finished one of those dates asks after its commit, so the last to commit sees them all. A batch left
        running here (a crash in between, a lock held too long) is ended by the catch-up scan."""
        held = {r.claimed.batch_id for r in self.running.values()}
        ids = self._maybe_settled - held
        if not ids:
            return
        self._maybe_settled -= ids
        try:
            await self._finalize(ids)
        except DB_FAILURES as exc:
            log.info("batch_end_deferred", batches=sorted(ids), error=error_text(exc))

    async def _finalize(self, batch_ids: set[int] | list[int]) -> None:
        for row in await self.store.finalize(batch_ids):
            log.info("batch_finished", batch_id=row["id"], state=row["state"], succeeded=row["succeeded"],
                     failed=row["failed"], skipped=row["skipped"], cancelled=row["cancelled"])

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.lease / 3
        failures = 0
        while True:
            await asyncio.sleep(interval)
            if not self.running:
                continue
            sent = [r.claimed for r in self.running.values()]
            try:
                held = await self.store.heartbeat(sent)
            except DB_FAILURES as exc:
                failures += 1
                if failures == 1:  # once per outage, not every beat
                    log.warning("heartbeat_failed", error=error_text(exc))
                continue
            if failures:
                log.info("heartbeat_recovered", after_failures=failures)
                failures = 0
            for claimed in sent:
                running = self.running.get(claimed.id)
                if running is None or running.claimed is not claimed:
                    continue  # finished, or claimed again, while the heartbeat was in flight
                task_id = claimed.id
                if task_id not in held:
                    if not running.task.done():
                        log.warning("task_lease_lost", task_id=task_id, day=str(running.claimed.day))
                    self._stop_task(running, Kind.LOST)
                elif held[task_id]:
                    self._stop_task(running, Kind.CANCELLED)

    def _on_notify(self, channel: str, payload: str) -> None:
        self.wake(full=True)

    async def _on_listener_connect(self) -> None:
        self.wake(full=True)

    # -- shutdown -----------------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Give running dates the grace period, then hand the rest back and write every outcome. Whatever the
        handlers do, this ends within AFTER_GRACE_S of the grace: each stopped date returns within UNWIND_S
        (attempt.py), and writes that the database does not take by then are left to the leases."""
        loop = asyncio.get_running_loop()
        tasks = [r.task for r in self.running.values()]
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.grace)
            for running in list(self.running.values()):
                if running.task in pending:
                    self._stop_task(running, Kind.RELEASED)
        deadline = loop.time() + AFTER_GRACE_S
        if pending:
            await asyncio.wait(pending, timeout=max(deadline - loop.time(), 0.0))
        # Let the finisher write what is queued; then write anything left ourselves.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(deadline - loop.time(), 0.0))
        leftovers: list[Outcome] = []
        while not self._outcomes.empty():
            leftovers.append(self._outcomes.get_nowait())
        if leftovers:
            await self._write_outcomes(leftovers, deadline)
        if self.running:
            log.warning("daemon_stopped_with_unwritten_tasks", tasks=sorted(self.running))
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=max(deadline - loop.time(), 0.5))
        await self._release_spare_connections()
