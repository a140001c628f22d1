"""Database faults under real daemons: the server restarted, every backend terminated, the listener's
connection alone terminated, an outage longer than the lease, and a database unreachable at start-up."""

from __future__ import annotations

import pytest

from tests.faults import scenarios
from tests.faults.common import SUITE
from tests.faults.dbs import DedicatedServer


@pytest.mark.timeout(180)
async def test_postgresql_restarted_mid_batch_loses_nothing(own_server: DedicatedServer, seed: int) -> None:
    fig = await scenarios.database_restart(own_server, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.db_restarts == SUITE.db_restarts and fig.dates == 60


async def test_an_outage_longer_than_the_lease_never_runs_a_date_twice_at_once(
    own_server: DedicatedServer, seed: int
) -> None:
    fig = await scenarios.outage_longer_than_lease(own_server, seed, SUITE)
    assert not fig.problems, fig.failure()


async def test_every_daemon_backend_terminated_loses_nothing(dsn: str, seed: int) -> None:
    fig = await scenarios.backends_terminated(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.backend_kills == SUITE.backend_kills and fig.dates == 50


async def test_the_listener_alone_terminated_reconnects_and_rescans(dsn: str, seed: int) -> None:
    fig = await scenarios.listener_terminated(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()


async def test_a_daemon_started_before_its_database_waits_then_serves(own_server: DedicatedServer, seed: int) -> None:
    fig = await scenarios.startup_waits_for_database(own_server, seed, SUITE)
    assert not fig.problems, fig.failure()


async def test_a_database_that_never_answers_ends_the_daemon_with_exit_2_and_a_clear_message() -> None:
    """With the default DATESYNC_STARTUP_TIMEOUT (60 s, too long for the suite) the daemon runs here under a clock
    30 times fast, so the minute passes in about five seconds of real retries (tests/e2e/test_startup_errors.py
    sets the variable instead)."""
    fig = await scenarios.startup_gives_up(rate=30.0)
    assert not fig.problems, fig.failure()
