"""POST /sync/batch: the API's adapter over daemon.ops.batches.request (and .plan for a dry run)."""

from __future__ import annotations

import datetime

import structlog
from starlette.requests import Request
from starlette.responses import Response

from datesync.daemon.ops import batches
from datesync.daemon.ops.messages import preferred
from datesync.daemon.ops.validation import Limits, idempotency_key, parse_json_object, validate_batch
from datesync.web.api.auth import require_token
from datesync.web.api.envelope import success
from datesync.web.state import AppState

log = structlog.get_logger("datesync.web")


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
    async with state.pool.acquire() as conn:
        if wanted.dry_run:
            planned = await batches.plan(conn, wanted)
            return success({**planned, "message": planned["message"].render(lang)})
        accepted = await batches.request(conn, wanted, key, "api")
    batch_id = accepted.batch["id"]
    if accepted.created:
        log.info("batch_requested", batch_id=batch_id, source=wanted.source, days=wanted.days, force=wanted.force,
                 linked=[b["batch_id"] for b in accepted.linked] or None)
        if state.wake_daemon is not None:
            state.wake_daemon()  # the in-process daemon starts now, not at its next NOTIFY or poll
    # What url_for("batch_get") gives, without its search of every route (a tenth of a POST's time under load):
    # inside a Mount, the scope's root_path is the application's own plus the mount's path.
    status_url = f"{request.scope.get('root_path', '')}/batches/{batch_id}"
    data = {
        "batch_id": batch_id,
        "days": accepted.batch["days"],
        "success": accepted.batch["succeeded"],
        "failed": accepted.batch["failed"],
        "skipped": accepted.batch["skipped"],
        "message": accepted.render(lang),
        "waiting": accepted.waiting,
        "linked": [{"batch_id": b["batch_id"], "role": b["role"], "source": b["source"],
                    "start_date": b["start_date"].isoformat(), "end_date": b["end_date"].isoformat(),
                    "deduplicated": b["outcome"] != "created"} for b in accepted.linked],
        "status_url": status_url,
        "events_url": status_url + "/events",
        "deduplicated": not accepted.created,
    }
    if accepted.created:
        return success(data, 202, headers={"Location": status_url})
    return success(data, 200)
