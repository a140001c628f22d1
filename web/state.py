"""What the web app is given by the process that serves it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import asyncpg

from datesync.daemon.settings import Settings


@dataclasses.dataclass
class AppState:
    settings: Settings
    pool: asyncpg.Pool
    direct_dsn: str
    # Set when a daemon runs in this process (`datesync run`): wake it right after a commit, and report its
    # listener in /readyz.
    wake_daemon: Callable[[], None] | None = None
    daemon_listener_connected: Callable[[], bool] | None = None
    # Set by the process when it starts shutting down, before the web server stops accepting: open event streams
    # end at once, with a farewell, instead of holding the server's graceful shutdown until its timeout.
    stopping: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
