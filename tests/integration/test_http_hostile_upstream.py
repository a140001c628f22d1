"""Issue 15 through the built-in `http` handler: an upstream whose error body holds NUL, control characters and
our own credentials echoed back. Each date fails with a clean, bounded, scrubbed error, and the daemon goes on."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterator

import asyncpg
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from datesync.daemon.db.connect import create_pool
from datesync.daemon.sync import handlers
from datesync.daemon.sync.worker import Daemon
from tests.support.daemons import FAST, counts_mismatch, wait_batch_final
from tests.support.server import free_port

CREDENTIAL = "Basic " + base64.b64encode(b"svc-user:pa55-w0rd-upstream").decode()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _echo(request: Request) -> Response:
    """A broken upstream: a 500 whose body is binary junk and the request headers it received."""
    junk = "boom\x00\x01\x1b[2J " + json.dumps(dict(request.headers)) + " " + "x" * 50_000
    return Response(junk.encode("utf-8", "surrogatepass") + b"\xff\xfe", status_code=500)


@contextlib.asynccontextmanager
async def upstream() -> AsyncIterator[str]:
    port = free_port()
    server = _Server(uvicorn.Config(Starlette(routes=[Route("/{day}", _echo)]), host="127.0.0.1", port=port,
                                    log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_an_upstream_500_with_nul_and_echoed_credentials_fails_the_dates_cleanly(
    dsn: str, db: asyncpg.Connection
) -> None:
    async with upstream() as base:
        env = {"DATESYNC_HTTP_URL": base + "/{date}", "DATESYNC_HTTP_TABLE": "raw.orders",
               "DATESYNC_HTTP_HEADERS": json.dumps({"Authorization": CREDENTIAL})}
        handler = handlers.load("http", env=env)
        settings = FAST.replace(max_attempts=2)
        pool = await create_pool(dsn, settings.pool_size, "datesync-test-daemon")
        daemon = Daemon(settings, pool, {"default": handler}, dsn, grace=2)
        task = asyncio.create_task(daemon.run())
        try:
            batch_id = await db.fetchval("INSERT INTO datesync.batch (start_date, end_date) "
                                         "VALUES ('2025-03-01', '2025-03-03') RETURNING id")
            final = await wait_batch_final(db, batch_id, 20)
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, 30)
            await pool.close()
    assert (final["state"], final["failed"]) == ("failed", 3)
    assert await counts_mismatch(db) == []
    secret = CREDENTIAL.split()[1]
    for row in await db.fetch("SELECT error, attempt FROM datesync.task WHERE batch_id = $1", batch_id):
        error = row["error"]
        assert row["attempt"] == 2 and error.startswith("UpstreamError: GET http://127.0.0.1:")
        assert "answered HTTP 500: boom" in error and "\x00" not in error and "\x1b" not in error
        assert secret not in error and "pa55-w0rd" not in error
        assert len(error.encode()) <= 4096
    events = await db.fetch("SELECT error FROM datesync.event WHERE error IS NOT NULL")
    assert events and all(secret not in e["error"] and "\x00" not in e["error"] for e in events)
