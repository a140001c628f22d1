"""The gaps query over HTTP (issue 7 fills this in)."""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
