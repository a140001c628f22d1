"""Server-Sent Events (issue 5 fills this in)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.routing import BaseRoute

from web.state import AppState

routes: list[BaseRoute] = []


@contextlib.asynccontextmanager
async def lifespan(state: AppState) -> AsyncIterator[None]:
    yield
