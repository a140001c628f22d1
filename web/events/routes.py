"""GET /batches/{id}/events and GET /events: check the request, register the client, take the snapshot."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from datesync.daemon.db.connect import DB_ERRORS
from datesync.daemon.db.queries import q
from datesync.web.events.hub import Client, Hub, HubUnavailable
from datesync.web.events.stream import HEADERS, EventStream, Plan, messages
from datesync.web.state import AppState

_WHOLE = re.compile(r"[0-9]{1,19}")
_BIGINT_MAX = 2**63 - 1

# web.events.__init__ registers each process's hub here, keyed by its AppState.
hubs: dict[int, Hub] = {}


def hub_for(state: AppState) -> Hub:
    """The event hub of the app serving `state` (present between lifespan start and end)."""
    return hubs[id(state)]


def _error(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> Response:
    errors = [{"field": field, "message": message}] if field else []
    return JSONResponse({"status": "error", "message": message, "errors": errors}, status, headers=headers)


class BadRequest(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _whole(raw: str) -> int | None:
    return int(raw) if _WHOLE.fullmatch(raw) and int(raw) <= _BIGINT_MAX else None


def _last_event_id(request: Request) -> int | None:
    """Where a resuming client left off. The header wins over the query parameter: a browser's EventSource sends
    the header with the newest id on every reconnect, while the URL's parameter stays what it was at first."""
    for field, raw in (("Last-Event-ID", request.headers.get("last-event-id")),
                       ("last_event_id", request.query_params.get("last_event_id"))):
        if raw is not None and raw.strip():
            value = _whole(raw.strip())
            if value is None:
                raise BadRequest(_error(400, f"{field} must be a whole number (an event id), got {raw!r}", field))
            return value
    return None


def _snapshot_message(name: str, json_text: str, *, pruned: bool = False) -> bytes:
    extra = ', "pruned": true' if pruned else ""
    return f"event: snapshot\ndata: {{\"{name}\": {json_text}{extra}}}\n\n".encode()


async def _open(request: Request, batch_id: int | None) -> Response:
    if request.method == "HEAD":
        return Response(media_type="text/event-stream", headers=HEADERS)
    try:
        after = _last_event_id(request)
    except BadRequest as exc:
        return exc.response
    hub = hub_for(request.app.state.datesync)
    try:
        client = await hub.register(batch_id)
    except HubUnavailable as exc:
        return _error(503, f"{exc}; retry shortly", headers={"Retry-After": "3"})
    try:
        response = await _respond(hub, client, batch_id, after)
    except DB_ERRORS:
        hub.remove(client)
        return _error(503, "the database is unavailable; try again shortly", headers={"Retry-After": "3"})
    except BaseException:
        hub.remove(client)
        raise
    if not isinstance(response, EventStream):
        hub.remove(client)
    return response


async def _respond(hub: Hub, client: Client, batch_id: int | None, after: int | None) -> Response:
    # The snapshot is read after the client registered: anything it does not show reaches the client later.
    async with hub.read_gate, hub.pool.acquire() as conn:
        horizon = await conn.fetchval(q("event_horizon"))  # its own statement, before the snapshot (stream.sql)
        if batch_id is None:
            row = await conn.fetchrow(q("event_snapshot_cards"), horizon)
            assert row is not None
            # Resuming from below what retention deleted: the replay would have a gap, so the client starts afresh
            # from this snapshot (marked `pruned`), as a new client would, instead of from a partial history.
            gap = after is not None and after < row["pruned_through"]
            start = row["max_id"] if after is None or gap else after
            plan = Plan(_snapshot_message("cards", row["cards"], pruned=gap), start)
            return EventStream(client, messages(client, plan))
        row = await conn.fetchrow(q("event_snapshot_batch"), batch_id, horizon)
    if row is None:
        return _error(404, f"no batch with id {batch_id}", "id")
    if after is not None and row["ended"] and after >= row["end_from"]:
        # The client has seen the batch's final event. 204 tells an EventSource to stop reconnecting.
        return Response(status_code=204, headers=HEADERS)
    start = row["max_id"] if after is None else after
    plan = Plan(_snapshot_message("batch", row["batch"]), start, row["end_from"], row["ended"])
    return EventStream(client, messages(client, plan))


async def batch_events(request: Request) -> Response:
    """One batch's events as Server-Sent Events: a snapshot, then each transition as it commits, until the
    batch's final event."""
    raw = request.path_params["batch_id"]
    batch_id = _whole(raw)
    if not batch_id:
        return _error(404, f"no batch with id {raw}", "id")
    return await _open(request, batch_id)


async def all_events(request: Request) -> Response:
    """Every batch's events as Server-Sent Events: the status cards, then each transition as it commits."""
    return await _open(request, None)


routes: list[BaseRoute] = [
    Route("/batches/{batch_id}/events", batch_events, methods=["GET"], name="batch_events"),
    Route("/events", all_events, methods=["GET"], name="events"),
]
