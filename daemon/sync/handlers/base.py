"""What a loaded handler is: the per-date function and its optional set-up and close. Its own module so that the
built-in handlers can name it without importing the loader that imports them."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Awaitable, Callable

import asyncpg

from datesync.daemon.sync.context import SyncContext

HandlerFunc = Callable[[datetime.date, SyncContext], Awaitable[int | None]]
SetupFunc = Callable[[asyncpg.Pool], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Handler:
    """A loaded handler: the per-date function and an optional one-time set-up (tables, clients)."""

    name: str
    sync: HandlerFunc
    setup: SetupFunc | None = None
    close: Callable[[], Awaitable[None]] | None = None
    # True when the handler leaves no session state (SET, temp tables, LISTEN) on ctx.db, so the daemon can
    # skip resetting the connection after each date; user code gets the reset.
    session_safe: bool = False
