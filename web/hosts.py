"""The Host allowlist (DATESYNC_ALLOWED_HOSTS): answer only requests addressed to one of our own names.

DNS rebinding: a page on attacker.example re-points its name at 127.0.0.1 (or an intranet address) and then
talks to a datesync there as if it were its own origin; the browser even labels the requests same-origin, so
neither CORS nor the cross-site check can tell. What gives it away is the Host header, which carries the
attacker's name. The same check keeps redirects and links built from Host pointing at our own names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from datesync.daemon.ops.messages import preferred
from datesync.daemon.ops.problems import OperationError, problem, shown
from datesync.web.api.envelope import failure

# A Host header: a name or IPv4 address, or an IPv6 address in brackets, then an optional port.
_HOST_HEADER = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::(\d{1,5}))?")
# Liveness only says "up". Platform checks (Kubernetes, Elastic Beanstalk, some load balancers) send their
# target's IP as Host, and a refused liveness check restarts the service.
EXEMPT = frozenset({("GET", "/healthz"), ("HEAD", "/healthz")})


def host_name(header: str) -> str | None:
    """The name in a Host header, lower-case, without port or trailing dot; None when it is malformed."""
    match = _HOST_HEADER.fullmatch(header.strip().lower())
    if match is None or (match.group(2) is not None and int(match.group(2)) > 65535):
        return None
    return match.group(1).rstrip(".") or None


class HostPatterns:
    """Exact names, `.example.com` (that name and every name under it, as Django's ALLOWED_HOSTS), or `*`."""

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = tuple(patterns)
        self.any = "*" in patterns
        self.exact = frozenset(p for p in patterns if not p.startswith("."))
        self.suffixes = tuple(p for p in patterns if p.startswith("."))

    def match(self, name: str) -> bool:
        return self.any or name in self.exact or any(
            name == suffix[1:] or name.endswith(suffix) for suffix in self.suffixes)


class HostGuard:
    """Answer 400, naming the Host field, to a request whose Host is not one of ours (or is missing)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.patterns = HostPatterns(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.patterns.any \
                and (scope.get("method"), scope["path"]) not in EXEMPT:
            headers = Headers(scope=scope)
            given = headers.get("host")
            name = host_name(given) if given is not None else None
            if name is None or not self.patterns.match(name):
                key = "host_missing" if given is None else "host_not_allowed"
                error = OperationError(400, [problem("Host", key, host=shown(given or ""))])
                await failure(error, preferred(headers.get("accept-language")))(scope, receive, send)
                return
        await self.app(scope, receive, send)
