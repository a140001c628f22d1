"""The access log: one line per answered request, at info when the answer is not a 2xx (what an operator looks
for) and at debug otherwise. Written here rather than through uvicorn's access log so that it uses our pipeline
(JSON, scrubbing) and levels by status; the path is logged without its query string, which may carry a token."""

from __future__ import annotations

import logging
import time

import structlog
from starlette.types import Receive, Scope, Send

from datesync.web.asgi import HttpMiddleware, WatchedSend

log = structlog.get_logger("datesync.web.access")


class AccessLog(HttpMiddleware):
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        watched = WatchedSend(send)
        try:
            await self.app(scope, receive, watched)
        finally:
            # 500 is what the client gets if the app fails before answering
            status = 500 if watched.start is None else watched.start["status"]
            level = logging.DEBUG if 200 <= status < 300 else logging.INFO
            log.log(level, "http_request", method=scope["method"], path=scope["path"], status=status,
                    ms=round((time.perf_counter() - started) * 1000, 1), client=(scope.get("client") or ("",))[0])
