"""Composing a process: the daemon, the web server, or both in one event loop (`datesync run`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import structlog
import uvicorn

from daemon.db.connect import create_pool
from daemon.runtime import Database, database, prepare
from daemon.settings import Settings
from daemon.sync import handlers
from daemon.sync.worker import Daemon
from web.app import create_app
from web.state import AppState

log = structlog.get_logger("datesync.service")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: this process decides how to shut down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def sources_for(settings: Settings) -> dict[str, str]:
    """Configured sources and their handler specs."""
    return {"default": settings.handler}


async def serve(settings: Settings, *, web: bool, daemon: bool) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully: stop intake, drain or hand back, exit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sources = sources_for(settings)
    loaded = {name: handlers.load(spec) for name, spec in sources.items()} if daemon else {}
    async with database(settings) as db:
        await prepare(db, settings, sources)
        await _serve_with(db, settings, loaded, stop, web=web)


async def _serve_with(
    db: Database, settings: Settings, loaded: dict[str, handlers.Handler], stop: asyncio.Event, *, web: bool
) -> None:
    pool = await create_pool(db.dsn, settings.pool_size, "datesync")
    worker: Daemon | None = None
    tasks: list[asyncio.Task[None]] = []
    server: _Server | None = None
    try:
        if loaded:
            worker = Daemon(settings, pool, loaded, db.direct_dsn)
            tasks.append(asyncio.create_task(worker.run(), name="daemon"))
        if web:
            state = AppState(
                settings=settings, pool=pool, direct_dsn=db.direct_dsn,
                wake_daemon=worker.wake if worker else None,
                daemon_listener_connected=(lambda: worker.listener_connected) if worker else None,
            )
            config = uvicorn.Config(
                create_app(state), host=settings.host, port=settings.port, log_config=None,
                timeout_graceful_shutdown=5, lifespan="on", proxy_headers=True, forwarded_allow_ips="*",
            )
            server = _Server(config)
            tasks.append(asyncio.create_task(server.serve(), name="web"))
            log.info("web_listening", url=f"http://{settings.host}:{settings.port}")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("service_task_crashed", task=task.get_name(), exc_info=task.exception())
        stopper.cancel()
        log.info("shutting_down")
        if server is not None:
            server.should_exit = True
        if worker is not None:
            worker.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await pool.close()
