"""Handlers that raise, hang past the timeout, return a wrong type, write half their rows then fail, or start
very slowly, served by two real daemons."""

from __future__ import annotations

from tests.faults import scenarios
from tests.faults.common import SUITE


async def test_misbehaving_handlers_fail_cleanly_roll_back_and_keep_the_daemons_up(dsn: str, seed: int) -> None:
    fig = await scenarios.handler_faults(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.dates == SUITE.handler_dates * (len(scenarios.HANDLERS) + 1)
