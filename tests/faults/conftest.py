"""Fixtures of the fault suite: the seed of each scenario, and a PostgreSQL server of our own to restart."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from tests.faults.dbs import DedicatedServer, dedicated_server


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """FAULTS_SEED replays a run; by default each test has its own fixed seed, so CI is deterministic."""
    given = os.environ.get("FAULTS_SEED")
    return int(given) if given else sum(map(ord, request.node.name)) % 10_000


@pytest.fixture(scope="module")
async def own_server() -> AsyncIterator[DedicatedServer]:
    """An embedded server in a temporary folder that tests may stop and start."""
    async with dedicated_server() as server:
        yield server
