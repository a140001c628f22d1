"""Load: 200 concurrent POSTs of overlapping ranges and 200 SSE clients against one web process and two
daemons."""

from __future__ import annotations

import pytest

from tests.faults import abuse
from tests.faults.common import SUITE


@pytest.mark.timeout(180)
async def test_concurrent_posts_and_sse_clients_lose_nothing_and_stay_bounded(dsn: str, seed: int) -> None:
    fig = await abuse.load(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.http_5xx == 0 and fig.requests >= SUITE.load_posts + SUITE.load_sse
