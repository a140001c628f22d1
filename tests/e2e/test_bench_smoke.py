"""`datesync bench --quick --json` runs end to end and reports every figure (no timing assertions here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datesync.bench import EXTRA_KEYS, KEYS
from tests.support.pgbouncer import PgBouncer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_quick_reports_every_key_with_a_pooler_as_database_url_and_a_direct_url(
    server_dsn: str, bouncer: PgBouncer
) -> None:
    # One run, in the shape of a self-hosted PgBouncer or Supabase (a pooler as DATABASE_URL beside a direct URL),
    # which takes every path of the plain one and more: its subprocesses once inherited DATABASE_DIRECT_URL and
    # listened on (and migrated) the user's database instead of the scratch one, so the daemon "never started".
    env = {**os.environ, "DATABASE_URL": bouncer.pooled(server_dsn), "DATABASE_DIRECT_URL": server_dsn,
           "PYTHONPATH": str(ROOT), "LOG_FORMAT": "json"}
    proc = subprocess.run([sys.executable, "-m", "datesync.cli", "bench", "--quick", "--json"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    _every_key_with_its_sign(figures)
    # The storage figures: a date's task, event and day rows with their indexes come to a few hundred bytes to a
    # few kilobytes; the kept day row alone is less; the files right after the drain are at least as large.
    assert 100 < figures["bytes_per_date"] < 10_000, figures
    assert 0 < figures["bytes_per_date_kept"] < figures["bytes_per_date"] <= figures["bytes_per_date_written"]


# No daemon waiting for a heavyweight lock is the aim, not a bug: those shares may be 0. Every other figure is a
# rate, a time, a size or a ratio of two of them, which a working probe never measures as 0.
MAY_BE_ZERO = {"lock_wait_share", "lock_wait_share_1daemon"}


def _every_key_with_its_sign(figures: dict[str, float]) -> None:
    assert set(figures) == {*KEYS, *EXTRA_KEYS}
    assert all(isinstance(v, (int, float)) and v >= 0 for v in figures.values()), figures
    assert all(v > 0 for k, v in figures.items() if k not in MAY_BE_ZERO), figures
    assert figures["lock_wait_share"] <= 1 and figures["lock_wait_share_1daemon"] <= 1, figures
    assert figures["post_tail_ratio"] >= 1, figures  # p99 over p50
    # A date's claim and finish share transactions with other dates' (at most 20 in flight), and need a few at most.
    assert 0 < figures["xacts_per_date_1x20"] < 5 and 0 < figures["xacts_per_date_4x5"] < 5, figures
