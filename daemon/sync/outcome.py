"""What became of one attempt, the retry policy that turns a failure into a retry or a final failure, and what
to write when the database refuses an outcome."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator
from typing import TYPE_CHECKING

import asyncpg

# The text boundary lives in clean.py; error_text stays importable from here for older callers.
from datesync.daemon.backoff import Backoff
from datesync.daemon.sync.clean import clean_text
from datesync.daemon.sync.clean import error_text as error_text

if TYPE_CHECKING:
    from datesync.daemon.settings import Settings
    from datesync.daemon.sync.store import Claimed


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
    return Backoff(base).delay(attempt)


# SQLSTATE classes of a write that may succeed if simply tried again: connection exception, transaction rollback
# (serialization, deadlock), insufficient resources, object not in prerequisite state (lock not available),
# operator intervention (shutdown, statement cancelled), system error (I/O).
_TRANSIENT_CLASSES = ("08", "40", "53", "55", "57", "58")
UNRECORDABLE = "the outcome could not be recorded"


def retry_may_cure(exc: BaseException) -> bool:
    """Whether a failed write is worth repeating as it is. A refusal of the data itself (a data exception, an
    argument asyncpg cannot encode, a constraint) fails the same way every time."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        return True  # the claim in the same statement met another daemon's claim of the date
    if isinstance(exc, asyncpg.DataError):  # client side: an argument that cannot be encoded
        return False
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in _TRANSIENT_CLASSES
    return True  # the connection: OSError, InterfaceError, timeouts


def fallbacks(outcome: Outcome, refusal: BaseException, claimed: Claimed | None, settings: Settings
              ) -> Iterator[Outcome]:
    """What to try writing, in turn, for an outcome in a write the database refused: the outcome alone; with its
    text in plain ASCII and no row count; then a bare failed attempt that says why."""
    yield outcome
    if outcome.kind in (Kind.RELEASED, Kind.LOST):
        return
    reason = f"{UNRECORDABLE} ({type(refusal).__name__} {getattr(refusal, 'sqlstate', None) or ''})".replace(" )", ")")
    if outcome.error is not None or outcome.rows is not None:
        # Cleaned again (the refusal may be a text that escaped the boundary) and in ASCII, which every server
        # encoding takes; a success keeps its state and loses only its row count.
        error = None if outcome.error is None else clean_text(outcome.error).encode("ascii", "backslashreplace")
        yield dataclasses.replace(outcome, error=None if error is None else error.decode("ascii"), rows=None)
    retry_in = None
    if claimed is not None and claimed.attempt < claimed.max_attempts:
        retry_in = retry_delay(settings.retry_delay, claimed.attempt)
    yield Outcome(outcome.task_id, outcome.batch_id, Kind.FAILED, outcome.attempt, error=reason, retry_in=retry_in)
