"""Daemons for tests: in the test's event loop, or as real `datesync daemon` subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import asyncpg

from datesync.daemon.db.connect import create_pool
from datesync.daemon.settings import Settings
from datesync.daemon.sync import handlers
from datesync.daemon.sync.handlers.base import Handler
from datesync.daemon.sync.worker import Daemon

ROOT = Path(__file__).resolve().parents[2]
FAST = Settings(retry_delay=0.05, poll_interval=2, lease=3)


@contextlib.asynccontextmanager
async def running_daemon(
    dsn: str, settings: Settings = FAST, handler: str | Handler = "demo", worker_id: str | None = None,
    grace: float = 2.0,
) -> AsyncIterator[Daemon]:
    """A Daemon running in this loop, for source `default` (a handler by name, or one made by the test); stopped
    (gracefully) on exit."""
    pool = await create_pool(dsn, settings.pool_size, "datesync-test-daemon")
    loaded = handler if isinstance(handler, Handler) else handlers.load(handler)
    daemon = Daemon(settings, pool, {"default": loaded}, dsn, worker_id=worker_id, grace=grace)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.listener.connected.wait(), 10)
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
        await pool.close()


def spawn_daemon(dsn: str, env: Mapping[str, str] | None = None, entry: str = "datesync.cli"
                 ) -> subprocess.Popen[bytes]:
    """A real `datesync daemon` process (its own process group, so a kill takes only it); its log goes to a
    temporary file, read with `log_of(proc)`. `entry`: the module run with -m (tests.faults.clockshim: a wrong
    clock)."""
    full = {
        **os.environ,
        "DATABASE_URL": dsn,
        "DATABASE_DIRECT_URL": dsn,  # never one inherited from the environment: it would LISTEN elsewhere
        "LOG_FORMAT": "json",
        "DATESYNC_RETRY_DELAY": "0.05",
        "DATESYNC_POLL_INTERVAL": "2",
        "DATESYNC_LEASE": "3",
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    log = tempfile.NamedTemporaryFile(prefix="datesync-daemon-", suffix=".log", delete=False)  # noqa: SIM115
    with log:
        proc = subprocess.Popen(
            [sys.executable, "-m", entry, "daemon"], env=full, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )
    _logs[proc.pid] = Path(log.name)
    return proc


_logs: dict[int, Path] = {}


def log_of(proc: subprocess.Popen[bytes]) -> str:
    path = _logs.get(proc.pid)
    return path.read_text(errors="replace") if path and path.exists() else ""


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for the process without blocking the loop."""
    deadline = asyncio.get_running_loop().time() + timeout
    while proc.poll() is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"process {proc.pid} did not exit within {timeout}s")
        await asyncio.sleep(0.05)
    return proc.returncode


async def batch_state(conn: asyncpg.Connection, batch_id: int) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM datesync.batch_progress WHERE batch_id = $1", batch_id)
    assert row is not None
    return row


async def wait_batch_final(conn: asyncpg.Connection, batch_id: int, timeout: float = 30) -> asyncpg.Record:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = await batch_state(conn, batch_id)
        if row["state"] in ("succeeded", "failed", "cancelled"):
            return row
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"batch {batch_id} still {row['state']} after {timeout}s: {dict(row)}")
        await asyncio.sleep(0.05)


async def overlapping_runs(conn: asyncpg.Connection, crashed_by: object = "infinity") -> list[asyncpg.Record]:
    """Pairs of demo runs of one (source, day) whose time spans overlap. A run with no finish time was cut
    short by a crash: it ends at `crashed_by` (the database time when the test saw its process dead), or is
    taken to run forever."""
    return list(await conn.fetch(
        """
        SELECT a.id AS a, b.id AS b, a.day
        FROM datesync_demo.run_log a
        JOIN datesync_demo.run_log b ON a.source = b.source AND a.day = b.day AND a.id < b.id
        WHERE tstzrange(a.started_at, coalesce(a.finished_at, $1::text::timestamptz)) &&
              tstzrange(b.started_at, coalesce(b.finished_at, $1::text::timestamptz))
        """, crashed_by if isinstance(crashed_by, str) else str(crashed_by)
    ))


async def counts_mismatch(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Batches whose live counts (datesync.batch_live: the batch row plus the changes not folded into it yet)
    differ from a count of their tasks (should always be empty)."""
    return list(await conn.fetch(
        """
        SELECT b.id, b.queued, b.running, b.succeeded, b.failed, b.skipped, b.cancelled, c.*
        FROM datesync.batch_live b
        LEFT JOIN LATERAL (
            SELECT count(*) FILTER (WHERE state = 'queued') AS t_queued,
                   count(*) FILTER (WHERE state = 'running') AS t_running,
                   count(*) FILTER (WHERE state = 'succeeded') AS t_succeeded,
                   count(*) FILTER (WHERE state = 'failed') AS t_failed,
                   count(*) FILTER (WHERE state = 'skipped') AS t_skipped,
                   count(*) FILTER (WHERE state = 'cancelled') AS t_cancelled
            FROM datesync.task t WHERE t.batch_id = b.id) c ON true
        WHERE (b.queued, b.running, b.succeeded, b.failed, b.skipped, b.cancelled)
              IS DISTINCT FROM (c.t_queued, c.t_running, c.t_succeeded, c.t_failed, c.t_skipped, c.t_cancelled)
        """
    ))


async def insert(db: asyncpg.Connection, start: str, end: str, force: bool = False) -> int:
    """A batch of the default source over start..end (ISO dates), as a psql INSERT makes it; its id."""
    return int(await db.fetchval(
        "INSERT INTO datesync.batch (start_date, end_date, force) VALUES ($1, $2, $3) RETURNING id",
        datetime.date.fromisoformat(start), datetime.date.fromisoformat(end), force))
