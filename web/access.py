"""The access log: one line per answered request, at info when the answer is not a 2xx (what an operator looks
for) and at debug otherwise. Written here rather than through uvicorn's access log so that it uses our pipeline
(JSON, scrubbing) and levels by status; the path is logged without its query string, which may carry a token."""

from __future__ import annotations

import logging
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("datesync.web.access")


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            level = logging.DEBUG if 200 <= status < 300 else logging.INFO
            log.log(level, "http_request", method=scope["method"], path=scope["path"], status=status,
                    ms=round((time.perf_counter() - started) * 1000, 1), client=(scope.get("client") or ("",))[0])
