"""Composing a process: the daemon, the web server, or both in one event loop (`datesync run`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Coroutine, Iterator
from typing import Any

import structlog
import uvicorn

from datesync import listen
from datesync.daemon.db.connect import create_pool
from datesync.daemon.errors import DatesyncError
from datesync.daemon.keepawake import KeepAwake
from datesync.daemon.retention import Retention
from datesync.daemon.runtime import (
    Database,
    check_endpoints,
    check_queries_endpoint,
    database,
    prepare,
    refuse_pooled_direct,
)
from datesync.daemon.settings import Settings
from datesync.daemon.sync import handlers
from datesync.daemon.sync.schedule import Schedule
from datesync.daemon.sync.worker import Daemon, new_worker_id
from datesync.web.app import create_app
from datesync.web.serving import uvicorn_config
from datesync.web.state import AppState

log = structlog.get_logger("datesync.service")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: this process decides how to shut down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_web(server: _Server, sock: socket.socket) -> None:
    # The port was bound at start (datesync/listen.py); uvicorn may still sys.exit(1) on a failed start.
    try:
        await server.serve(sockets=[sock])
    except SystemExit:
        raise DatesyncError("the web server could not start (see the log above)") from None


def sources_for(settings: Settings) -> dict[str, str]:
    """Configured sources and their handler specs: `default` (DATESYNC_HANDLER) and DATESYNC_SOURCES."""
    return {name: spec.handler for name, spec in settings.all_sources.items()}


def source_caps(settings: Settings) -> dict[str, int]:
    """Per-source limits on dates run at once in one daemon (`;concurrency=N` in DATESYNC_SOURCES)."""
    return {name: spec.concurrency for name, spec in settings.all_sources.items() if spec.concurrency}


async def serve(settings: Settings, *, web: bool, daemon: bool) -> None:
    """Run until SIGTERM, SIGINT or SIGHUP, then shut down gracefully: stop intake, drain or hand back, exit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: closing the terminal must not kill us at once and leave the embedded server running.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    # The port first: a taken one is found before the embedded server starts or any migration runs.
    sock = listen.bind(settings) if web else None
    try:
        sources = sources_for(settings)
        loaded = {name: handlers.load(spec, name) for name, spec in sources.items()} if daemon else {}
        async with database(settings) as db:

            async def start() -> None:
                # Every URL checked before migrating: a pooler given as the direct URL (no network needed), then
                # DATABASE_URL where it is not the URL the migrations use.
                refuse_pooled_direct(db, settings)
                await check_queries_endpoint(db, settings)
                await prepare(db, settings, sources, runs_sources=daemon)

            if not await _unless_stopped(start(), stop):
                return
            check_endpoints(db, settings)  # said once both endpoints answered
            await _serve_with(db, settings, loaded, stop, web=web, sock=sock)
    finally:
        if sock is not None:
            sock.close()


async def _unless_stopped(step: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run a start-up step; False when a signal came first. The step is cancelled then, so a SIGTERM or SIGHUP
    during a minute's wait for the database stops the process at once (the embedded server included)."""
    task = asyncio.ensure_future(step)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    log.info("stopped_during_startup")
    return False


async def _serve_with(
    db: Database, settings: Settings, loaded: dict[str, handlers.Handler], stop: asyncio.Event, *, web: bool,
    sock: socket.socket | None = None,
) -> None:
    role = "datesync" if web and loaded else ("datesync-web" if web else "datesync-daemon")
    pool = await create_pool(db.dsn, settings.pool_size, role)
    worker: Daemon | None = None
    tasks: list[asyncio.Task[None]] = []
    server: _Server | None = None
    try:
        if loaded:
            # Set up (tables, clients, SQL checks) before serving anything: a bad handler stops the start.
            ready = await handlers.set_up(loaded, pool)
            worker_id = new_worker_id()
            side_tasks = []
            if settings.keepawake:
                if web and settings.keepawake_url:
                    # `worker` is bound just below; the pinger only runs once the daemon does.
                    awake = KeepAwake(lambda: worker is not None and worker.busy, settings.keepawake_url)
                    side_tasks.append(awake.keep_awake)
                else:
                    log.warning("keepawake_off", reason="needs the web server in this process and "
                                "DATESYNC_KEEPAWAKE_URL or RENDER_EXTERNAL_URL")
            if settings.schedule is not None:
                schedule = Schedule(pool, list(ready), settings.schedule, settings.tz,
                                    lookback=settings.schedule_lookback, worker=worker_id)
                side_tasks.append(schedule.daily_schedule)
            if settings.retention_days:
                retention = Retention(pool, settings.retention_days, may_sleep=settings.lets_database_sleep,
                                      awake=lambda: worker is not None and worker.busy)
                side_tasks.append(retention.prune_batches)
            worker = Daemon(settings, pool, ready, db.direct_dsn, grace=settings.shutdown_grace,
                            source_caps=source_caps(settings), side_tasks=side_tasks, worker_id=worker_id,
                            pooled=db.pooled)
            tasks.append(asyncio.create_task(worker.run(), name="daemon"))
        if web:
            state = AppState(
                settings=settings, pool=pool, direct_dsn=db.direct_dsn,
                wake_daemon=worker.wake if worker else None,
                daemon_listener_connected=(lambda: worker.listener_connected) if worker else None,
            )
            config = uvicorn_config(create_app(state), settings, timeout_graceful_shutdown=5)
            server = _Server(config)
            assert sock is not None
            tasks.append(asyncio.create_task(_serve_web(server, sock), name="web"))
            log.info("web_listening", url=f"http://{settings.host}:{settings.port}")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        # Anything but a signal ending first is a failure: stop the rest and exit non-zero.
        failed = [t for t in done if t is not stopper]
        for task in failed:
            error = task.exception()
            log.error("service_task_stopped", task=task.get_name(), exc_info=error)
        stopper.cancel()
        log.info("shutting_down")
        if server is not None:
            state.stopping.set()  # event streams say farewell now, not after uvicorn's graceful timeout
            server.should_exit = True
        if worker is not None:
            worker.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        if failed:
            names = ", ".join(t.get_name() for t in failed)
            raise DatesyncError(f"the {names} part of this process stopped unexpectedly; see the log above")
    finally:
        await pool.close()
