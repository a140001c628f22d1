"""Issue 15, generatively: Hypothesis drives a handler that returns or raises arbitrary values, bytes and texts,
hangs, blocks its thread, swallows cancellation, reports odd progress, fails in its own SQL or closes its own
connection. After each batch every date has ended as its behaviour says, no slot is left taken, the batch counts
match the task rows exactly, and a second batch still runs. Real PostgreSQL, a real in-process daemon."""

from __future__ import annotations

import asyncio
import datetime
import itertools

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datesync.daemon.sync import attempt
from tests.faults import edges
from tests.support.daemons import FAST, counts_mismatch, running_daemon, wait_batch_final
from tests.support.waiting import wait_for

START = datetime.date(2001, 1, 1)
_next_day = itertools.count()
TIMEOUT = 0.5

any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=300)  # lone surrogates too
huge_text = st.integers(10_000, 300_000).map(lambda n: "\x00x" * (n // 2))
messages = st.one_of(any_text, st.binary(max_size=200), huge_text)
returns = st.one_of(
    st.none(), st.integers(-(2**70), 2**70), st.booleans(), st.floats(), any_text, st.binary(max_size=50),
    st.lists(st.integers(), max_size=3), st.just(10**5000), st.just(2**63 - 1),
)
raised = st.sampled_from([RuntimeError, ValueError, KeyError, OSError, ConnectionResetError, SystemExit,
                          KeyboardInterrupt, GeneratorExit, asyncio.CancelledError, edges.CustomBase,
                          asyncpg.InterfaceError, asyncpg.PostgresError])
behaviours = st.one_of(
    st.tuples(st.just("return"), returns),
    st.tuples(st.just("raise"), raised, messages),
    st.just(("hang",)),
    st.just(("swallow",)),
    st.tuples(st.just("block"), st.floats(1.0, 2.0)),
    st.tuples(st.just("progress"), st.one_of(st.integers(), st.floats(), any_text),
              st.one_of(st.integers(), st.none()), st.one_of(any_text, huge_text, st.none(), st.integers())),
    st.tuples(st.just("db_error"), any_text.filter(lambda t: "\x00" in t) | st.just("nul \x00 here")),
    st.just(("close_db",)),
)


def expected(plan: edges.Behaviour) -> tuple[str, int | None]:
    """The final task state and rows_synced the plan must end with."""
    kind = plan[0]
    if kind == "return":
        value = plan[1]
        if value is None:
            return "succeeded", None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
            return "succeeded", value
        return "failed", None
    if kind == "progress":
        return "succeeded", 1
    return "failed", None


@pytest.mark.timeout(240)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(plans=st.lists(behaviours, min_size=1, max_size=6))
async def test_whatever_a_handler_does_every_date_ends_and_the_engine_goes_on(
    db: asyncpg.Connection, dsn: str, plans: list[edges.Behaviour], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attempt, "UNWIND_S", 0.3)
    first = START + datetime.timedelta(days=next(_next_day) * 10)
    days = [first + datetime.timedelta(days=i) for i in range(len(plans))]
    edges.PLANS.update(zip(days, plans, strict=True))
    config = FAST.replace(max_attempts=2, task_timeout=TIMEOUT, concurrency=3, retry_delay=0.01)
    async with running_daemon(dsn, config, handler="tests.faults.edges:planned") as daemon:
        batch_id = await db.fetchval("INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $2) "
                                     "RETURNING id", days[0], days[-1])
        final = await wait_batch_final(db, batch_id, 60)
        await wait_for(lambda: _idle(daemon), 5)  # no slot leaked
        tasks = await db.fetch("SELECT day, state::text, attempt, rows_synced, error, lease_owner "
                               "FROM datesync.task WHERE batch_id = $1 ORDER BY day", batch_id)
        for task, plan in zip(tasks, plans, strict=True):
            state, rows = expected(plan)
            where = f"{_shown(plan)} -> {dict(task)!r:.600}"
            assert (task["state"], task["rows_synced"], task["lease_owner"]) == (state, rows, None), where
            assert task["attempt"] == (1 if state == "succeeded" else 2), where
            if state == "failed":
                error = task["error"]
                assert error and "\x00" not in error and len(error.encode()) <= 4096, where
        assert await counts_mismatch(db) == []
        counts = {s: sum(1 for t in tasks if t["state"] == s) for s in ("succeeded", "failed")}
        assert (final["succeeded"], final["failed"]) == (counts["succeeded"], counts["failed"])
        assert final["state"] == ("failed" if counts["failed"] else "succeeded")
        # The engine goes on: a plain date right after.
        after = first + datetime.timedelta(days=9)
        again = await db.fetchval("INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $1) RETURNING id",
                                  after)
        assert (await wait_batch_final(db, again, 10))["state"] == "succeeded"


def _shown(plan: edges.Behaviour) -> str:
    # repr() of an int over 4,300 digits raises; the plan holds 10**5000 on purpose.
    return repr(tuple(f"int of {v.bit_length()} bits" if isinstance(v, int) else v for v in plan))[:200]


async def _idle(daemon: object) -> bool:
    return not daemon.running  # type: ignore[attr-defined]
