"""A dedicated LISTEN connection that notices when it drops, reconnects with capped backoff and re-LISTENs.

A notification is only a hint: after every (re)connect `on_connect` runs so that the owner rescans the tables
for anything it missed while the connection was down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import structlog

from datesync.daemon import metrics
from datesync.daemon.backoff import Backoff
from datesync.daemon.db import dsn as dsns
from datesync.daemon.db.connect import DB_ERRORS, connect
from datesync.daemon.errors import SettingsError

log = structlog.get_logger("datesync.listener")

NotifyCallback = Callable[[str, str], None]
ConnectCallback = Callable[[], Awaitable[None]]


class Listener:
    """LISTEN on `channels` through `dsn` until stopped; survives drops of the connection."""

    def __init__(
        self,
        dsn: str,
        channels: Sequence[str],
        on_notify: NotifyCallback,
        on_connect: ConnectCallback | None = None,
        *,
        application_name: str = "datesync-listener",
        ping_interval: float = 15.0,
        max_backoff: float = 30.0,
        idle: Callable[[], bool] | None = None,
    ) -> None:
        """`idle`, when given and true, lets the database sleep (Neon suspends a compute after 5 minutes
        without queries; an idle LISTEN connection does not count, our pings would): no pings, and after a
        drop no reconnect until resume() is called (the owner's next poll or wake-up)."""
        if dsns.is_pooler(dsn):
            raise SettingsError(
                "LISTEN needs a direct connection, but the URL is a Neon -pooler endpoint; set "
                "DATABASE_DIRECT_URL to the direct endpoint"
            )
        self.dsn = dsn
        self.channels = tuple(channels)
        self.on_notify = on_notify
        self.on_connect = on_connect
        self.application_name = application_name
        self.ping_interval = ping_interval
        self.max_backoff = max_backoff
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.backend_pid: int | None = None
        self.idle = idle or (lambda: False)
        self._resume = asyncio.Event()

    def resume(self) -> None:
        """Reconnect now if the connection was dropped while idle."""
        self._resume.set()

    async def run(self) -> None:
        """Hold the connection; return only when cancelled."""
        backoff = Backoff(0.25, cap=self.max_backoff, jitter=(0.5, 1.0))
        failures = 0
        down_since: float | None = None
        while True:
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                conn = await connect(self.dsn, self.application_name)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                for channel in self.channels:
                    await conn.add_listener(channel, self._dispatch)
                self.backend_pid = conn.get_server_pid()
                if down_since is not None:
                    self.reconnects += 1
                    metrics.LISTENER_RECONNECTS.labels(self.application_name).inc()
                    log.info("listener_reconnected", attempts=failures,
                             down_s=round(time.monotonic() - down_since, 2))
                else:
                    log.info("listener_connected", channels=list(self.channels))
                failures, down_since = 0, None
                self.connected.set()
                if self.on_connect is not None:
                    await self.on_connect()
                await self._watch(conn, lost)
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                failures += 1
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("listener_connection_lost", error=f"{type(exc).__name__}: {exc}")
                else:
                    log.debug("listener_reconnect_failed", attempt=failures, error=str(exc))
            finally:
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            if down_since is None:
                down_since = time.monotonic()
                log.warning("listener_connection_lost", error="connection closed")
            if self.idle():
                # Reconnecting now would wake a suspended compute for nothing; wait for real activity.
                log.info("listener_waiting_for_activity")
                self._resume.clear()
                await self._resume.wait()
                failures = 0
                continue
            await asyncio.sleep(backoff.delay(failures))

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        # The termination listener sees a closed socket at once; the ping finds a half-open one (not while
        # idle: a ping would keep the database awake).
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), self.ping_interval)
            except TimeoutError:
                if not self.idle():
                    await asyncio.wait_for(conn.execute("SELECT 1"), timeout=10)

    def _dispatch(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        self.on_notify(channel, str(payload))
