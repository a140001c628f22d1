"""Batch operations: request (or plan) a batch, read one, cancel it, retry it.

Each takes a connection (the API lends one from its pool, the CLI holds its own) and either answers or raises
OperationError with the status and message keys both adapters render. The daemons' wake-up goes out from the same
transaction (a trigger's NOTIFY, or batch_wake_daemons), so a psql client, the API and the CLI behave alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg

from datesync.daemon.db.connect import Conn
from datesync.daemon.db.queries import q
from datesync.daemon.ops import present
from datesync.daemon.ops.messages import Lang
from datesync.daemon.ops.problems import Msg, OperationError, problem, shown
from datesync.daemon.ops.validation import ALLOWED_FIELDS, BatchRequest
from datesync.daemon.states import UNFINISHED_BATCH

# Tries of a linked request rolled back by a deadlock with another chain (_request_linked).
LINKED_TRIES = 3


@dataclasses.dataclass(frozen=True, slots=True)
class Accepted:
    """The batch that answers a request: new, an identical unfinished one, or the one its key created."""

    batch: dict[str, Any]
    how: str  # "created" | "duplicate" | "replayed"
    # The batches of upstream (with_upstream) and downstream (cascade) sources requested with it.
    linked: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Dates that will wait for upstream dates not synced yet, and the sources those are (no with_upstream).
    waiting: int = 0
    waiting_for: list[str] = dataclasses.field(default_factory=list)

    @property
    def created(self) -> bool:
        return self.how == "created"

    @property
    def message(self) -> Msg:
        days, batch_id = self.batch["days"], self.batch["id"]
        return {"created": Msg("batch_started", {"days": days}),
                "duplicate": Msg("batch_duplicate", {"days": days}),
                "replayed": Msg("batch_replayed", {"id": batch_id, "days": days})}[self.how]

    @property
    def notes(self) -> list[Msg]:
        """What else the requester should know: dates that will wait, batches requested with this one."""
        found = []
        if self.waiting:
            found.append(Msg("batch_waiting", {"waiting": self.waiting, "upstream": ", ".join(self.waiting_for)}))
        for b in self.linked:
            found.append(Msg(f"batch_linked_{b['role']}", {"id": b["batch_id"], "source": b["source"],
                                                            "start": b["start_date"], "end": b["end_date"]}))
        return found

    def render(self, lang: Lang) -> str:
        """The message with its notes, as sentences."""
        if not self.notes:
            return self.message.render(lang)
        stop = "。" if lang == "zh" else ". "
        return stop.join(m.render(lang) for m in [self.message, *self.notes]) + stop.strip()


async def request(conn: Conn, wanted: BatchRequest, key: str | None, requested_by: str) -> Accepted:
    """A new batch, the identical unfinished one, or the batch `key` was answered with, in one statement; with
    the batches of its upstream or downstream sources when it asks for them."""
    if wanted.with_upstream or wanted.cascade:
        return await _request_linked(conn, wanted, key, requested_by)
    accepted = await _request_one(conn, wanted, key, requested_by)
    if accepted.created:
        preview = await conn.fetchrow(q("batch_waiting_preview"), wanted.source, wanted.start_date, wanted.end_date)
        if preview is not None and preview["waiting"]:
            return dataclasses.replace(accepted, waiting=int(preview["waiting"]),
                                       waiting_for=list(preview["upstream"]))
    return accepted


async def _request_linked(conn: Conn, wanted: BatchRequest, key: str | None, requested_by: str) -> Accepted:
    for tries in range(1, LINKED_TRIES + 1):
        try:
            # One statement, so one transaction: every batch of the chain, or none.
            rows = await conn.fetch(q("batch_request_linked"), wanted.source, wanted.start_date, wanted.end_date,
                                    wanted.force, key, requested_by, wanted.with_upstream, wanted.cascade)
            break
        except asyncpg.DeadlockDetectedError:
            # Two chains requested at once in reverse roles (rollup with upstream, orders with cascade) lock each
            # other's bodies in opposite orders; PostgreSQL rolls one back whole. Its retry finds the other's batches.
            if tries == LINKED_TRIES:
                raise
        except (asyncpg.CheckViolationError, asyncpg.NotNullViolationError) as exc:
            raise _refused_by_database(exc, wanted) from exc
    main = next(r for r in rows if r["role"] == "requested")
    if main["outcome"] == "key_conflict":
        raise _key_reused(key, main["batch_id"])
    linked = [dict(r) for r in rows if r["role"] != "requested"]
    return Accepted(await get(conn, main["batch_id"]), main["outcome"], linked)


async def _request_one(conn: Conn, wanted: BatchRequest, key: str | None, requested_by: str) -> Accepted:
    try:
        # One statement, deliberately outside a transaction: see datesync.batch_request.
        row = await conn.fetchrow(q("batch_request"), wanted.source, wanted.start_date, wanted.end_date,
                                  wanted.force, key, requested_by)
    except asyncpg.UniqueViolationError:
        # The key was taken by a psql INSERT that did not take our lock; it still names the first batch.
        found = await conn.fetchval(q("batch_find_by_key"), key)
        if key is None or found is None:
            raise
        return Accepted(await get(conn, found), "replayed")
    except (asyncpg.CheckViolationError, asyncpg.NotNullViolationError) as exc:
        # Validation checked everything but the source's existence; the trigger checks it all again.
        raise _refused_by_database(exc, wanted) from exc
    assert row is not None
    if row["outcome"] == "key_conflict":
        raise _key_reused(key, row["batch_id"])
    if row["outcome"] == "created":
        return Accepted({"id": row["batch_id"], "days": row["days"], "succeeded": 0, "failed": 0, "skipped": 0},
                        "created")
    return Accepted(await get(conn, row["batch_id"]), row["outcome"])


def _key_reused(key: str | None, batch_id: int) -> OperationError:
    """An Idempotency-Key answers only the request it was made for (Stripe's rule): 422 naming the key."""
    return OperationError(422, [problem("Idempotency-Key", "idempotency_key_reused", value=shown(key), id=batch_id)])


def _refused_by_database(exc: asyncpg.PostgresError, wanted: BatchRequest) -> OperationError:
    """datesync.batch_validate() names the field in DETAIL; its wording is the API's own."""
    field = exc.detail if exc.detail in ALLOWED_FIELDS else "body"
    if field == "source":
        return OperationError(422, [problem("source", "source_unknown", value=shown(wanted.source))])
    return OperationError(422, [problem(field, "verbatim", text=exc.message or type(exc).__name__)])


async def plan(conn: Conn, wanted: BatchRequest) -> dict[str, Any]:
    """A dry run: each date with what a batch would do with it (run or skip), writing nothing."""
    await require_source(conn, wanted.source)
    rows = await conn.fetch(q("day_plan_for_range"), wanted.source, wanted.start_date, wanted.end_date)
    dates = [{"day": r["day"], "action": "skip" if r["status"] == "success" and not wanted.force else "run",
              "status": r["status"]} for r in rows]
    skip = sum(1 for p in dates if p["action"] == "skip")
    run = len(dates) - skip
    return {"dry_run": True, "days": len(dates), "run": run, "skip": skip, "plan": dates,
            "message": Msg("dry_run", {"run": run, "skip": skip, "days": len(dates)})}


async def require_source(conn: Conn, source: str) -> None:
    """Raise 422 naming `source` unless some daemon registered it."""
    if not await conn.fetchval(q("source_known"), source):
        raise OperationError(422, [problem("source", "source_unknown", value=shown(source))])


async def get(conn: Conn, batch_id: int) -> dict[str, Any]:
    """One batch with its live counts, or 404."""
    row = await conn.fetchrow(q("batch_get"), batch_id)
    if row is None:
        raise OperationError(404, [problem("id", "batch_not_found", id=batch_id)])
    return present.batch(row)


async def tasks(conn: Conn, batch_id: int) -> list[dict[str, Any]]:
    """Every date of a batch, in date order."""
    return [present.task(t) for t in await conn.fetch(q("task_list_for_batch"), batch_id)]


async def cancel(conn: Conn, batch_id: int) -> tuple[dict[str, Any], Msg]:
    """Ask for a batch to be cancelled (the UPDATE's trigger wakes every daemon); 404, or 409 once it has ended."""
    updated = await conn.fetchrow(q("batch_request_cancel"), batch_id)
    batch = await get(conn, batch_id)
    if updated is None:
        raise OperationError(409, [problem("id", "batch_ended", id=batch_id, state=batch["state"])])
    return batch, Msg("cancel_requested", {"id": batch_id})


async def retry(conn: Conn, batch_id: int) -> tuple[dict[str, Any], int, Msg]:
    """Requeue a finished batch's failed (and, if it was cancelled, cancelled) dates; 404, or 409 when there is
    nothing to retry. One transaction: the requeue, the daemons' wake-up, then the event (last: see
    event_serialize)."""
    async with conn.transaction():
        retried = await conn.fetchrow(q("batch_requeue_failed"), batch_id)
        if retried is not None:
            await conn.execute(q("batch_wake_daemons"), str(batch_id))
            await conn.execute(q("event_insert_batch"), batch_id, "running", {"retry": retried["requeued"]})
    batch = await get(conn, batch_id)
    if retried is None:
        key = "retry_unfinished" if batch["state"] in UNFINISHED_BATCH else "retry_nothing"
        raise OperationError(409, [problem("id", key, id=batch_id, state=batch["state"])])
    requeued = int(retried["requeued"])
    return batch, requeued, Msg("retry_started", {"id": batch_id, "requeued": requeued})
