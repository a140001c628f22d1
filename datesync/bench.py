"""`datesync bench`: the engine's speed and cost, measured on a scratch database.

Every figure is a median over repetitions. The daemon runs as a real `datesync daemon` subprocess (so its
memory and connections are its own), the web side as a real `datesync web` subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from datesync.bench_probes import KeepAliveClient, WaitSamples, open_loop, sample_waits
from datesync.daemon.db.dsn import clean, redact, with_database
from datesync.daemon.db.queries import q
from datesync.daemon.embedded import bin_dir
from datesync.daemon.runtime import Database, database, migrate_and_register
from datesync.daemon.settings import Settings
from datesync.daemon.sync.context import SyncContext

ROOT = Path(__file__).resolve().parent.parent
YESTERDAY = datetime.date.today() - datetime.timedelta(days=2)  # "before today" in every time zone

KEYS = (
    "drain_dates_per_s", "drain_c1_dates_per_s", "wake_p50_ms", "wake_p99_ms", "post_p50_ms", "post_p99_ms",
    "sse_p50_ms", "sse_p99_ms", "expand_3660_ms", "claim_ms_at_0", "claim_ms_at_1m", "daemon_rss_mb",
    "connections", "bytes_per_date", "post_open_p99_ms", "post_tail_ratio", "drain_4daemons_ratio", "lock_wait_share",
)
# Beyond the list: the same server's rate for the simplest queue (pgbench: one claim and one finish
# transaction per job), measured in the same run, and the drain rate as a share of it (the machine-independent way
# to read the drain figure); and the POST throughput, which with 50 clients in a closed loop sets the latency
# (Little's law: p50 is about 50 / throughput).
# The storage figure twice more: the files' growth right after the drain, before vacuum makes the dead row versions
# of each task's claim and finish reusable; and what a date costs once retention pruned its batch (its day row).
# The open-loop POST probe's median and the rate it offered (1,000/s, lower under --quick), and the two drains whose
# rates make drain_4daemons_ratio, with the lock-wait share of the one-daemon drain beside the four daemons' (what one
# daemon's own connections wait for among themselves), and the transactions each drain wrote per date (transaction ids
# handed out, over the dates: fewer dates per finish round with 5 dates in flight per daemon than with 20).
EXTRA_KEYS = ("ref_pgbench_jobs_per_s", "drain_vs_pgbench", "post_requests_per_s", "bytes_per_date_written",
              "bytes_per_date_kept", "post_open_p50_ms", "post_open_rate", "drain_1x20_dates_per_s",
              "drain_4x5_dates_per_s", "lock_wait_share_1daemon", "xacts_per_date_1x20", "xacts_per_date_4x5")
STORAGE_TABLES = ["task", "event", "day"]
XID_NEXT = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"  # the next transaction id to hand out


@dataclasses.dataclass(frozen=True)
class Sizes:
    drain_dates: int = 10_000
    drain_c1_dates: int = 2_000
    repeats: int = 3
    wake_samples: int = 200
    claim_queue: int = 1_000_000
    rss_queue: int = 100_000
    post_clients: int = 50
    post_requests: int = 1_000
    sse_events: int = 500
    reference_seconds: int = 5
    open_rate: int = 1_000  # POSTs per second offered by the open-loop probe
    open_seconds: float = 10
    scale_dates: int = 10_000  # dates in each drain of drain_4daemons_ratio

    @classmethod
    def quick(cls) -> Sizes:
        # The open-loop probe at 300/s for 2 s: a smoke-test of the probe, not the 1,000/s figure.
        return cls(drain_dates=2_000, drain_c1_dates=300, repeats=1, wake_samples=30, claim_queue=50_000,
                   rss_queue=10_000, post_requests=200, sse_events=100, reference_seconds=2, open_rate=300,
                   open_seconds=2, scale_dates=500)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# -- the wake probe's handler --------------------------------------------------------------------------

async def stamp(day: datetime.date, ctx: SyncContext) -> int:
    """Bench handler: record the wall-clock time the handler started."""
    started = time.time()
    await ctx.db.execute("INSERT INTO datesync_bench.wake (task_id, started) VALUES ($1, $2)", ctx.task_id, started)
    return 0


# -- scratch database and subprocesses -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Scratch:
    """The scratch database's two URLs, as the user's are: `dsn` for DATABASE_URL (through the pooler when the
    user's goes through one), `direct` for DATABASE_DIRECT_URL and for the bench's own probes and set-up."""

    dsn: str
    direct: str


@contextlib.asynccontextmanager
async def scratch_database(db: Database) -> AsyncIterator[Scratch]:
    """A new database on the same server, migrated, dropped afterwards. Made through the direct URL (a pooler
    may not take CREATE DATABASE, and the migrations hold a session lock); the pooled URL of the same name is
    derived, as a daemon given both URLs would see them."""
    name = f"datesync_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(clean(db.direct_dsn))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        direct = with_database(db.direct_dsn, name)
        scratch = Scratch(with_database(db.dsn, name) if db.dsn != db.direct_dsn else direct, direct)
        conn = await asyncpg.connect(clean(direct))
        try:
            await migrate_and_register(conn, Settings(max_range_days=20_000), {"default": "noop"})
            await conn.execute("CREATE SCHEMA datesync_bench; "
                               "CREATE TABLE datesync_bench.wake (task_id bigint PRIMARY KEY, started float8)")
        finally:
            await conn.close()
        if scratch.dsn != direct:
            await _reachable_through_pooler(scratch.dsn)
        yield scratch
    finally:
        with contextlib.suppress(asyncpg.PostgresError):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _reachable_through_pooler(dsn: str) -> None:
    """Fail clearly when the pooler does not serve the new database (a PgBouncer whose [databases] lists names
    but has no `*` entry), rather than with a daemon that never starts."""
    try:
        conn = await asyncpg.connect(clean(dsn), statement_cache_size=0, timeout=15)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise RuntimeError(
            f"bench: the pooler at DATABASE_URL does not serve the scratch database ({redact(dsn)}): "
            f"{type(exc).__name__}: {exc}; let it serve any database (PgBouncer: `* = host=…`), or run the bench "
            "with DATABASE_URL set to the direct URL") from exc
    await conn.close()


@contextlib.asynccontextmanager
async def subprocess_cli(
    command: str, scratch: Scratch, env: dict[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    # Both URLs, always: an inherited DATABASE_DIRECT_URL would point the subprocess's LISTEN and migrations at the
    # user's own database instead of the scratch one.
    full = {**os.environ, "DATABASE_URL": scratch.dsn, "DATABASE_DIRECT_URL": scratch.direct, "LOG_FORMAT": "json",
            "LOG_LEVEL": "warning", "DATESYNC_MAX_RANGE_DAYS": "20000", "PYTHONPATH": str(ROOT), **env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "datesync.cli", command, env=full, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def _daemons(scratch: Scratch, env: dict[str, str], count: int) -> AsyncIterator[None]:
    """`count` daemon subprocesses, started together and stopped together (one at a time, their shutdowns would
    add up)."""
    async with contextlib.AsyncExitStack() as stack:
        procs = [await stack.enter_async_context(subprocess_cli("daemon", scratch, env)) for _ in range(count)]
        try:
            yield
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()


async def _wait(predicate: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: {what} did not happen within {timeout:g} s")
        await asyncio.sleep(interval)


async def _daemon_ready(conn: asyncpg.Connection, timeout: float = 30, daemons: int = 1) -> None:
    async def listening() -> bool:
        return bool(await conn.fetchval(
            "SELECT count(*) >= $1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'datesync-daemon-listener'", daemons))
    await _wait(listening, timeout, "the daemon's start" if daemons == 1 else f"{daemons} daemons' start")


async def _insert_batch(conn: asyncpg.Connection, days: int, force: bool = True) -> int:
    start = YESTERDAY - datetime.timedelta(days=days - 1)
    return int(await conn.fetchval(q("batch_insert"), "default", start, YESTERDAY, force, None, "bench"))


async def _reset(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE datesync.batch, datesync.task, datesync.day, datesync.event, "
                       "datesync_bench.wake RESTART IDENTITY CASCADE")


# -- measurements --------------------------------------------------------------------------------------

async def measure_expand(scratch: Scratch, sizes: Sizes) -> dict[str, float]:
    """Expanding one 3,660-day batch into tasks (one statement), without a daemon."""
    conn = await asyncpg.connect(clean(scratch.direct))
    try:
        samples = []
        for _ in range(max(3, sizes.repeats)):
            await _reset(conn)
            await _insert_batch(conn, 3660)
            started = time.perf_counter()
            async with conn.transaction():
                await conn.fetchrow(q("batch_expand"), 3)
            samples.append((time.perf_counter() - started) * 1000)
        return {"expand_3660_ms": statistics.median(samples)}
    finally:
        await _reset(conn)
        await conn.close()


async def measure_claim(scratch: Scratch, sizes: Sizes) -> dict[str, float]:
    """One claim of one task: alone in the queue, and behind `claim_queue` queued tasks of other batches."""
    conn = await asyncpg.connect(clean(scratch.direct))
    claim = q("task_claim")

    async def one_claim() -> float:
        async with conn.transaction():
            started = time.perf_counter()
            rows = await conn.fetch(claim, "bench", 1, 60.0, ["default"])
            elapsed = (time.perf_counter() - started) * 1000
            assert len(rows) == 1
            raise _Rollback(elapsed)

    async def median_claim() -> float:
        samples = []
        for _ in range(21):
            try:
                await one_claim()
            except _Rollback as done:
                samples.append(done.elapsed)
        return statistics.median(samples[1:])  # the first one warms the plan cache

    try:
        await _reset(conn)
        await _insert_batch(conn, 1)
        await conn.fetchrow(q("batch_expand"), 3)
        await conn.execute("ANALYZE datesync.task")
        at_0 = await median_claim()
        # Fill the queue behind it with other batches' tasks, each (source, day) queued many times over.
        remaining = sizes.claim_queue
        while remaining > 0:
            days = min(3660, remaining)
            await _insert_batch(conn, days)
            await conn.fetchrow(q("batch_expand"), 3)
            remaining -= days
        await conn.execute("VACUUM ANALYZE datesync.task")
        at_1m = await median_claim()
        return {"claim_ms_at_0": at_0, "claim_ms_at_1m": at_1m}
    finally:
        await _reset(conn)
        await conn.close()


class _Rollback(Exception):
    def __init__(self, elapsed: float) -> None:
        self.elapsed = elapsed


async def measure_drain(scratch: Scratch, dates: int, concurrency: int, repeats: int) -> dict[str, float]:
    """Dates per second from a batch's INSERT to its final state, noop handler, one daemon; and the most
    connections that daemon held meanwhile."""
    conn = await asyncpg.connect(clean(scratch.direct))
    rates: list[float] = []
    peak_connections = 0
    env = {"DATESYNC_HANDLER": "noop", "DATESYNC_CONCURRENCY": str(concurrency)}
    try:
        await _reset(conn)
        async with subprocess_cli("daemon", scratch, env):
            await _daemon_ready(conn)
            for _ in range(repeats):
                batch_id = await _insert_batch(conn, dates)

                # Sampled lazily: the rate comes from the batch's own timestamps (created_at is its insert's
                # transaction, finished_at that of the transaction ending it), so polling less often only spares
                # the two cores the daemon and the database share.
                async def final(batch_id: int = batch_id) -> bool:
                    nonlocal peak_connections
                    peak_connections = max(peak_connections, await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name LIKE 'datesync-daemon%'"))
                    state = await conn.fetchval("SELECT state::text FROM datesync.batch WHERE id = $1", batch_id)
                    return state in ("succeeded", "failed", "cancelled")

                await _wait(final, 600, f"draining {dates} dates", interval=0.1)
                seconds = await conn.fetchval(
                    "SELECT extract(epoch FROM finished_at - created_at) FROM datesync.batch WHERE id = $1", batch_id)
                rates.append(dates / float(seconds))
        return {"rate": statistics.median(rates), "connections": float(peak_connections)}
    finally:
        await _reset(conn)
        await conn.close()


async def measure_scale(scratch: Scratch, sizes: Sizes) -> tuple[dict[str, float], dict[str, float]]:
    """What more daemons on one database add: `scale_dates` dates drained by 4 daemons at concurrency 5 each,
    against 1 daemon at concurrency 20 (the same 20 dates in flight), alternated `repeats` times; and, during
    each drain, the share of the database's active backends that wait for a heavyweight lock. Returns the
    figures and the four daemons' lock waits by wait event (shares of the active backends), for the log."""
    conn = await asyncpg.connect(clean(scratch.direct))
    rates: dict[int, list[float]] = {1: [], 4: []}
    shares: dict[int, list[float]] = {1: [], 4: []}
    xacts: dict[int, list[float]] = {1: [], 4: []}
    ratios: list[float] = []
    waits: dict[str, float] = {}
    try:
        for _ in range(sizes.repeats):
            for daemons in (1, 4):
                rate, samples, xids = await _drain_by(scratch, conn, daemons, 20 // daemons, sizes.scale_dates)
                rates[daemons].append(rate)
                xacts[daemons].append(xids / sizes.scale_dates)
                shares[daemons].append(samples.lock_share)
                if daemons == 4:
                    waits = {event: n / samples.active for event, n in samples.lock_waits.most_common()}
            # Per pair, so that the machine's drift between pairs divides out.
            ratios.append(rates[4][-1] / rates[1][-1])
        return {"drain_4daemons_ratio": statistics.median(ratios), "lock_wait_share": statistics.median(shares[4]),
                "drain_1x20_dates_per_s": statistics.median(rates[1]),
                "drain_4x5_dates_per_s": statistics.median(rates[4]),
                "lock_wait_share_1daemon": statistics.median(shares[1]),
                "xacts_per_date_1x20": statistics.median(xacts[1]),
                "xacts_per_date_4x5": statistics.median(xacts[4])}, waits
    finally:
        await _reset(conn)
        await conn.close()


async def _drain_by(
    scratch: Scratch, conn: asyncpg.Connection, daemons: int, concurrency: int, dates: int
) -> tuple[float, WaitSamples, int]:
    """One batch of `dates` noop dates drained by `daemons` fresh daemon processes: dates per second from its
    INSERT to its final state, pg_stat_activity sampled every 10 ms meanwhile (on its own connection,
    which also looks for the batch's end, so no other probe backend is in the samples), and how many transaction
    ids the server handed out meanwhile (every writing transaction takes one)."""
    env = {"DATESYNC_HANDLER": "noop", "DATESYNC_CONCURRENCY": str(concurrency)}
    await _reset(conn)
    sampler = await asyncpg.connect(clean(scratch.direct))
    try:
        async with _daemons(scratch, env, daemons):
            await _daemon_ready(conn, daemons=daemons)
            first_xid = await conn.fetchval(XID_NEXT)
            batch_id = await _insert_batch(conn, dates)

            async def final() -> bool:
                state = await sampler.fetchval("SELECT state::text FROM datesync.batch WHERE id = $1", batch_id)
                return state in ("succeeded", "failed", "cancelled")

            samples = await asyncio.wait_for(sample_waits(sampler, final), 600)
            xids = int(await conn.fetchval(XID_NEXT)) - int(first_xid)
        seconds = await conn.fetchval(
            "SELECT extract(epoch FROM finished_at - created_at) FROM datesync.batch WHERE id = $1", batch_id)
        return dates / float(seconds), samples, xids
    finally:
        await sampler.close()


async def _data_bytes(conn: asyncpg.Connection) -> dict[str, int]:
    return {r["name"]: int(r["bytes"]) for r in await conn.fetch(q("table_data_bytes_list"), STORAGE_TABLES)}


async def measure_storage(scratch: Scratch, sizes: Sizes) -> dict[str, float]:
    """Bytes on disk per date: the task, event and day rows (with their indexes and TOAST) that one drain of
    `drain_dates` new dates leaves, from the growth of the relations' files (pg_relation_size), divided by the dates.

    File growth rather than a sum of pg_column_size: it counts what the disk holds, tuple headers, line pointers,
    index entries, page and fillfactor slack included. Measured from emptied tables (TRUNCATE), so only a fixed
    page or two per relation (index metapages) is not data, and it is in both readings. `bytes_per_date` is read
    after VACUUM FULL, which leaves the live rows only: what every kept date costs in the long run, since the dead
    versions each claim and finish leave behind become free space that later dates reuse. `_written` is before it."""
    conn = await asyncpg.connect(clean(scratch.direct))
    env = {"DATESYNC_HANDLER": "noop", "DATESYNC_CONCURRENCY": "10", "DATESYNC_RETENTION": "0"}
    dates = sizes.drain_dates
    try:
        await _reset(conn)
        empty = await _data_bytes(conn)
        async with subprocess_cli("daemon", scratch, env):
            await _daemon_ready(conn)
            batch_id = await _insert_batch(conn, dates)

            async def final() -> bool:
                state = await conn.fetchval("SELECT state::text FROM datesync.batch WHERE id = $1", batch_id)
                return state in ("succeeded", "failed", "cancelled")

            await _wait(final, 600, f"draining {dates} dates", interval=0.1)
        written = await _data_bytes(conn)
        await conn.execute("VACUUM FULL datesync.task, datesync.event, datesync.day")
        compact = await _data_bytes(conn)

        def per_date(now: dict[str, int], tables: list[str]) -> float:
            return sum(now[t] - empty[t] for t in tables) / dates

        return {"bytes_per_date": per_date(compact, STORAGE_TABLES),
                "bytes_per_date_written": per_date(written, STORAGE_TABLES),
                "bytes_per_date_kept": per_date(compact, ["day"])}
    finally:
        await _reset(conn)
        await conn.close()


# One job of the reference queue: claim the oldest queued row (SKIP LOCKED), then mark it done, each statement its
# own transaction; the minimum any PostgreSQL job queue does per job.
REFERENCE_SCRIPT = """\
UPDATE datesync_bench.job SET state = 'running' WHERE id = (SELECT id FROM datesync_bench.job WHERE state = 'queued'
  ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id AS job_id \\gset
UPDATE datesync_bench.job SET state = 'done' WHERE id = :job_id;
"""


async def _pgbench(dsn: str, clients: int, seconds: int, script: str) -> float:
    """Run `script` under pgbench with `clients` clients for `seconds`: its transactions per second."""
    pgbench = shutil.which("pgbench") or str(bin_dir() / "pgbench")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "script.sql"
        path.write_text(script)
        proc = await asyncio.create_subprocess_exec(
            pgbench, "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", str(path), dsn,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, errors = await proc.communicate()
    match = re.search(r"tps = ([0-9.]+)", out.decode())
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"bench: pgbench failed: {errors.decode().strip()[-500:]}")
    return float(match.group(1))


async def measure_reference(scratch: Scratch, sizes: Sizes, clients: int = 10) -> dict[str, float]:
    """pgbench's rate for REFERENCE_SCRIPT with `clients` clients against the same server (jobs per second)."""
    jobs = max(50_000, sizes.repeats * sizes.reference_seconds * 15_000)
    conn = await asyncpg.connect(clean(scratch.direct))
    try:
        await conn.execute("CREATE TABLE datesync_bench.job (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                           "state text NOT NULL DEFAULT 'queued')")
        await conn.execute("INSERT INTO datesync_bench.job (state) SELECT 'queued' FROM generate_series(1, $1)", jobs)
        await conn.execute("CREATE INDEX ON datesync_bench.job (id) WHERE state = 'queued'")
        await conn.execute("VACUUM ANALYZE datesync_bench.job")
        rates = [await _pgbench(scratch.direct, clients, sizes.reference_seconds, REFERENCE_SCRIPT)
                 for _ in range(sizes.repeats)]
        return {"ref_pgbench_jobs_per_s": statistics.median(rates)}
    finally:
        await conn.execute("DROP TABLE IF EXISTS datesync_bench.job")
        await conn.close()


async def measure_wake(scratch: Scratch, sizes: Sizes) -> dict[str, float]:
    """INSERT commit to handler start, with the daemon idle between samples."""
    conn = await asyncpg.connect(clean(scratch.direct))
    latencies: list[float] = []
    env = {"DATESYNC_HANDLER": "datesync.bench:stamp", "DATESYNC_POLL_INTERVAL": "600"}
    try:
        await _reset(conn)
        async with subprocess_cli("daemon", scratch, env):
            await _daemon_ready(conn)
            for _ in range(sizes.wake_samples):
                await asyncio.sleep(0.01)  # idle again
                batch_id = await _insert_batch(conn, 1)
                committed = time.time()

                async def started(batch_id: int = batch_id) -> float | None:
                    value = await conn.fetchval(
                        "SELECT w.started FROM datesync_bench.wake w JOIN datesync.task t ON t.id = w.task_id "
                        "WHERE t.batch_id = $1", batch_id)
                    return None if value is None else float(value)

                # The handler stamps its own start; looking only after a while keeps the probe's queries off the
                # two cores while the daemon wakes.
                await asyncio.sleep(0.02)
                latencies.append((await _wait(started, 30, "a wake-up", interval=0.005) - committed) * 1000)
        return {"wake_p50_ms": percentile(latencies, 50), "wake_p99_ms": percentile(latencies, 99)}
    finally:
        await _reset(conn)
        await conn.close()


async def measure_rss(scratch: Scratch, sizes: Sizes) -> dict[str, float]:
    """The daemon's resident memory while `rss_queue` tasks are queued for it (it works through them)."""
    conn = await asyncpg.connect(clean(scratch.direct))
    env = {"DATESYNC_HANDLER": "demo", "DATESYNC_DEMO_DELAY_MS": "500", "DATESYNC_CONCURRENCY": "10"}
    try:
        await _reset(conn)
        async with subprocess_cli("daemon", scratch, env) as proc:
            await _daemon_ready(conn)
            remaining = sizes.rss_queue
            while remaining > 0:
                days = min(3660, remaining)
                await _insert_batch(conn, days)
                remaining -= days
            await _wait(lambda: conn.fetchval("SELECT count(*) > 0 FROM datesync.task WHERE state = 'running'"),
                        60, "the daemon starting work")
            await asyncio.sleep(2)
            rss = psutil.Process(proc.pid).memory_info().rss / 2**20
        return {"daemon_rss_mb": rss}
    finally:
        await _reset(conn)
        await conn.close()


async def measure_post(scratch: Scratch, sizes: Sizes) -> dict[str, float]:
    """POST /sync/batch latency, one web process: `post_clients` keep-alive clients in a closed loop, each posting
    distinct one-day batches (latency, its tail's spread, and the requests per second they got through); then an
    open-loop load of `open_rate` POSTs per second for `open_seconds`, timed from each request's due time."""
    port = _free_port()
    path = "/api/v1/sync-status/sync/batch"
    latencies: list[float] = []
    conn = await asyncpg.connect(clean(scratch.direct))
    clients = [KeepAliveClient(port) for _ in range(sizes.post_clients)]
    try:
        await _reset(conn)
        web = subprocess_cli("web", scratch, {"PORT": str(port)})
        async with web, httpx.AsyncClient(timeout=30) as probe:
            await _wait(lambda: _healthy(probe, f"http://127.0.0.1:{port}/healthz"), 30, "the web server")
            counter = iter(range(sizes.post_requests))

            async def worker(client: KeepAliveClient) -> None:
                for i in counter:
                    day = (YESTERDAY - datetime.timedelta(days=i % 3000)).isoformat()
                    body = {"start_date": day, "end_date": day, "force": i >= 3000}
                    started = time.perf_counter()
                    status = await client.post(path, body)
                    latencies.append((time.perf_counter() - started) * 1000)
                    if status not in (200, 202):  # 200: the same range posted again (a duplicate)
                        raise RuntimeError(f"bench: POST answered {status}")

            started = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(worker(c) for c in clients)), 300)
            rate = sizes.post_requests / (time.perf_counter() - started)
            for client in clients:
                client.close()
            await _reset(conn)
            opened = await open_loop(port, path, _distinct_range, sizes.open_rate, sizes.open_seconds)
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        return {"post_p50_ms": p50, "post_p99_ms": p99, "post_tail_ratio": p99 / p50, "post_requests_per_s": rate,
                "post_open_p50_ms": percentile(opened.latencies_ms, 50),
                "post_open_p99_ms": percentile(opened.latencies_ms, 99), "post_open_rate": float(sizes.open_rate)}
    finally:
        for client in clients:
            client.close()
        await _reset(conn)
        await conn.close()


