"""`datesync run` with LOG_FORMAT=json, a password in DATABASE_URL, an API token and upstream headers: every
line it writes is one JSON object (uvicorn's and asyncpg's included), and no secret appears in any of them,
not in messages, fields or tracebacks, even when a handler puts them all into its exception."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import secrets
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from datesync.daemon.sync.context import SyncContext
from tests.e2e.test_production_shutdown import start_run, wait_ready
from tests.support.daemons import kill, wait_batch_final, wait_exit
from tests.support.server import free_port
from tests.support.waiting import wait_for


async def leaky(day: datetime.date, ctx: SyncContext) -> int:
    """A careless handler: logs its connection string and headers, and raises with every secret it knows."""
    dsn, token, headers = (os.environ["DATABASE_URL"], os.environ["DATESYNC_API_TOKEN"],
                           os.environ["DATESYNC_HTTP_HEADERS"])
    await ctx.db.execute("SELECT 1")
    ctx.log.info("upstream_called", url=dsn, sent=json.loads(headers), note=f"with token {token}")
    if day.day % 3 == 0:
        raise ConnectionError(f"upstream refused us at {dsn} (token {token}, headers {headers})")
    return 1


@pytest.fixture
async def password_dsn(server_dsn: str) -> AsyncIterator[tuple[str, str]]:
    """A database owned by a role with a password, and its DSN with that password in it. (The test server
    trusts local connections, so any password would do: what matters is that it is in the URL.)"""
    role, password = f"ds_{uuid.uuid4().hex[:10]}", f"s3cr3t-{secrets.token_hex(8)}"
    name = f"dslog_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f'CREATE DATABASE "{name}" OWNER {role}')
        parts = urlsplit(server_dsn)
        yield urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname or ''}", path=f"/{name}")), password
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
    finally:
        await admin.close()


def send_garbage(port: int) -> None:
    """A request uvicorn cannot parse: it logs a warning through the uvicorn.error logger, shown as "uvicorn"."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.recv(1024)


async def test_every_line_is_json_and_no_secret_is_ever_logged(password_dsn: tuple[str, str]) -> None:
    dsn, password = password_dsn
    token, upstream = f"tok-{secrets.token_hex(12)}", f"hdr-{secrets.token_hex(12)}"
    env = {"DATESYNC_API_TOKEN": token, "DATESYNC_HTTP_HEADERS": json.dumps({"Authorization": f"Bearer {upstream}"}),
           "DATESYNC_HANDLER": "tests.e2e.test_production_logs:leaky", "DATESYNC_MAX_ATTEMPTS": "2",
           "DATESYNC_CONCURRENCY": "3", "LOG_LEVEL": "debug"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, log = start_run(dsn, port, env)
    conn = None
    try:
        await wait_ready(base, proc, log)
        async with httpx.AsyncClient(base_url=base + "/api/v1/sync-status", timeout=10) as client:
            body = {"start_date": "2025-07-01", "end_date": "2025-07-09"}
            refused = await client.post("/sync/batch", json=body, headers={"Authorization": "Bearer wrong-token"})
            assert refused.status_code == 401
            answer = await client.post("/sync/batch", json=body, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 202, answer.text
            batch_id = answer.json()["data"]["batch_id"]
            await asyncio.to_thread(send_garbage, port)
            conn = await asyncpg.connect(dsn)
            final = await wait_batch_final(conn, batch_id, timeout=30)
            # A dropped connection: the listener's and the pool's errors are logged too.
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()")

            async def reconnected() -> bool:
                return "listener_reconnected" in log.read_text()

            await wait_for(reconnected, timeout=15)
            assert (await client.get(base + "/metrics")).status_code == 200
        kill(proc, signal.SIGTERM)
        code = await wait_exit(proc, 30)
    finally:
        kill(proc, signal.SIGKILL)
        if conn is not None:
            await conn.close()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert (final["succeeded"], final["failed"]) == (6, 3)

    lines = text.splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert all(isinstance(r, dict) and {"event", "level", "timestamp"} <= r.keys() for r in records)
    for secret in (password, token, upstream):
        assert secret not in text
    loggers = {r["logger"] for r in records}
    assert {"uvicorn", "datesync.daemon", "datesync.listener"} <= loggers
    assert any(r["logger"] == "uvicorn" and r["level"] == "warning" for r in records), "the garbage request"
    failed = [r for r in records if r["event"] == "date_sync_failed"]
    assert len(failed) == 3 and all("ConnectionError" in r["exception"] and "***" in r["exception"] for r in failed)
    called = next(r for r in records if r["event"] == "upstream_called")
    assert called["sent"] == {"Authorization": "***"} and called["url"].count("***") == 1
