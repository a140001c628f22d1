"""`noop`: returns at once and writes nothing; for measuring the engine's own overhead."""

from __future__ import annotations

import datetime

from datesync.daemon.sync.context import SyncContext
from datesync.daemon.sync.handlers.base import Handler


async def sync(day: datetime.date, ctx: SyncContext) -> int:
    return 0


def handler() -> Handler:
    return Handler(name="noop", sync=sync, session_safe=True)
