"""The status page (issue 6 fills this in)."""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
