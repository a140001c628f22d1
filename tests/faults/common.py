"""What every scenario shares: its scale, its figures, and small database helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import time
from collections.abc import Awaitable, Callable, Iterable

import asyncpg

from datesync.daemon.db.connect import CONNECT_ERRORS, connect

# The server is starting, stopping or gone: worth waiting for.
SERVER_AWAY: tuple[type[BaseException], ...] = (*CONNECT_ERRORS, asyncpg.CannotConnectNowError,
                                                asyncpg.AdminShutdownError)
RETRY_CONNECT: tuple[type[BaseException], ...] = (*SERVER_AWAY, asyncpg.PostgresError)

D0 = datetime.date(2024, 1, 1)  # scenarios use dates from here on: long past, so never "in the future"


def day(n: int) -> datetime.date:
    return D0 + datetime.timedelta(days=n)


def dates_csv(days: Iterable[datetime.date]) -> str:
    return ",".join(sorted(d.isoformat() for d in days))


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big each scenario is: the suite's numbers by default, the soak's bigger ones in SOAK."""

    kill_dates: int = 200  # the batch the random SIGKILLs hit
    kills: int = 10  # SIGKILLs at random moments across it
    kill_delay_ms: int = 300  # per date, so that the batch outlasts the kills
    finish_kill_rounds: int = 2  # SIGKILLs while a finish is committing (alternately committed and rolled back)
    sigterms: int = 2  # SIGTERMs mid-batch
    overlap_batches: int = 12  # overlapping batches over 2-4 daemons
    overlap_window: int = 45  # days those batches fall in
    skew_dates: int = 12
    db_restarts: int = 2  # PostgreSQL stopped and started under running daemons
    backend_kills: int = 3  # every backend of the daemons terminated
    listener_kills: int = 2  # the listeners' connections alone terminated
    handler_dates: int = 3  # dates per misbehaving handler
    load_posts: int = 200  # concurrent POSTs of overlapping ranges
    load_sse: int = 200  # concurrent SSE clients
    corpus_rounds: int = 1  # passes over the hostile-input corpus (later passes vary the fuzzed parts)
    dep_days: int = 18  # days of the dependent-sources scenario (orders, rollup after it, trail after a window)
    dep_kills: int = 3  # SIGKILLs across it
    dep_linked: int = 0  # with_upstream requests among its batches (tiny race: see dependency_scenarios)
    dep_crash_rounds: int = 2  # SIGKILLs while an upstream success that releases dates commits
    pipelined_dates: int = 6000  # quick dates drained by pipelined daemons (issue 20) while they are killed
    pipelined_faults: int = 4  # SIGKILLs and SIGTERMs, alternately, across them


SUITE = Scale()
SOAK = Scale(
    kill_dates=400, kills=30, finish_kill_rounds=6, sigterms=6, overlap_batches=40, overlap_window=90,
    skew_dates=24, db_restarts=6, backend_kills=8, listener_kills=5, handler_dates=6, load_posts=500, load_sse=400,
    corpus_rounds=3, dep_days=60, dep_kills=10, dep_linked=2, dep_crash_rounds=6, pipelined_dates=12000,
    pipelined_faults=10,
)


@dataclasses.dataclass
class Figures:
    """What one run of a scenario did and found."""

    scenario: str
    seed: int
    kills: int = 0
    sigterms: int = 0
    db_restarts: int = 0
    backend_kills: int = 0
    dates: int = 0  # dates (tasks) that reached a final state
    runs: int = 0  # handler invocations
    failed_by_faults: int = 0  # good dates out of attempts because of the faults (allowed by the rules)
    failed_by_upstream: int = 0  # downstream dates failed without running, their upstream date failed for good
    overlaps: int = 0
    bad_inputs: int = 0
    requests: int = 0
    http_5xx: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    details: str = ""  # logs to show when there are problems
    seconds: float = 0.0

    def failure(self) -> str:
        head = f"scenario {self.scenario} (seed {self.seed}) broke {len(self.problems)} rule(s):\n"
        return head + "\n".join(self.problems[:40]) + ("\n\n" + self.details[-12000:] if self.details else "")


async def open_conn(dsn: str, timeout: float = 30.0) -> asyncpg.Connection:
    """A connection, retried while the server is (re)starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await connect(dsn, "datesync-faults")
        except RETRY_CONNECT:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def insert_batch(conn: asyncpg.Connection, start: datetime.date, end: datetime.date, force: bool = False,
                       source: str = "default") -> int:
    """A batch as an operator inserts it (psql)."""
    batch_id: int = await conn.fetchval(
        "INSERT INTO datesync.batch (source, start_date, end_date, force) VALUES ($1, $2, $3, $4) RETURNING id",
        source, start, end, force)
    return batch_id


async def unfinished(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        "SELECT batch_id, state::text, queued, running, succeeded, failed, skipped FROM datesync.batch_progress "
        "WHERE state IN ('queued', 'running') ORDER BY batch_id"))


async def wait_all_final(dsn: str, timeout: float) -> None:
    """Wait until no batch is queued or running (reconnecting as needed: the server may be restarting)."""
    deadline = time.monotonic() + timeout
    conn: asyncpg.Connection | None = None
    left: list[asyncpg.Record] = []
    try:
        while time.monotonic() < deadline:
            try:
                if conn is None or conn.is_closed():
                    conn = await open_conn(dsn, max(deadline - time.monotonic(), 1.0))
                left = await unfinished(conn)
                if not left:
                    return
            except SERVER_AWAY:
                conn = None
            await asyncio.sleep(0.1)
    finally:
        if conn is not None and not conn.is_closed():
            await conn.close()
    raise AssertionError(f"batches not final after {timeout}s: {[dict(r) for r in left][:10]}")


async def wait_until(predicate: Callable[[], Awaitable[object]], timeout: float, what: str,
                     interval: float = 0.05) -> None:
    """Poll an async predicate until truthy; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(interval)


async def running_tasks(conn: asyncpg.Connection, batch_id: int | None = None) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM datesync.task WHERE state = 'running' AND ($1::bigint IS NULL OR batch_id = $1)",
        batch_id))


async def terminate(conn: asyncpg.Connection, application_name_like: str) -> int:
    """Terminate every backend whose application_name matches; how many."""
    return int(await conn.fetchval(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name LIKE $1 AND pid <> pg_backend_pid()", application_name_like))
