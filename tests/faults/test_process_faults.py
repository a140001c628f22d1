"""Process faults against real `datesync daemon` processes: SIGKILL at random moments and mid-commit, SIGTERM
mid-batch, several daemons over overlapping batches, a daemon with a wrong clock."""

from __future__ import annotations

import pytest

from tests.faults import scenarios
from tests.faults.common import SUITE


@pytest.mark.timeout(180)
async def test_random_sigkills_across_a_200_date_batch_lose_nothing(dsn: str, seed: int) -> None:
    fig = await scenarios.random_kills(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.kills >= 10 and fig.dates == 200


async def test_sigkill_while_a_finish_commits_ends_each_date_exactly_once(dsn: str, seed: int) -> None:
    fig = await scenarios.kill_during_finish(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.kills == SUITE.finish_kill_rounds


async def test_sigterm_mid_batch_hands_dates_back_and_loses_nothing(dsn: str, seed: int) -> None:
    fig = await scenarios.sigterm_mid_batch(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.sigterms >= SUITE.sigterms and fig.dates == 30


@pytest.mark.timeout(180)
async def test_pipelined_daemons_killed_and_stopped_mid_drain_lose_nothing(dsn: str, seed: int) -> None:
    fig = await scenarios.pipelined_kills(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.kills + fig.sigterms == SUITE.pipelined_faults and fig.dates == SUITE.pipelined_dates


async def test_two_to_four_daemons_over_overlapping_batches_never_overlap_a_date(dsn: str, seed: int) -> None:
    fig = await scenarios.overlapping_daemons(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.overlaps == 0 and fig.dates > 0


async def test_a_daemon_with_a_wrong_clock_neither_steals_nor_loses_leases(dsn: str, seed: int) -> None:
    fig = await scenarios.skewed_clock(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
    assert fig.dates == SUITE.skew_dates


async def test_a_lone_daemon_never_loses_its_own_leases(dsn: str, seed: int) -> None:
    """Engine bug (reported): the heartbeat treats a date claimed while it is in flight as lost and cancels it;
    the date stays `running` under the daemon's lease and reruns later (or, cancelled before it started, is never
    run and its lease renewed forever)."""
    fig = await scenarios.lone_daemon_leases(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()


async def test_a_stalled_heartbeat_never_lets_a_daemon_rerun_its_own_running_dates(dsn: str, seed: int) -> None:
    """Engine bug (reported): after its own leases expired under a stalled heartbeat, a daemon requeues and
    re-claims its own dates while their first runs go on; the first run's outcome is then written onto the second
    attempt (task_finish is guarded by lease owner, not attempt), the batch ends while runs continue."""
    fig = await scenarios.stalled_heartbeat(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()


async def test_cancelling_running_dates_leaves_no_day_running(dsn: str, seed: int) -> None:
    """Engine bug (reported): a date cancelled while it runs keeps `datesync.day.status = 'running'` for good, so
    a synced date loses its `success` (later batches re-run it) and a never-synced one is no gap (gaps/backfill
    miss it)."""
    fig = await scenarios.cancel_mid_batch(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()


async def test_a_dead_daemons_dates_are_taken_over_soon_after_their_leases_expire(dsn: str, seed: int) -> None:
    """Engine weakness (reported): expired leases are taken back only by a full scan (start, NOTIFY, listener
    reconnect, or an idle safety poll); a busy survivor leaves a dead daemon's dates waiting until it runs out of
    other work and then up to DATESYNC_POLL_INTERVAL more."""
    fig = await scenarios.takeover_latency(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()
