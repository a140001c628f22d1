"""The daemon's database operations: one method per transition, each one transaction, events written last."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
from collections.abc import Iterable, Sequence

import asyncpg
import structlog

from datesync.daemon.db.connect import DB_ERRORS, Conn
from datesync.daemon.db.queries import q
from datesync.daemon.sync.outcome import Kind, Outcome

log = structlog.get_logger("datesync.daemon")


@dataclasses.dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    batch_id: int
    source: str
    day: datetime.date
    state: str
    attempt: int
    max_attempts: int
    batch_ended: str | None = None  # the batch's final state, when this claim ended it (last dates skipped)
    batch_created_at: datetime.datetime | None = None


def _claimed(r: asyncpg.Record) -> Claimed:
    return Claimed(r["id"], r["batch_id"], r["source"], r["day"], r["state"], r["attempt"], r["max_attempts"],
                   r["batch_state"], r["batch_created_at"])


async def _insert_task_events(conn: Conn, rows: Sequence[asyncpg.Record]) -> None:
    if not rows:
        return
    await conn.execute(q("event_log_tasks"), [r["id"] for r in rows])


NUDGE_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, asyncpg.InterfaceError)  # a pool closing too


class EventNudge:
    """NOTIFY datesync_event for the hot path's events, after their commits. A transaction that NOTIFYs holds a
    server-wide lock through its commit (PostgreSQL queues notifications in commit order), which made every finish of
    every daemon wait for the previous one's flush; the hot path's own transactions therefore send none (p_notify
    false), and this sends one for however many commits happened while the previous one was on its way: the first
    at once, then at most one per INTERVAL. Each is a transaction of its own with a commit to flush (a NOTIFY takes a
    transaction id), hence the interval: measured with the bench's SSE probe (a date every 5 ms), the event stream's
    p50 went from 1.5 ms (NOTIFY in the finish) to 2.2 ms at 2 ms, 4.3 ms at 10 ms and 6 ms at 50 ms, while the
    transactions per date of a drain grew from 0.057 to 0.083 at 10 ms and 0.101 at 2 ms. It is only a wake-up: a
    lost one costs readers their safety poll."""

    INTERVAL = 0.05  # seconds: during a burst, the event stream waits at most this long for its wake-up

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._pending = False
        self._task: asyncio.Task[None] | None = None

    def soon(self) -> None:
        self._pending = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._send(), name="event-nudge")

    async def _send(self) -> None:
        while self._pending:
            self._pending = False
            try:
                async with self.pool.acquire() as conn:
                    await conn.execute("SELECT pg_notify('datesync_event', '')")
            except NUDGE_ERRORS as exc:
                log.debug("event_nudge_failed", error=f"{type(exc).__name__}: {exc}")
                return
            await asyncio.sleep(self.INTERVAL)

    async def close(self, wait: float = 1.0) -> None:
        """Let the last nudge go out (the final events of a stopping daemon), for at most `wait` seconds."""
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=wait)
        if not done:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Store:
    """Every statement the daemon runs, against one pool."""

    def __init__(self, pool: asyncpg.Pool, worker: str, lease: float) -> None:
        self.pool = pool
        self.worker = worker
        self.lease = lease
        self.nudge = EventNudge(pool)

    async def expand_next_batch(
        self, max_attempts: int, claim_limit: int, sources: Sequence[str]
    ) -> tuple[asyncpg.Record | None, list[Claimed]]:
        """Expand the oldest queued batch into tasks and claim up to `claim_limit` dates, in one transaction.
        Returns the batch (id, source, days, tasks), None when none was queued, and the claimed dates.

        A batch whose dates the database refuses (from before 0007_date_bounds, or past a disabled trigger) is
        failed instead, in a call of its own; the next call looks again, so it holds up no batch behind it."""
        async with self.pool.acquire() as conn:
            while True:
                rows = await conn.fetch(q("batch_expand_claim"), max_attempts, self.worker, claim_limit,
                                        self.lease, list(sources))
                refused = next((r for r in rows if r["kind"] == "refused"), None)
                if refused is None:
                    break
                log.warning("batch_refused", batch_id=refused["id"], source=refused["source"],
                            error=refused["error"])
        if rows:
            self.nudge.soon()
        expanded = next((r for r in rows if r["kind"] == "expanded"), None)
        return expanded, [_claimed(r) for r in rows if r["kind"] == "claimed"]

    async def claim(self, limit: int, sources: Sequence[str]) -> list[Claimed]:
        """Lease up to `limit` runnable tasks (skipped ones are finished on the spot and returned too).
        One round trip: the claim, the day rows, the events and any batch it ends are one statement."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(q("task_claim"), self.worker, limit, self.lease, list(sources))
        if rows:
            self.nudge.soon()
        return [_claimed(r) for r in rows]

    async def finish(
        self, outcomes: Sequence[Outcome], claim_limit: int = 0, sources: Sequence[str] = ()
    ) -> tuple[list[asyncpg.Record], list[Claimed]]:
        """Write the outcomes of attempts and claim up to `claim_limit` new dates, in one statement (one
        transaction, one commit). Returns the task rows actually changed (each with `batch_state` set when that
        write ended its batch) and the claimed tasks."""
        ending = [o for o in outcomes if o.kind not in (Kind.RELEASED, Kind.LOST)]
        released = [o.task_id for o in outcomes if o.kind is Kind.RELEASED]
        if not ending and not released and claim_limit <= 0:
            return [], []
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                q("task_finish"),
                self.worker,
                [o.task_id for o in ending],
                [o.attempt for o in ending],
                [o.row_state for o in ending],
                [o.error for o in ending],
                [o.rows for o in ending],
                [o.retry_in or 0.0 for o in ending],
                released,
                claim_limit,
                self.lease,
                list(sources),
            )
        if rows:
            self.nudge.soon()
        return [r for r in rows if r["kind"] == "finished"], [_claimed(r) for r in rows if r["kind"] == "claimed"]

    async def analyze_tasks(self) -> None:
        """Refresh the task table's statistics (and with them every connection's cached plans on it)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(q("task_analyze"))

    async def heartbeat(self, held: Sequence[Claimed]) -> dict[int, bool]:
        """Renew our leases on `held`; {task id: cancel requested} for each one we still hold."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(q("task_heartbeat"), self.worker, self.lease,
                                    [c.id for c in held], [c.attempt for c in held])
        return {r["id"]: r["cancel_requested"] for r in rows}

    async def requeue_expired(self) -> list[asyncpg.Record]:
        """Take back tasks whose lease ran out; those out of attempts fail and their day says so."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(q("task_requeue_expired"), self.worker)
            failed = [r for r in rows if r["state"] == "failed"]
            if failed:
                await conn.execute(
                    q("day_mark_failed"),
                    [r["source"] for r in failed], [r["day"] for r in failed], [r["error"] for r in failed],
                )
            await _insert_task_events(conn, rows)
        return list(rows)

    async def release_ready(self) -> int:
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval(q("task_release_ready")))

    async def cancel_requested(self) -> list[asyncpg.Record]:
        """Unfinished batches whose cancel was requested."""
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(q("batch_cancel_requested")))

    async def cancel_batch(self, batch_id: int, state: str) -> None:
        """Cancel a batch's queued work: the whole batch if never expanded, else its queued tasks."""
        async with self.pool.acquire() as conn, conn.transaction():
            if state == "queued":
                if await conn.fetchval(q("batch_cancel_unexpanded"), batch_id) is not None:
                    await conn.execute(q("event_insert_batch"), batch_id, "cancelled", {"final": True})
                return
            rows = await conn.fetch(q("task_cancel_queued"), [batch_id])
            await _insert_task_events(conn, rows)

    async def running_batches(self) -> list[int]:
        async with self.pool.acquire() as conn:
            return [r["id"] for r in await conn.fetch(q("batch_running_ids"))]

    async def finalize(self, batch_ids: Iterable[int]) -> list[asyncpg.Record]:
        """End the given batches that have nothing left to run; returns the ended ones."""
        ids = sorted(set(batch_ids))
        if not ids:
            return []
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(q("batch_end_settled"), ids))

    async def seconds_until_next_task(self) -> float | None:
        async with self.pool.acquire() as conn:
            wait: datetime.timedelta | None = await conn.fetchval(q("task_next_run_after"), self.worker)
        return None if wait is None else max(wait.total_seconds(), 0.0)

    async def write_progress(self, task: Claimed, done: int, total: int, note: str | None) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                q("event_insert_progress"), task.batch_id, task.id, task.day, task.attempt,
                {"progress": {"done": done, "total": total, "note": note}},
            )
