"""What the ASGI middlewares share: HTTP-only dispatch, and a `send` that sees the start of the answer (its status
and headers)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HttpMiddleware:
    """A middleware that acts on HTTP requests only (`http`); anything else (lifespan, websocket) goes straight
    to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class WatchedSend:
    """Wraps `send`: the `http.response.start` message is kept in `start` (None until the answer starts), after
    `on_start`, if given, has had the chance to change it (its headers) before it goes out."""

    def __init__(self, send: Send, on_start: Callable[[Message], None] | None = None) -> None:
        self.send = send
        self.on_start = on_start
        self.start: Message | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if self.on_start is not None:
                self.on_start(message)
            self.start = message
        await self.send(message)
