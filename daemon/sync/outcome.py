"""What became of one attempt, and the retry policy that turns a failure into a retry or a final failure."""

from __future__ import annotations

import dataclasses
import enum
import random

from datesync.daemon.logs import scrub_text


class Kind(enum.StrEnum):
    """How the attempt ended, as far as the task row is concerned."""

    SUCCEEDED = "succeeded"  # the handler returned
    FAILED = "failed"  # it raised or timed out; becomes a retry (queued) or a final failure
    CANCELLED = "cancelled"  # its batch was cancelled
    RELEASED = "released"  # the daemon is shutting down: hand the task back, the attempt does not count
    LOST = "lost"  # the lease was taken over: the row is someone else's now, write nothing


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    task_id: int
    batch_id: int
    kind: Kind
    attempt: int = 0  # the attempt this outcome belongs to: it fences a stale run's write
    error: str | None = None
    rows: int | None = None
    retry_in: float | None = None  # set for a failure with attempts left

    @property
    def row_state(self) -> str:
        """The task state to write for a finishing outcome."""
        if self.kind is Kind.FAILED:
            return "queued" if self.retry_in is not None else "failed"
        return self.kind.value


def retry_delay(base: float, attempt: int) -> float:
    """Seconds before retrying after failed attempt number `attempt`: base doubling per attempt, ±20% jitter so
    that dates failing together do not retry together."""
    return base * (2 ** (attempt - 1)) * random.uniform(0.8, 1.2)


def error_text(exc: BaseException, limit: int = 2000) -> str:
    """One line for the task table: the exception's type and message, no traceback (that goes to the log)."""
    message = str(exc).strip() or repr(exc)
    # The text is stored and shown (API, page, event stream): no secret may ride along in it.
    text = scrub_text(f"{type(exc).__name__}: {message}")
    return text if len(text) <= limit else text[: limit - 1] + "…"
