"""A real uvicorn server (and optionally a daemon) in the test's event loop, on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn

from datesync.daemon.db.connect import create_pool
from datesync.daemon.settings import Settings
from datesync.daemon.sync import handlers
from datesync.daemon.sync.worker import Daemon
from datesync.web.app import create_app
from datesync.web.serving import uvicorn_config
from datesync.web.state import AppState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclasses.dataclass
class Live:
    base_url: str
    api: str  # base_url + the API prefix
    state: AppState
    daemon: Daemon | None


@contextlib.asynccontextmanager
async def live_server(
    dsn: str, settings: Settings | None = None, *, daemon: bool = False, handler: str = "demo"
) -> AsyncIterator[Live]:
    """Serve the app on 127.0.0.1:<free port> against `dsn`; with `daemon`, run one in the same loop, as
    `datesync run` does."""
    port = free_port()
    settings = (settings or Settings(retry_delay=0.05, poll_interval=5)).replace(
        database_url=dsn, port=port, host="127.0.0.1")
    pool = await create_pool(dsn, settings.pool_size, "datesync-test")
    worker = Daemon(settings, pool, {"default": handlers.load(handler)}, dsn, grace=2) if daemon else None
    state = AppState(settings=settings, pool=pool, direct_dsn=dsn,
                     wake_daemon=worker.wake if worker else None,
                     daemon_listener_connected=(lambda: worker.listener_connected) if worker else None)
    # The production configuration (timeouts, connection cap, proxy trust), with a quicker shutdown.
    server = _Server(uvicorn_config(create_app(state), settings, timeout_graceful_shutdown=2))
    tasks = [asyncio.create_task(server.serve())]
    if worker:
        tasks.append(asyncio.create_task(worker.run()))
    try:
        while not server.started:
            if tasks[0].done():
                tasks[0].result()
            await asyncio.sleep(0.01)
        base = f"http://127.0.0.1:{port}"
        yield Live(base, base + "/api/v1/sync-status", state, worker)
    finally:
        state.stopping.set()
        server.should_exit = True
        if worker:
            worker.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
        await pool.close()
