"""What a handler receives besides the date."""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Awaitable, Callable
from typing import Any

from datesync.daemon.db.connect import Conn

ProgressWriter = Callable[[int, int, str | None], Awaitable[None]]


@dataclasses.dataclass
class SyncContext:
    """The handler's view of one attempt at one date.

    `db` is a pooled asyncpg connection held for the attempt; `log` is bound with batch_id, day and attempt.
    """

    day: datetime.date
    db: Conn
    log: Any
    attempt: int
    batch_id: int
    source: str
    task_id: int
    worker: str
    _write_progress: ProgressWriter | None = dataclasses.field(default=None, repr=False)
    _last_progress: float = dataclasses.field(default=0.0, repr=False)

    async def progress(self, done: int, total: int, note: str | None = None) -> None:
        """Report progress within a long date; throttled to one event a second (the last one always lands)."""
        now = time.monotonic()
        if self._write_progress is None or (now - self._last_progress < 1.0 and done < total):
            return
        self._last_progress = now
        await self._write_progress(done, total, note)
