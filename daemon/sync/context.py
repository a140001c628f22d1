"""What a handler receives besides the date."""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Awaitable, Callable
from typing import Any

from datesync.daemon.db.connect import Conn
from datesync.daemon.sync.clean import progress_note, progress_value

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
        # What the handler passes is cleaned here, at the boundary: the event's jsonb refuses NUL and lone
        # surrogates, and JSON readers lose precision past 2**53.
        clean_done, clean_total = progress_value(done), progress_value(total)
        last = clean_done is not None and clean_total is not None and clean_done >= clean_total
        now = time.monotonic()
        if self._write_progress is None or (now - self._last_progress < 1.0 and not last):
            return
        self._last_progress = now
        await self._write_progress(clean_done or 0, clean_total or 0, progress_note(note))
