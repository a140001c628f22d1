"""The one retry schedule: doubling (or any factor) from a base, capped, jittered within its range."""

from __future__ import annotations

import pytest

from datesync.daemon.backoff import Backoff


def test_it_multiplies_per_failure_and_stops_at_the_cap() -> None:
    exact = Backoff(0.25, cap=5.0, jitter=(1.0, 1.0))
    assert [exact.delay(n) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert Backoff(0.005, cap=5.0, factor=4.0, jitter=(1.0, 1.0)).delay(3) == pytest.approx(0.08)
    assert exact.delay(0) == 0.25  # no failure yet counts as the first


def test_a_huge_failure_count_does_not_overflow() -> None:
    assert Backoff(1.0, cap=60.0, jitter=(1.0, 1.0)).delay(10_000) == 60.0
    assert Backoff(10.0, jitter=(1.0, 1.0)).delay(4) == 80.0  # no cap: the retry policy of dates


def test_jitter_stays_within_its_range_and_varies() -> None:
    b = Backoff(1.0, cap=1.0, jitter=(0.5, 1.0))
    draws = {b.delay(1) for _ in range(200)}
    assert all(0.5 <= d <= 1.0 for d in draws) and len(draws) > 100
