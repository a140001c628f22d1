"""The JSON API under /api/v1/sync-status: request, inspect, cancel and retry batches; the status summary.

`routes` are mounted under the prefix; `root_routes` (GET /openapi.json) at the root; `middleware()` and
`EXCEPTION_HANDLERS` make every answer, errors included, the envelope.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from datesync.web.api import batches, openapi, status, submit
from datesync.web.api.errors import EXCEPTION_HANDLERS
from datesync.web.api.middleware import middleware

routes: list[BaseRoute] = [
    Route("/", status.summary, methods=["GET"], name="status_summary"),
    Route("/sources", status.sources, methods=["GET"], name="sources"),
    Route("/sync/batch", submit.submit_batch, methods=["POST"], name="batch_submit"),
    Route("/batches", batches.list_batches, methods=["GET"], name="batch_list"),
    Route("/batches/{batch_id}", batches.get_batch, methods=["GET"], name="batch_get"),
    Route("/batches/{batch_id}/cancel", batches.cancel_batch, methods=["POST"], name="batch_cancel"),
    Route("/batches/{batch_id}/retry", batches.retry_batch, methods=["POST"], name="batch_retry"),
]

root_routes: list[BaseRoute] = [
    Route("/openapi.json", openapi.openapi_json, methods=["GET"], name="openapi"),
]

__all__ = ["EXCEPTION_HANDLERS", "middleware", "root_routes", "routes"]
