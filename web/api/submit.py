"""POST /sync/batch: validate, then insert one batch row (its trigger logs the first event and wakes the
daemons), or return the identical unfinished batch, or the batch an Idempotency-Key already created.

The database decides which, in one statement (datesync.batch_request, migration 0002); Python validates first
so that every error names its field in the request's language.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import asyncpg
import structlog
from starlette.requests import Request
from starlette.responses import Response

from daemon.db.connect import Conn
from daemon.db.queries import q
from daemon.ops import present
from daemon.ops.messages import Lang, preferred, text
from daemon.ops.problems import Msg, OperationError, problem, shown
from daemon.ops.validation import (
    ALLOWED_FIELDS,
    BatchRequest,
    Limits,
    idempotency_key,
    parse_json_object,
    validate_batch,
)
from web.api.auth import require_token
from web.api.envelope import success
from web.state import AppState

log = structlog.get_logger("datesync.web")


@dataclasses.dataclass(frozen=True, slots=True)
class Accepted:
    """The batch that answers a request: new, an identical unfinished one, or the one its key created."""

    batch: dict[str, Any]
    how: str  # "created" | "duplicate" | "replayed"


def limits(state: AppState) -> Limits:
    settings = state.settings
    return Limits(datetime.datetime.now(settings.tz).date(), settings.timezone, settings.max_range_days)


async def submit_batch(request: Request) -> Response:
    """Request a batch: 202 with the new batch, 200 with a deduplicated one, 200 with the plan of a dry run."""
    require_token(request)
    state: AppState = request.app.state.datesync
    key = idempotency_key(request.headers.get("idempotency-key"))
    wanted = validate_batch(parse_json_object(await request.body()), limits(state))
    lang = preferred(request.headers.get("accept-language"))
    if wanted.dry_run:
        return await _dry_run(state, wanted, lang)
    accepted = await _accept(state, wanted, key)
    batch_id = accepted.batch["id"]
    if accepted.how == "created":
        log.info("batch_requested", batch_id=batch_id, source=wanted.source, days=wanted.days, force=wanted.force)
        if state.wake_daemon is not None:
            state.wake_daemon()  # the in-process daemon starts now, not at its next NOTIFY or poll
    # What url_for("batch_get") gives, without its search of every route (a tenth of a POST's time under load):
    # inside a Mount, the scope's root_path is the application's own plus the mount's path.
    status_url = f"{request.scope.get('root_path', '')}/batches/{batch_id}"
    days = accepted.batch["days"]
    message = {"created": Msg("batch_started", {"days": days}),
               "duplicate": Msg("batch_duplicate", {"days": days}),
               "replayed": Msg("batch_replayed", {"id": batch_id, "days": days})}[accepted.how]
    data = {
        "batch_id": batch_id,
        "days": days,
        "success": accepted.batch["succeeded"],
        "failed": accepted.batch["failed"],
        "skipped": accepted.batch["skipped"],
        "message": message.render(lang),
        "status_url": status_url,
        "events_url": status_url + "/events",
        "deduplicated": accepted.how != "created",
    }
    if accepted.how == "created":
        return success(data, 202, headers={"Location": status_url})
    return success(data, 200)


async def _accept(state: AppState, wanted: BatchRequest, key: str | None) -> Accepted:
    async with state.pool.acquire() as conn:
        try:
            # One statement, deliberately outside a transaction: see 0002_batch_request.sql.
            row = await conn.fetchrow(q("batch_request"), wanted.source, wanted.start_date, wanted.end_date,
                                      wanted.force, key, "api")
        except asyncpg.UniqueViolationError:
            # The key was taken by a psql INSERT that did not take our lock; it still names the first batch.
            found = await conn.fetchval(q("batch_find_by_key"), key)
            if key is None or found is None:
                raise
            return Accepted(await _batch(conn, found), "replayed")
        except (asyncpg.CheckViolationError, asyncpg.NotNullViolationError) as exc:
            # Python checked everything but the source's existence; the trigger checks it all again.
            raise _refused_by_database(exc, wanted) from exc
        assert row is not None
        if row["outcome"] == "created":
            return Accepted({"id": row["batch_id"], "days": row["days"], "succeeded": 0, "failed": 0, "skipped": 0},
                            "created")
        return Accepted(await _batch(conn, row["batch_id"]), row["outcome"])


def _refused_by_database(exc: asyncpg.PostgresError, wanted: BatchRequest) -> OperationError:
    """datesync.batch_validate() names the field in DETAIL; its wording is the API's own."""
    field = exc.detail if exc.detail in ALLOWED_FIELDS else "body"
    if field == "source":
        return OperationError(422, [problem("source", "source_unknown", value=shown(wanted.source))])
    return OperationError(422, [problem(field, "verbatim", text=exc.message or type(exc).__name__)])


async def _batch(conn: Conn, batch_id: int) -> dict[str, Any]:
    row = await conn.fetchrow(q("batch_get"), batch_id)
    assert row is not None
    return present.batch(row)


async def _dry_run(state: AppState, wanted: BatchRequest, lang: Lang) -> Response:
    async with state.pool.acquire() as conn:
        if not await conn.fetchval(q("source_known"), wanted.source):
            raise OperationError(422, [problem("source", "source_unknown", value=shown(wanted.source))])
        rows = await conn.fetch(q("day_plan_for_range"), wanted.source, wanted.start_date, wanted.end_date)
    plan = [{"day": r["day"], "action": "skip" if r["status"] == "success" and not wanted.force else "run",
             "status": r["status"]} for r in rows]
    skip = sum(1 for p in plan if p["action"] == "skip")
    run = len(plan) - skip
    message = text(lang, "dry_run", run=run, skip=skip, days=len(plan))
    return success({"dry_run": True, "days": len(plan), "run": run, "skip": skip, "plan": plan, "message": message})
