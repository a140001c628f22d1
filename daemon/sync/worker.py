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
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from datesync.daemon import metrics
from datesync.daemon.db.connect import DB_ERRORS
from datesync.daemon.listener import Listener
from datesync.daemon.settings import Settings
from datesync.daemon.sync.context import SyncContext
from datesync.daemon.sync.handlers import Handler
from datesync.daemon.sync.outcome import Kind, Outcome, error_text, retry_delay
from datesync.daemon.sync.store import Claimed, Store

log = structlog.get_logger("datesync.daemon")

BATCH_CHANNEL = "datesync_batch"
# A batch at least this long refreshes the task table's statistics once expanded: PostgreSQL keeps the hot path's
# plans per connection, made from the statistics of their time, and a plan made while the queue was tiny walks whole
# indexes once it is large. Autovacuum would catch up within a minute or so; this is at once.
ANALYZE_AFTER_DAYS = 500
# Errors that may mean the connection to our own database broke; ctx.db being closed confirms it.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.ConnectionDoesNotExistError, asyncpg.AdminShutdownError, asyncpg.CannotConnectNowError,
    asyncpg.ConnectionFailureError, asyncpg.InterfaceError, ConnectionError,
)


class DatabaseLost(Exception):
    """The handler's database connection (ctx.db) broke under it."""