def _distinct_range(i: int) -> dict[str, Any]:
    """The i-th of distinct ranges of one to a few days: every request inserts a new batch, none is a duplicate
    (which would answer without writing)."""
    end = YESTERDAY - datetime.timedelta(days=i % 3000)
    start = end - datetime.timedelta(days=i // 3000)
    return {"start_date": start.isoformat(), "end_date": end.isoformat()}


async def measure_sse(scratch: Scratch, sizes: Sizes) -> dict[str, float]:
    """Task commit to the event reaching an SSE client on /events (daemon: noop, web: separate process)."""
    port = _free_port()
    conn = await asyncpg.connect(clean(scratch.direct))
    latencies: list[float] = []
    try:
        await _reset(conn)
        async with subprocess_cli("web", scratch, {"PORT": str(port)}), \
                subprocess_cli("daemon", scratch, {"DATESYNC_HANDLER": "noop", "DATESYNC_CONCURRENCY": "2"}):
            await _daemon_ready(conn)
            async with httpx.AsyncClient(timeout=60) as client:
                await _wait(lambda: _healthy(client, f"http://127.0.0.1:{port}/healthz"), 30, "the web server")
                url = f"http://127.0.0.1:{port}/api/v1/sync-status/events"
                async with client.stream("GET", url) as stream:
                    reader = asyncio.create_task(_read_task_events(stream, latencies, sizes.sse_events))
                    await asyncio.sleep(0.3)
                    for _ in range(sizes.sse_events // 2 + 1):
                        await _insert_batch(conn, 1)
                        await asyncio.sleep(0.01)
                    await asyncio.wait_for(reader, 60)
        return {"sse_p50_ms": percentile(latencies, 50), "sse_p99_ms": percentile(latencies, 99)}
    finally:
        await _reset(conn)
        await conn.close()


async def _read_task_events(stream: httpx.Response, latencies: list[float], wanted: int) -> None:
    async for line in stream.aiter_lines():
        if line.startswith("data:"):
            payload = json.loads(line[5:])
            if payload.get("kind") == "task" and payload.get("at"):
                at = datetime.datetime.fromisoformat(payload["at"]).timestamp()
                latencies.append((time.time() - at) * 1000)
                if len(latencies) >= wanted:
                    return


async def _healthy(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the whole run ---------------------------------------------------------------------------------------

async def run(settings: Settings, sizes: Sizes, progress: Callable[[str], None]) -> dict[str, float]:
    """Every measurement, on a scratch database of DATABASE_URL's server (or a fresh embedded one)."""
    async with database(settings, own_embedded=False) as db, scratch_database(db) as scratch:
        results: dict[str, float] = {}
        progress("expand")
        results.update(await measure_expand(scratch, sizes))
        progress(f"claim ({sizes.claim_queue:,} queued)")
        results.update(await measure_claim(scratch, sizes))
        progress(f"drain ({sizes.drain_dates:,} dates, concurrency 10)")
        drain = await measure_drain(scratch, sizes.drain_dates, 10, sizes.repeats)
        results["drain_dates_per_s"] = drain["rate"]
        results["connections"] = drain["connections"]
        progress(f"drain ({sizes.drain_c1_dates:,} dates, concurrency 1)")
        results["drain_c1_dates_per_s"] = (await measure_drain(scratch, sizes.drain_c1_dates, 1, sizes.repeats))["rate"]
        progress(f"scale ({sizes.scale_dates:,} dates: 1 daemon at concurrency 20, then 4 at 5 each, "
                 f"{sizes.repeats} x)")
        scale, waits = await measure_scale(scratch, sizes)
        results.update(scale)
        if waits:
            progress("4 daemons' lock waits, share of active backends: "
                     + ", ".join(f"{event} {share:.1%}" for event, share in waits.items()))
        progress(f"storage ({sizes.drain_dates:,} dates)")
        results.update(await measure_storage(scratch, sizes))
        progress(f"wake ({sizes.wake_samples} samples)")
        results.update(await measure_wake(scratch, sizes))
        progress(f"daemon memory ({sizes.rss_queue:,} queued)")
        results.update(await measure_rss(scratch, sizes))
        progress(f"POST ({sizes.post_clients} clients in a closed loop, then {sizes.open_rate}/s for "
                 f"{sizes.open_seconds:g} s in an open loop)")
        results.update(await measure_post(scratch, sizes))
        progress("SSE")
        results.update(await measure_sse(scratch, sizes))
        progress(f"reference: pgbench claim + finish, 10 clients, {sizes.repeats} x {sizes.reference_seconds} s")
        results.update(await measure_reference(scratch, sizes))
        results["drain_vs_pgbench"] = results["drain_dates_per_s"] / results["ref_pgbench_jobs_per_s"]
        return {k: round(results[k], 3) for k in (*KEYS, *EXTRA_KEYS)}


async def drain_curve(
    settings: Settings, concurrencies: list[int], dates: int, repeats: int
) -> tuple[dict[int, float], float]:
    """Throughput against concurrency, for bench/README.md's plot, and the pgbench reference of the same run."""
    async with database(settings, own_embedded=False) as db, scratch_database(db) as scratch:
        rates = {c: (await measure_drain(scratch, dates, c, repeats))["rate"] for c in concurrencies}
        reference = await measure_reference(scratch, dataclasses.replace(Sizes(), repeats=repeats))
        return rates, reference["ref_pgbench_jobs_per_s"]
