"""DATESYNC_API_TOKEN: mutating endpoints need `Authorization: Bearer <token>`; reads stay open."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from datesync.daemon.ops.problems import OperationError, problem
from datesync.web.state import AppState


def token_matches(expected: str, authorization: str | None) -> bool:
    """Whether the Authorization header carries the token, compared in constant time."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may hold any latin-1 text.
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def require_token(request: Request) -> None:
    """Raise 401 unless the request may mutate (no token configured, or the right one sent)."""
    state: AppState = request.app.state.datesync
    expected = state.settings.api_token
    if expected and not token_matches(expected, request.headers.get("authorization")):
        raise OperationError(401, [problem("Authorization", "unauthorized")],
                       headers={"WWW-Authenticate": 'Bearer realm="datesync"'})
