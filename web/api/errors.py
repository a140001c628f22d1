"""Every failure becomes an error envelope: OperationError and Starlette's HTTPException as themselves, anything
else (a bug, the database gone) as a 500/503 without details, logged. Never a traceback to the client."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from datesync.daemon.db.connect import CONNECT_ERRORS
from datesync.daemon.ops.messages import Lang, preferred
from datesync.daemon.ops.problems import Msg, OperationError
from datesync.web.api.envelope import failure
from datesync.web.asgi import HttpMiddleware, WatchedSend

log = structlog.get_logger("datesync.web")


def _lang(headers: Mapping[str, str]) -> Lang:
    return preferred(headers.get("accept-language"))


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OperationError)
    return failure(exc, _lang(request.headers))


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method), and any HTTPException, as an envelope."""
    assert isinstance(exc, HTTPException)
    params = {"method": request.method, "path": request.url.path, "status": exc.status_code}
    key = {404: "route_not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    error = OperationError(exc.status_code, message=Msg(key, params), headers=exc.headers)
    return failure(error, _lang(request.headers))


EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Any]] = {
    OperationError: api_error,
    HTTPException: http_error,
}


class Guard(HttpMiddleware):
    """Last resort for exceptions no handler took: log them, answer 503 (database unreachable) or 500."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        watched = WatchedSend(send)
        try:
            await self.app(scope, receive, watched)
        except ClientDisconnect:
            # The client went away while sending its body: nobody to answer, and nothing went wrong here.
            log.info("api_client_disconnected", method=scope.get("method"), path=scope.get("path"))
        except Exception as exc:
            log.error("api_unhandled_error", method=scope.get("method"), path=scope.get("path"), exc_info=exc)
            if watched.start is not None:  # a stream broke mid-way: nothing can be sent any more
                raise
            status, key = (503, "database_unavailable") if isinstance(exc, CONNECT_ERRORS) else (500, "internal_error")
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
            response = failure(OperationError(status, message=Msg(key)), _lang(headers))
            await response(scope, receive, send)
