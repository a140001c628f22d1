"""GET /openapi.json: an OpenAPI 3.0 description of every route, written by hand from docs/api.md."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from datesync.web.api.batches import BATCH_STATES
from datesync.web.api.status import DAY_STATUSES

PREFIX = "/api/v1/sync-status"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: list[str] | None = None, /, **props: Schema) -> Schema:
    """An object schema; every property is required unless `required` names the ones that are."""
    return {"type": "object", "required": required if required is not None else list(props), "properties": props}


def nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


INT: Schema = {"type": "integer"}
TEXT: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
DATE: Schema = {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "example": "2025-10-01"}
TIME: Schema = {"type": "string", "format": "date-time"}


def success_of(data: Schema) -> Schema:
    return obj(status={"type": "string", "enum": ["success"]}, data=data)


def json_body(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*statuses: int) -> dict[str, Schema]:
    """Error envelopes: 400 malformed body, 401 token, 403 cross-site, 404, 409 batch state, 413 over 64 KiB,
    422 invalid field."""
    return {str(s): {"$ref": "#/components/responses/Error"} for s in statuses}


SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        status={"type": "string", "enum": ["error"]},
        message=TEXT,
        errors={"type": "array", "items": obj(field=TEXT, message=TEXT)},
    ),
    "BatchRequest": {
        **obj(["start_date", "end_date"], start_date=DATE, end_date=DATE, force={**BOOL, "default": False},
              source={**TEXT, "default": "default", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
              dry_run={**BOOL, "default": False}, with_upstream={**BOOL, "default": False},
              cascade={**BOOL, "default": False}),
        "additionalProperties": False,
    },
    "BatchAccepted": obj(batch_id=INT, days=INT, success=INT, failed=INT, skipped=INT, message=TEXT,
                         status_url=TEXT, events_url=TEXT, deduplicated=BOOL, waiting=INT,
                         linked={"type": "array", "items": obj(
                             batch_id=INT, role={"type": "string", "enum": ["upstream", "downstream"]}, source=TEXT,
                             start_date=DATE, end_date=DATE, deduplicated=BOOL)}),
    "DryRun": obj(dry_run={"type": "boolean", "enum": [True]}, days=INT, run=INT, skip=INT, message=TEXT,
                  plan={"type": "array", "items": obj(
                      day=DATE, action={"type": "string", "enum": ["run", "skip"]},
                      status=nullable({"type": "string", "enum": list(DAY_STATUSES)}))}),
    "Batch": obj(id=INT, source=TEXT, start_date=DATE, end_date=DATE, force=BOOL,
                 state={"type": "string", "enum": list(BATCH_STATES)}, cancel_requested=BOOL, days=INT, queued=INT,
                 running=INT, succeeded=INT, failed=INT, skipped=INT, cancelled=INT, done=INT, created_at=TIME,
                 started_at=nullable(TIME), finished_at=nullable(TIME), pruned_at=nullable(TIME), waiting=INT),
    "Task": obj(id=INT, day=DATE, state=TEXT, attempt=INT, max_attempts=INT, error=nullable(TEXT),
                rows_synced=nullable(INT), run_after=TIME, started_at=nullable(TIME), finished_at=nullable(TIME),
                duration_ms=nullable(INT), waiting_for=nullable(TEXT)),
    "Day": obj(source=TEXT, day=DATE, status={"type": "string", "enum": list(DAY_STATUSES)}, attempts=INT,
               rows_synced=nullable(INT), error=nullable(TEXT), batch_id=nullable(INT), synced_at=nullable(TIME),
               updated_at=TIME, stale_since=nullable(TIME)),
    "Cards": obj(synced=INT, failed=INT, running=INT, queued=INT, last_success_at=nullable(TIME), waiting=INT,
                 stale=INT),
}


def query(name: str, schema: Schema, description: str) -> Schema:
    """An optional query parameter; given empty (`?from=&to=`) it counts as absent."""
    either = {"anyOf": [schema, {"type": "string", "maxLength": 0}]}
    return {"name": name, "in": "query", "required": False, "schema": either, "description": description}


def header(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {**INT, "minimum": 1}}
PAGE = [query("limit", {**INT, "minimum": 1, "maximum": 500}, "page size"),
        query("offset", {**INT, "minimum": 0, "maximum": 1_000_000_000}, "rows to skip")]
LANGUAGE = header("Accept-Language", TEXT, "zh… for Chinese messages")
SECURED: list[Schema] = [{"bearer": []}, {}]  # only when DATESYNC_API_TOKEN is set
SSE = {"200": {"description": "Server-Sent Events: a snapshot, then every transition as it commits",
               "content": {"text/event-stream": {"schema": TEXT}}}}
RESUME = [header("Last-Event-ID", TEXT, "resume after this event id"),
          query("last_event_id", {**INT, "minimum": 0}, "resume after this event id")]


def op(summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {"summary": summary, "responses": responses, **extra}


PATHS: dict[str, Schema] = {
    "/healthz": {"get": op("The process is up", {"200": json_body(success_of(obj(alive=BOOL)), "alive")})},
    "/readyz": {"get": op("Database reachable, migrations current, listener connected", {
        "200": json_body(success_of(obj(ready=BOOL)), "ready"), "503": {"$ref": "#/components/responses/Error"}})},
    "/metrics": {"get": op("Prometheus metrics: tasks, durations, retries, queue depth, wake latency, SSE clients", {
        "200": {"description": "Prometheus text format (OpenMetrics when the Accept header asks for it)",
                "content": {"text/plain": {"schema": TEXT}}}})},
    "/openapi.json": {"get": op("This description", {"200": json_body({"type": "object"}, "OpenAPI 3.0")})},
    "/": {"get": op("The status page", {"200": {"description": "HTML", "content": {"text/html": {"schema": TEXT}}}})},
    f"{PREFIX}/sync/batch": {"post": op(
        "Request a batch (one task per date)",
        {"202": json_body(success_of(ref("BatchAccepted")), "Accepted; the daemon starts it"),
         "200": json_body(success_of({"oneOf": [ref("BatchAccepted"), ref("DryRun")]}),
                          "An identical unfinished batch (or the Idempotency-Key's), or a dry run's plan"),
         **errors(400, 401, 403, 413, 422)},
        requestBody={"required": True, "content": {"application/json": {"schema": ref("BatchRequest")}}},
        parameters=[header("Idempotency-Key", {**TEXT, "minLength": 1, "maxLength": 255,
                                               "pattern": "^[ -~]*[!-~][ -~]*$"},
                           "a repeated key returns the first batch"), LANGUAGE],
        security=SECURED)},
    f"{PREFIX}/batches": {"get": op(
        "Batches, newest first",
        {"200": json_body(success_of(obj(batches={"type": "array", "items": ref("Batch")}, total=INT, limit=INT,
                                         offset=INT)), "One page"), **errors(422)},
        parameters=[*PAGE, query("state", {"type": "string", "enum": list(BATCH_STATES)}, "only this state")])},
    f"{PREFIX}/batches/{{batch_id}}": {"get": op(
        "One batch with its per-date tasks",
        {"200": json_body(success_of(obj(batch=ref("Batch"), tasks={"type": "array", "items": ref("Task")})),
                          "The batch"), **errors(404)},
        parameters=[BATCH_ID])},
    f"{PREFIX}/batches/{{batch_id}}/cancel": {"post": op(
        "Ask for a batch to be cancelled",
        {"202": json_body(success_of(obj(batch=ref("Batch"), message=TEXT)), "Requested"),
         **errors(401, 403, 404, 409)},
        parameters=[BATCH_ID, LANGUAGE], security=SECURED)},
    f"{PREFIX}/batches/{{batch_id}}/retry": {"post": op(
        "Requeue a finished batch's failed dates",
        {"202": json_body(success_of(obj(batch=ref("Batch"), requeued=INT, message=TEXT)), "Requeued"),
         **errors(401, 403, 404, 409)},
        parameters=[BATCH_ID, LANGUAGE], security=SECURED)},
    f"{PREFIX}/batches/{{batch_id}}/events": {"get": op(
        "A batch's progress as Server-Sent Events; ends after its final event", {**SSE, **errors(404)},
        parameters=[BATCH_ID, *RESUME])},
    f"{PREFIX}/events": {"get": op("Every batch's progress as Server-Sent Events", SSE, parameters=RESUME)},
    f"{PREFIX}/": {"get": op(
        "The status summary: cards and per-date records",
        {"200": json_body(success_of(obj(cards=ref("Cards"), records={"type": "array", "items": ref("Day")},
                                         total=INT, limit=INT, offset=INT)), "Summary"), **errors(422)},
        parameters=[query("from", DATE, "first date"), query("to", DATE, "last date"),
                    query("status", {"type": "string", "enum": list(DAY_STATUSES)}, "only this status"),
                    query("source", TEXT, "only this source"), *PAGE])},
    f"{PREFIX}/sources": {"get": op(
        "Configured sources",
        {"200": json_body(success_of(obj(sources={"type": "array", "items": obj(name=TEXT, handler=TEXT)})),
                          "Sources")})},
    f"{PREFIX}/gaps": {"get": op(
        "Dates of a range not synced (missing or failed), or stale (an upstream date re-synced since)",
        {"200": json_body(success_of(obj(None, **{
            "source": TEXT, "from": DATE, "to": DATE,
            "gaps": {"type": "array", "items": obj(day=DATE, status={"type": "string",
                                                                     "enum": ["missing", "failed", "stale"]})},
            "ranges": {"type": "array", "items": obj(start_date=DATE, end_date=DATE)}})), "Gaps"), **errors(422)},
        parameters=[query("from", DATE, "first date (default: 30 days before `to`)"),
                    query("to", DATE, "last date (default: yesterday)"),
                    query("source", TEXT, "the source (default)")])},
}

SPEC: Schema = {
    "openapi": "3.0.3",
    "info": {"title": "datesync", "version": "1", "description": "Keep PostgreSQL in step with a daily source. "
             "Every answer is an envelope: {status: success, data} or {status: error, message, errors}."},
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "responses": {"Error": json_body(ref("Error"), "An error envelope naming the field")},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "DATESYNC_API_TOKEN, when set, for every POST"}},
    },
}


async def openapi_json(request: Request) -> Response:
    """This API's OpenAPI 3.0 description."""
    return JSONResponse(SPEC)
