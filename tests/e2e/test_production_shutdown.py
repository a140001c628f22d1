"""SIGTERM to `datesync run` during a running batch, as Render sends it on a deploy or a spin-down: intake stops,
open event streams end with a farewell comment, running dates are handed back after the grace period, the
process exits 0 well inside Render's 30 s, and the next start finishes the batch."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import asyncpg
import httpx

from tests.support.daemons import counts_mismatch, kill, wait_batch_final, wait_exit
from tests.support.server import free_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
GRACE = 2.0


def start_run(dsn: str, port: int, env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    """`datesync run` in its own process group, its log in a temporary file."""
    full = {**os.environ, "DATABASE_URL": dsn, "PORT": str(port), "PYTHONPATH": str(ROOT), "LOG_FORMAT": "json",
            "DATESYNC_RETRY_DELAY": "0.05", "DATESYNC_POLL_INTERVAL": "2", **env}
    full.pop("DATABASE_DIRECT_URL", None)
    with tempfile.NamedTemporaryFile(prefix="datesync-run-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen([sys.executable, "-m", "datesync.cli", "run"], env=full, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    return proc, Path(log.name)


def tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"datesync run exited with {proc.returncode}:\n{tail(log)}")
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(base + "/readyz", timeout=1)).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(ready, timeout=30, interval=0.1)


async def running(db: asyncpg.Connection, batch_id: int) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM datesync.task WHERE batch_id = $1 AND state = 'running'", batch_id))


async def test_sigterm_during_a_batch_exits_0_in_time_closes_streams_and_the_next_start_finishes(
    dsn: str, db: asyncpg.Connection
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"DATESYNC_DEMO_DELAY_MS": "30000", "DATESYNC_CONCURRENCY": "2", "DATESYNC_SHUTDOWN_GRACE": str(GRACE),
           "DATESYNC_LEASE": "60"}
    proc, log = start_run(dsn, port, env)
    try:
        await wait_ready(base, proc, log)
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            answer = await client.post("/api/v1/sync-status/sync/batch",
                                       json={"start_date": "2025-05-01", "end_date": "2025-05-04"})
            assert answer.status_code == 202, answer.text
            batch_id = answer.json()["data"]["batch_id"]

            async def both_running() -> bool:
                return await running(db, batch_id) == 2

            await wait_for(both_running, timeout=10)

            received: list[bytes] = []
            stream_ended = asyncio.Event()
            ended_at: list[float] = []

            async def follow() -> None:
                async with client.stream("GET", f"/api/v1/sync-status/batches/{batch_id}/events") as stream:
                    assert stream.status_code == 200
                    async for chunk in stream.aiter_bytes():
                        received.append(chunk)
                ended_at.append(time.monotonic())
                stream_ended.set()

            reader = asyncio.create_task(follow())

            async def snapshot_received() -> bool:
                return b"event: snapshot" in b"".join(received)

            await wait_for(snapshot_received, timeout=10)

            signalled = time.monotonic()
            kill(proc, signal.SIGTERM)
            await asyncio.wait_for(stream_ended.wait(), 5)
            await reader
            code = await wait_exit(proc, GRACE + 10)
            exited = time.monotonic() - signalled
    finally:
        kill(proc, signal.SIGKILL)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert exited < GRACE + 10
    stream_s = ended_at[0] - signalled
    assert stream_s < 2.0, f"the event stream took {stream_s:.1f} s to end"
    assert b"".join(received).rstrip().endswith(b": the server is shutting down; reconnect with Last-Event-ID")
    rows = await db.fetch("SELECT state::text, lease_owner FROM datesync.task WHERE batch_id = $1", batch_id)
    assert {r["state"] for r in rows} == {"queued"} and all(r["lease_owner"] is None for r in rows)
    assert '"event": "daemon_stopped"' in text

    # The next start (fast dates now) finishes the batch.
    proc, log = start_run(dsn, port, {**env, "DATESYNC_DEMO_DELAY_MS": "10"})
    try:
        final = await wait_batch_final(db, batch_id, timeout=30)
    finally:
        kill(proc, signal.SIGTERM)
        assert await wait_exit(proc, GRACE + 10) == 0, log.read_text()[-3000:]
    assert (final["state"], final["succeeded"]) == ("succeeded", 4)
    assert await counts_mismatch(db) == []



async def test_sigterm_lets_running_dates_finish_within_the_grace_and_claims_nothing_new(
    dsn: str, db: asyncpg.Connection
) -> None:
    port = free_port()
    env = {"DATESYNC_DEMO_DELAY_MS": "1500", "DATESYNC_CONCURRENCY": "2", "DATESYNC_SHUTDOWN_GRACE": "8"}
    proc, log = start_run(dsn, port, env)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc, log)
        batch_id = await db.fetchval(
            "INSERT INTO datesync.batch (start_date, end_date) VALUES ('2025-05-10', '2025-05-12') RETURNING id")

        async def both_running() -> bool:
            return await running(db, batch_id) == 2

        await wait_for(both_running, timeout=10)
        signalled = time.monotonic()
        kill(proc, signal.SIGTERM)
        code = await wait_exit(proc, 15)
        exited = time.monotonic() - signalled
    finally:
        kill(proc, signal.SIGKILL)
    assert code == 0, tail(log)
    assert exited < 8, f"took {exited:.1f} s: the dates finish in 1.5 s, the grace is not waited out"
    states = await db.fetch("SELECT state::text, count(*) FROM datesync.task WHERE batch_id = $1 GROUP BY 1",
                            batch_id)
    assert dict(states) == {"succeeded": 2, "queued": 1}  # finished, and nothing new claimed after SIGTERM
