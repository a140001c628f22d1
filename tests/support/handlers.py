"""Custom handlers used by tests (loaded as `tests.support.handlers:NAME`)."""

from __future__ import annotations

import asyncio
import datetime

from daemon.sync.context import SyncContext


async def hang(day: datetime.date, ctx: SyncContext) -> int:
    await asyncio.sleep(3600)
    return 0


async def wrong_type(day: datetime.date, ctx: SyncContext) -> str:
    return "forty-two"


def blocking(day: datetime.date, ctx: SyncContext) -> int:
    """A plain (sync) function: run in a thread."""
    return 7
