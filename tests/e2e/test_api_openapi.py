"""GET /openapi.json describes every route, and schemathesis, driven from it against the live server, finds no
5xx and no answer that breaks the description."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.routing import Mount, Route

from datesync.web.app import create_app
from tests.support.server import live_server

EXAMPLES = 60  # per operation and mode: about 10 s for the whole API on this 2-core machine
BUDGET_S = 45.0


def documented_routes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}


def served_routes(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Route):
            found |= {(m, prefix + route.path) for m in route.methods or () if m != "HEAD"}
        elif isinstance(route, Mount) and route.routes:  # a Mount of static files has no routes to describe
            found |= served_routes(list(route.routes), prefix + route.path)
    return found


async def test_every_route_is_described(dsn: str) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.base_url) as client:
        answer = await client.get("/openapi.json")
        app = create_app(live.state)
    assert answer.status_code == 200
    spec = answer.json()
    assert spec["openapi"].startswith("3.")
    assert served_routes(list(app.routes)) <= documented_routes(spec)
    events = spec["paths"]["/api/v1/sync-status/batches/{batch_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    body = spec["paths"]["/api/v1/sync-status/sync/batch"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/BatchRequest"}
    assert spec["components"]["schemas"]["BatchRequest"]["additionalProperties"] is False


def _fuzz(base_url: str, paths: str) -> list[str]:
    """Positive and negative cases for the operations whose path matches `paths`; returns the failures."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json").include(path_regex=paths)
    failures: list[str] = []
    deadline = time.monotonic() + BUDGET_S
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                failures.append(f"budget of {BUDGET_S}s exhausted before {operation.label} ({mode.value})")
                return failures
            label = f"{operation.label} [{mode.value}]"

            # derandomize: the same cases every run, so CI cannot turn red by chance; widen EXAMPLES to explore.
            @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                      derandomize=True, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                response = case.call(base_url=base_url, timeout=10)
                try:
                    # Schema-valid input may still be refused by rules a schema cannot say (a future date, a
                    # range over the limit), so only positive_data_acceptance is left out.
                    case.validate_response(response, excluded_checks=[positive_data_acceptance])
                except BaseException as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
                    failures.append(f"{label} {response.status_code}: {exc}"[:2000])  # noqa: B023 (called now)

            with contextlib.suppress(Unsatisfiable):  # an operation without parameters has no negative input
                check()
    return failures


# Every operation but the endless event streams, grouped by the module that serves it, so that a failure points
# at its owner.
GROUPS = {
    "api": r"^/api/v1/sync-status/(sync/batch|batches.*(?<!/events)|sources|)$",
    "gaps": r"^/api/v1/sync-status/gaps$",
    "root": r"^/(healthz|readyz|openapi\.json|)$",
}


@pytest.mark.parametrize("paths", list(GROUPS.values()), ids=list(GROUPS))
async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(dsn: str, paths: str) -> None:
    async with live_server(dsn) as live:
        failures = await asyncio.to_thread(_fuzz, live.base_url, paths)
    assert not failures, "\n\n".join(dict.fromkeys(failures))
