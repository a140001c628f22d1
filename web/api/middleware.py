"""The API's middleware: CORS for exactly DATESYNC_CORS_ORIGINS, the last-resort guard, and a body limit."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.settings import Settings
from web.api.envelope import ApiError, failure, problem
from web.api.errors import Guard
from web.api.i18n import preferred

MAX_BODY = 64 * 1024
CORS_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "Accept-Language"]


def too_large(limit: int) -> ApiError:
    return ApiError(413, [problem("body", "body_too_large", limit=limit)])


class BodyLimit:
    """Refuse a body over `limit` bytes with 413: at once from Content-Length, or while a chunked one streams
    in (the ApiError raised from receive() reaches the API's exception handler)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            response = failure(too_large(self.limit), preferred(headers.get("accept-language")))
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise too_large(self.limit)
            return message

        await self.app(scope, counted, send)


def middleware(settings: Settings) -> list[Middleware]:
    """Outermost first: CORS (so error answers carry its headers too), the guard, the body limit."""
    stack = [Middleware(Guard), Middleware(BodyLimit)]
    if settings.cors_origins:
        cors = Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=CORS_HEADERS,
            expose_headers=["Location"],
            max_age=600,
        )
        stack.insert(0, cors)
    return stack
