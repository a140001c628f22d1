"""`datesync run` with DATABASE_URL through a real PgBouncer in transaction mode and DATABASE_DIRECT_URL straight
to PostgreSQL: the shape of a self-hosted PgBouncer, Supabase's pooler on 6543 or RDS Proxy, recognised without
Neon's `-pooler` host name. Every transaction may land on another server connection, so a named prepared
statement or any session state on the pool breaks here (it did: every date failed with `prepared statement
"__asyncpg_stmt_…" does not exist`, and POSTs answered 500)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx

from tests.e2e.test_events_stream import Msg, events_of, read_stream
from tests.faults.procs import ROOT, Proc, spawn
from tests.support.server import free_port
from tests.support.waiting import wait_for

BASE = "/api/v1/sync-status"
DAY = datetime.timedelta(days=1)
YESTERDAY = datetime.date.today() - 2 * DAY  # before today in every time zone


@contextlib.asynccontextmanager
async def pooled_run(pooled: str, direct: str, **env: str) -> AsyncIterator[tuple[httpx.AsyncClient, Proc]]:
    """`datesync run` (demo handler, fast retries) with both URLs; a client on its API once /readyz says ready."""
    port = free_port()
    proc = spawn(["datesync.cli", "run"], {
        "DATABASE_URL": pooled, "DATABASE_DIRECT_URL": direct, "PORT": str(port), "HOST": "127.0.0.1",
        "LOG_FORMAT": "json", "DATESYNC_RETRY_DELAY": "0.05", "DATESYNC_POLL_INTERVAL": "2",
        "DATESYNC_DEMO_DELAY_MS": "50", "DATESYNC_SHUTDOWN_GRACE": "2", **env}, "run")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            async def ready() -> bool:
                assert proc.alive(), proc.log_text()[-3000:]
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get("/readyz")).status_code == 200
                return False

            await wait_for(ready, 30)
            yield client, proc
    finally:
        proc.signal(15)
        await proc.wait(20)
        log = proc.log_text()
        proc.close()
    assert "__asyncpg_stmt_" not in log, log[-3000:]


async def _wait_final(client: httpx.AsyncClient, batch_id: int, timeout: float = 30) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        """The batch with its `tasks`, once it has ended."""
        data = (await client.get(f"{BASE}/batches/{batch_id}")).json()["data"]
        batch: dict[str, Any] = {**data["batch"], "tasks": data["tasks"]}
        return batch if batch["state"] in ("succeeded", "failed", "cancelled") else None

    return await wait_for(final, timeout, interval=0.1)


def _endpoints_line(log: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in log.splitlines() if '"database_endpoints"' in line]
    assert lines, log[-3000:]
    return lines[0]


async def test_api_engine_and_event_stream_through_pgbouncer(pooled_dsn: str, dsn: str) -> None:
    async with pooled_run(pooled_dsn, dsn, DATESYNC_CONCURRENCY="2") as (client, proc):
        opened = asyncio.Event()
        stream = asyncio.create_task(read_stream(client, f"{BASE}/events", opened=opened, stop=5 * 2 + 2))
        try:
            await _run_one_batch(client, stream, opened)
        finally:
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)
        endpoints = _endpoints_line(proc.log_text())
    assert endpoints["pooled"] is True and endpoints["statement_cache"].startswith("off")


async def _run_one_batch(client: httpx.AsyncClient, stream: asyncio.Task[list[Msg]], opened: asyncio.Event) -> None:
    """POST (twice), follow the batch to its end, list it, and check what the event streams carried."""
    await asyncio.wait_for(opened.wait(), 10)
    start = YESTERDAY - 4 * DAY
    posted = await client.post(f"{BASE}/sync/batch",
                               json={"start_date": start.isoformat(), "end_date": YESTERDAY.isoformat()})
    assert posted.status_code == 202, posted.text
    batch_id = posted.json()["data"]["batch_id"]
    again = await client.post(f"{BASE}/sync/batch",
                              json={"start_date": start.isoformat(), "end_date": YESTERDAY.isoformat()})
    assert again.status_code in (200, 202), again.text  # deduplicated while it runs, or a new one after

    detail = await _wait_final(client, batch_id)
    assert detail["state"] == "succeeded", detail
    assert [t["state"] for t in detail["tasks"]] == ["succeeded"] * 5
    listed = (await client.get(f"{BASE}/batches")).json()["data"]
    assert batch_id in [b["id"] for b in listed["batches"]]
    summary = await client.get(f"{BASE}/", params={"from": start.isoformat(), "to": YESTERDAY.isoformat()})
    assert summary.status_code == 200, summary.text

    events = events_of(await asyncio.wait_for(stream, 30))
    mine = [(m.event, m.data["state"]) for m in events if m.data["batch_id"] == batch_id]
    assert ("batch", "queued") in mine and ("task", "running") in mine and ("task", "succeeded") in mine
    # The stream of the ended batch: its snapshot (read through the pooler), then the end.
    replay = await read_stream(client, f"{BASE}/batches/{batch_id}/events")
    assert [m.data["batch"]["state"] for m in replay if m.event == "snapshot"] == ["succeeded"]


async def test_cancel_and_retry_through_pgbouncer(pooled_dsn: str, dsn: str) -> None:
    failing = YESTERDAY - 1 * DAY
    env = {"DATESYNC_MAX_ATTEMPTS": "1", "DATESYNC_DEMO_FAIL_DATES": failing.isoformat(),
           "DATESYNC_CONCURRENCY": "2"}
    async with pooled_run(pooled_dsn, dsn, **env) as (client, _proc):
        posted = await client.post(f"{BASE}/sync/batch", json={
            "start_date": (YESTERDAY - 2 * DAY).isoformat(), "end_date": YESTERDAY.isoformat()})
        assert posted.status_code == 202, posted.text
        batch_id = posted.json()["data"]["batch_id"]
        detail = await _wait_final(client, batch_id)
        assert detail["state"] == "failed" and detail["failed"] == 1, detail

        retried = await client.post(f"{BASE}/batches/{batch_id}/retry")
        assert retried.status_code == 202, retried.text
        assert retried.json()["data"]["requeued"] == 1
        conn = await asyncpg.connect(dsn)
        try:
            runs = "SELECT count(*) FROM datesync_demo.run_log WHERE day = $1"
            await wait_for(lambda: conn.fetchval(runs + " HAVING count(*) >= 2", failing), 20)
        finally:
            await conn.close()
        detail = await _wait_final(client, batch_id)
        assert detail["state"] == "failed" and detail["succeeded"] == 2, detail

        # A long batch, cancelled while it runs.
        long = await client.post(f"{BASE}/sync/batch", json={
            "start_date": (YESTERDAY - 400 * DAY).isoformat(), "end_date": (YESTERDAY - 10 * DAY).isoformat()})
        assert long.status_code == 202, long.text
        long_id = long.json()["data"]["batch_id"]
        cancelled = await client.post(f"{BASE}/batches/{long_id}/cancel")
        assert cancelled.status_code in (200, 202), cancelled.text
        detail = await _wait_final(client, long_id)
        assert detail["state"] == "cancelled", detail


async def test_the_schedule_through_pgbouncer(pooled_dsn: str, dsn: str) -> None:
    # Any HH:MM: at start the daemon serves the most recent slot, so yesterday's batch is requested at once.
    async with pooled_run(pooled_dsn, dsn, DATESYNC_SCHEDULE="00:00") as (client, _proc):
        async def scheduled() -> list[dict[str, Any]]:
            batches: list[dict[str, Any]] = (await client.get(f"{BASE}/batches")).json()["data"]["batches"]
            return batches

        batch = (await wait_for(scheduled, 20))[0]
        detail = await _wait_final(client, batch["id"])
        assert detail["state"] == "succeeded", detail
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM datesync.schedule_run") == 1
    finally:
        await conn.close()


def test_cli_commands_through_pgbouncer(pooled_dsn: str, dsn: str) -> None:
    env = {"DATABASE_URL": pooled_dsn, "DATABASE_DIRECT_URL": dsn, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "json"}
    full = {**os.environ, **env}
    day = YESTERDAY.isoformat()
    for args in (["batch", day, day], ["status", "--from", day, "--to", day], ["cancel", "1"]):
        done = subprocess.run([sys.executable, "-m", "datesync.cli", *args], env=full, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (args, done.stdout, done.stderr[-3000:])


async def test_a_custom_handler_within_the_rules_for_poolers_runs_through_pgbouncer(pooled_dsn: str, dsn: str) -> None:
    # A custom handler is not session-safe: directly, the daemon resets its connection after each date; through a
    # pooler it does not (the reset would reach another server connection), so what the handler may do is the
    # README's list: SET LOCAL, transaction-level locks, prepared statements (unnamed, parsed again).
    env = {"DATESYNC_HANDLER": "tests.support.handlers:pooler_safe", "DATESYNC_CONCURRENCY": "3"}
    async with pooled_run(pooled_dsn, dsn, **env) as (client, _proc):
        posted = await client.post(f"{BASE}/sync/batch", json={
            "start_date": (YESTERDAY - 11 * DAY).isoformat(), "end_date": YESTERDAY.isoformat()})
        assert posted.status_code == 202, posted.text
        detail = await _wait_final(client, posted.json()["data"]["batch_id"])
    assert detail["state"] == "succeeded" and detail["succeeded"] == 12, detail
