"""The status page: GET / serves a static single page; /static/ its modules, styles and icon (no build step).

Every answer, the copy of the page under /static/ included, carries the same security headers
(`SecurityHeaders`): a page that can be framed by another site can be clickjacked, whichever URL it came from.
"""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from datesync.web.asgi import HttpMiddleware, WatchedSend

STATIC = Path(__file__).resolve().parent / "static"

# The page loads nothing from elsewhere and talks only to its own origin; the policy makes that a guarantee.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders(HttpMiddleware):
    """Add SECURITY_HEADERS to every HTTP answer that does not set its own. Harmless on JSON and event
    streams, and it leaves no route (a static HTML file, an error page) to forget them."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, WatchedSend(send, on_start=add_security_headers))


def add_security_headers(start: Message) -> None:
    headers = MutableHeaders(scope=start)
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)


async def index(request: Request) -> Response:
    """The status page (its security headers come from SecurityHeaders)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


routes: list[BaseRoute] = [
    Route("/", index, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
