"""The API's middleware: CORS for exactly DATESYNC_CORS_ORIGINS, the last-resort guard, cross-site requests
refused, and a body limit."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datesync.daemon.ops.messages import preferred
from datesync.daemon.ops.problems import OperationError, problem, shown
from datesync.daemon.settings import Settings
from datesync.web.api.envelope import failure
from datesync.web.api.errors import Guard
from datesync.web.asgi import HttpMiddleware

MAX_BODY = 64 * 1024
CORS_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "Accept-Language"]


def too_large(limit: int) -> OperationError:
    return OperationError(413, [problem("body", "body_too_large", limit=limit)])


class BodyLimit(HttpMiddleware):
    """Refuse a body over `limit` bytes with 413: at once from Content-Length, or while a chunked one streams
    in (the OperationError raised from receive() reaches the API's exception handler)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        super().__init__(app)
        self.limit = limit

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
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


class CrossSiteGuard:
    """Refuse a mutating request that a browser sends from another site, unless its origin is configured.

    A page anywhere can make its visitor's browser send a "simple" cross-origin POST (a text/plain body, or none
    at all for cancel and retry) that needs no CORS preflight, to any address the visitor reaches: a datesync on
    localhost or an intranet, typically without DATESYNC_API_TOKEN. CORS only hides the answer; the batch would
    be created or cancelled. Browsers say where such a request comes from: Origin on every POST, and, in current
    ones, Sec-Fetch-Site, which a page cannot set. Either one from another site is refused; browsers without
    Sec-Fetch-* still send Origin. Clients that are not browsers (curl, the CLI) send neither and are served.
    Which Host names we answer to at all is web.hosts' concern: it runs first.
    """

    SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, allowed_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.allowed = frozenset(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in self.SAFE_METHODS:
            headers = Headers(scope=scope)
            site = (headers.get("sec-fetch-site") or "").strip().lower()
            origin = headers.get("origin")
            if not self._allowed(site, origin, scope["scheme"], headers.get("host")):
                error = OperationError(403, [problem("Origin", "cross_site", origin=shown(origin or site))])
                await failure(error, preferred(headers.get("accept-language")))(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _allowed(self, site: str, origin: str | None, scheme: str, host: str | None) -> bool:
        if origin is not None and origin in self.allowed:
            return True
        if site not in ("", "same-origin", "none"):
            return False
        # The browser's own verdict: behind a TLS proxy that is not trusted our scheme reads "http" while the
        # page's Origin says https, and the page must still work.
        if origin is None or site == "same-origin":
            return True
        return _origin_key(origin) is not None and _origin_key(origin) == _origin_key(f"{scheme}://{host or ''}")


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, the port made explicit; None for `null` or anything unparsable."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.hostname or port is None or parts.path or parts.query or parts.username is not None:
        return None
    return parts.scheme.lower(), parts.hostname.rstrip("."), port


def middleware(settings: Settings) -> list[Middleware]:
    """Outermost first: CORS (so error answers carry its headers too), the guard, cross-site refusal, the body
    limit."""
    stack = [Middleware(Guard), Middleware(CrossSiteGuard, allowed_origins=settings.cors_origins),
             Middleware(BodyLimit)]
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