def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


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
        self._analyzing: asyncio.Task[None] | None = None
        self._claim_lock = asyncio.Lock()
        self._work_waiting = False
        self._housekept_at = 0.0
        self._spare: list[PoolConnectionProxy] = []  # handler connections kept between dates while busy
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
            for handler in self.handlers.values():
                if handler.close is not None:
                    with contextlib.suppress(Exception):
                        await handler.close()
            log.info("daemon_stopped", worker=self.worker)

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
                if len(self.running) < self.settings.concurrency:
                    nxt = await self.store.seconds_until_next_task()
                    self._work_waiting = nxt is not None
                    if nxt is not None:
                        timeout = min(timeout, max(nxt, 0.01))
                if failures:
                    log.info("daemon_database_recovered", after_failures=failures)
                failures = 0
            except DB_ERRORS as exc:
                failures += 1
                self._full_scan = True
                if failures == 1:
                    log.warning("daemon_database_error", error=error_text(exc))
                timeout = min(0.25 * 2**failures, 10.0)
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
            async with self._claim_lock:
                sources, free = self._claimable_sources()
                try:
                    expanded, claimed = await self.store.expand_next_batch(self.settings.max_attempts, max(free, 0),
                                                                           sources)
                except asyncpg.UniqueViolationError:
                    # Another daemon started one of the dates a moment ago: expand now; the next claim round runs.
                    expanded, claimed = await self.store.expand_next_batch(self.settings.max_attempts, 0, sources)
                self._take(claimed)
            if expanded is None:
                break
            if claimed:
                await asyncio.sleep(0)  # let the dates just claimed start before the look for another batch
            log.info("batch_expanded", batch_id=expanded["id"], days=expanded["days"], source=expanded["source"])
            if expanded["days"] >= ANALYZE_AFTER_DAYS and self._analyzing is None:
                self._analyzing = asyncio.create_task(self._refresh_statistics(), name="analyze")

    async def _refresh_statistics(self) -> None:
        """ANALYZE the task table beside the loop (it blocks no reads or writes, but may wait on autovacuum)."""
        try:
            await self.store.analyze_tasks()
        except DB_ERRORS as exc:
            log.info("task_statistics_not_refreshed", error=error_text(exc))
        finally:
            self._analyzing = None

    async def _housekeep(self) -> None:
        """The rest of the catch-up scan: cancels, expired leases, batches a crashed daemon left unfinished."""
        for row in await self.store.cancel_requested():
            await self.store.cancel_batch(row["id"], row["state"])
            for running in self.running.values():
                if running.claimed.batch_id == row["id"]:
                    self._stop_task(running, Kind.CANCELLED)
        for row in await self.store.requeue_expired():
            log.warning("task_lease_expired", batch_id=row["batch_id"], day=str(row["day"]), state=row["state"],
                        attempt=row["attempt"])
        await self._finalize(await self.store.running_batches())

    def _claimable_sources(self, freeing: frozenset[int] = frozenset()) -> tuple[list[str], int]:
        """Sources with room under their cap, and how many dates we may claim in one round, counting the slots
        of `freeing` (tasks whose outcome is being written in the same transaction) as free."""
        if self._stopping.is_set():
            return [], 0
        occupied = [r for task_id, r in self.running.items() if task_id not in freeing]
        free = self.settings.concurrency - len(occupied)
        if not self.source_caps:
            return list(self.handlers), free
        busy: dict[str, int] = {}
        for r in occupied:
            busy[r.claimed.source] = busy.get(r.claimed.source, 0) + 1
        room = {s: self.source_caps.get(s, free) - busy.get(s, 0) for s in self.handlers}
        open_sources = [s for s, n in room.items() if n > 0]
        # One round claims for all open sources at once; a capped source may then take at most its room.
        return open_sources, min([free, *(room[s] for s in open_sources)]) if open_sources else 0

    async def _claim(self) -> None:
        while not self._stopping.is_set():
            # One claimer at a time: the finisher claims too, for the slots its outcomes free.
            async with self._claim_lock:
                sources, free = self._claimable_sources()
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
        handler = self.handlers[c.source]
        started = time.monotonic()
        log.info("date_sync_started")
        outcome: Outcome
        try:
            conn = await self._take_connection()
            clean = False
            try:
                ctx = SyncContext(
                    day=c.day, db=conn, log=log.bind(), attempt=c.attempt, batch_id=c.batch_id, source=c.source,
                    task_id=c.id, worker=self.worker,
                    _write_progress=lambda done, total, note: self.store.write_progress(c, done, total, note),
                )
                try:
                    async with asyncio.timeout(self.settings.task_timeout):
                        result = await handler.sync(c.day, ctx)
                except CONNECTION_LOST as exc:
                    # Only a break of *our* connection is the database's fault; an upstream's is the date's.
                    if conn.is_closed():
                        raise DatabaseLost(error_text(exc)) from exc
                    raise
                finally:
                    # Through a transaction pooler a reset would run on whichever server connection the pooler
                    # picks, not the one a handler's SET went to: it costs a round trip and undoes nothing.
                    if not handler.session_safe and not self.pooled and not conn.is_closed():
                        await asyncio.shield(conn.reset())
                clean = True
            finally:
                await self._give_back_connection(conn, keep=clean)
            if result is not None and (not isinstance(result, int) or isinstance(result, bool)):
                raise TypeError(f"the handler returned {type(result).__name__}; expected an int or None")
            outcome = Outcome(c.id, c.batch_id, Kind.SUCCEEDED, c.attempt, rows=result)
            log.info("date_sync_succeeded", rows=result, seconds=round(time.monotonic() - started, 3))
            metrics.TASK_SECONDS.labels(c.source).observe(time.monotonic() - started)
        except asyncio.CancelledError:
            stop_as = self.running[c.id].stop_as if c.id in self.running else None
            if stop_as is None:
                raise  # not ours: the process is going down hard
            error = "cancelled: its batch was cancelled" if stop_as is Kind.CANCELLED else None
            outcome = Outcome(c.id, c.batch_id, stop_as, c.attempt, error=error)
            log.info("date_sync_interrupted", reason=stop_as.value)
        except TimeoutError as exc:
            outcome = self._failure(c, f"timed out after {self.settings.task_timeout:g} s", exc)
        except DatabaseLost as exc:
            # Our database went away under the handler (a Neon suspend, a restart): not the date's fault, so
            # the attempt is handed back rather than counted. The write waits until the database is back.
            log.warning("date_sync_connection_lost", error=str(exc))
            outcome = Outcome(c.id, c.batch_id, Kind.RELEASED, c.attempt)
        except Exception as exc:
            outcome = self._failure(c, error_text(exc), exc)
        await self._outcomes.put(outcome)

    # -- handler connections ------------------------------------------------------------------------

    async def _take_connection(self) -> PoolConnectionProxy:
        while self._spare:
            spare = self._spare.pop()
            if not spare.is_closed():
                return spare
            await self.pool.release(spare)
        conn: PoolConnectionProxy = await self.pool.acquire()
        return conn

    async def _give_back_connection(self, conn: PoolConnectionProxy, *, keep: bool) -> None:
        """Keep a date's connection for the next date while the daemon is busy: a pool acquire and release cost an
        event-loop task each (asyncpg shields the release), a fifth of the daemon's time at short dates. Only a
        connection left clean by a date that ended normally is kept; the rest go back through the pool's reset."""
        if keep and not conn.is_closed() and not conn.is_in_transaction() and not self._stopping.is_set():
            self._spare.append(conn)
            return
        await asyncio.shield(self.pool.release(conn))

    async def _release_spare_connections(self) -> None:
        """Hand kept connections back to the pool once no date runs, so that an idle daemon holds none."""
        spare, self._spare = self._spare, []
        for conn in spare:
            with contextlib.suppress(*DB_ERRORS):
                await self.pool.release(conn)

    def _failure(self, c: Claimed, message: str, exc: BaseException) -> Outcome:
        metrics.ATTEMPTS_FAILED.labels(c.source).inc()
        if c.attempt < c.max_attempts:
            metrics.RETRIES.labels(c.source).inc()
            delay = retry_delay(self.settings.retry_delay, c.attempt)
            # One line per retried attempt; its traceback only at debug level. The final failure carries it.
            log.warning("date_sync_failed_will_retry", error=message, retry_in_s=round(delay, 2))
            log.debug("date_sync_attempt_traceback", exc_info=exc)
            return Outcome(c.id, c.batch_id, Kind.FAILED, c.attempt, error=message, retry_in=delay)
        log.error("date_sync_failed", error=message, exc_info=exc)
        return Outcome(c.id, c.batch_id, Kind.FAILED, c.attempt, error=message)

    def _stop_task(self, running: Running, kind: Kind) -> None:
        if running.stop_as is None and not running.task.done():
            running.stop_as = kind
            running.task.cancel()

    # -- side tasks ---------------------------------------------------------------------------------

    async def _finisher_loop(self) -> None:
        while True:
            batch = [await self._outcomes.get()]
            # Dates that finish together (short handlers) are a few loop turns apart: wait those turns while more
            # keep arriving, so that one transaction records them all. Slow dates cost two idle turns.
            quiet = 0
            while quiet < 8 and len(batch) < len(self.running):
                await asyncio.sleep(0)
                if self._outcomes.empty():
                    quiet += 1
                while not self._outcomes.empty():
                    batch.append(self._outcomes.get_nowait())
            await self._write_outcomes(batch)

    async def _write_outcomes(self, batch: list[Outcome]) -> None:
        """Write outcomes and, in the same transaction, claim dates for the slots they free."""
        failures = 0
        finishing = frozenset(o.task_id for o in batch)
        while True:
            async with self._claim_lock:
                sources, free = self._claimable_sources(finishing)
                try:
                    changed, claimed = await self.store.finish(batch, max(free, 0), sources)
                except DB_ERRORS as exc:
                    changed, claimed = None, []
                    error = exc
                if changed is not None:
                    self._settle(batch, changed)
                    self._take(claimed)
                    break
            # Keep the outcomes until the database takes them; meanwhile the slots stay taken. If our lease
            # runs out first, the guarded update writes nothing and the takeover stands.
            failures += 1
            if failures == 1 and not isinstance(error, asyncpg.UniqueViolationError):
                log.warning("finish_write_failed_retrying", error=error_text(error), outcomes=len(batch))
            await asyncio.sleep(min(0.005 * 4**failures, 5.0))
        self.wake(full=False)

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
            except DB_ERRORS as exc:
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
        """Give running dates the grace period, then hand the rest back and write every outcome."""
        tasks = [r.task for r in self.running.values()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.grace)
            for running in list(self.running.values()):
                if running.task in pending:
                    self._stop_task(running, Kind.RELEASED)
            if pending:
                await asyncio.wait(pending, timeout=5)
        # Let the finisher write what is queued; then write anything left ourselves.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 5)
        leftovers: list[Outcome] = []
        while not self._outcomes.empty():
            leftovers.append(self._outcomes.get_nowait())
        if leftovers:
            await self._write_outcomes(leftovers)
        if self.running:
            log.warning("daemon_stopped_with_unwritten_tasks", tasks=sorted(self.running))
        await self._release_spare_connections()
