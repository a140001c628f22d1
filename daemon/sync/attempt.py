"""One call of a handler, run so that the handler cannot hold the daemon.

The handler runs in a task of its own; the date's task waits for it with a bound: until it ends, its timeout
passes, or the date is stopped (cancel, shutdown, lost lease). A handler that was told to stop gets UNWIND_S to
unwind (roll back, close a client); one that ignores the cancellation is then stopped by force (its coroutine is
closed) or, if even that fails, left behind, counted in `datesync_handlers_abandoned_total`. Either way the
date's outcome is written and its slot freed: no handler can keep a date running, a batch unfinished or the
process alive (issue 15).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from datesync.daemon import metrics

log = structlog.get_logger("datesync.daemon")

UNWIND_S = 3.0  # how long a stopped handler may take to unwind before it is stopped by force
EXIT_AFTER_S = 3.0  # how long a finished process waits for handler tasks it could not stop before it exits anyway

# Errors that may mean the connection to our own database broke; the connection being closed confirms it.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.ConnectionDoesNotExistError, asyncpg.AdminShutdownError, asyncpg.CannotConnectNowError,
    asyncpg.ConnectionFailureError, asyncpg.InterfaceError, asyncpg.InternalClientError, ConnectionError,
)

_left_behind: set[asyncio.Task[Any]] = set()  # abandoned handler tasks, referenced until they end


class Escaped(Exception):
    """A handler raised a BaseException (SystemExit, KeyboardInterrupt): raised out of a task it would stop the
    event loop, so it travels wrapped."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(original)
        self.original = original


@dataclasses.dataclass(frozen=True, slots=True)
class Ended:
    """How a handler call ended, as seen by the date that waited for it."""

    result: object = None
    error: BaseException | None = None
    timed_out: bool = False
    interrupted: bool = False  # the date's task was cancelled while it waited
    abandoned: bool = False  # the handler did not stop when cancelled: its connection must not be reused


async def run_handler(func: Callable[..., Awaitable[object]], *args: Any, timeout: float, name: str) -> Ended:
    """Call func(*args) in a task of its own and wait at most `timeout` seconds (plus UNWIND_S once stopped).
    A cancellation of the caller is absorbed and reported as `interrupted`; the caller decides what it meant."""
    child = asyncio.create_task(_guarded(func, *args), name=name)
    try:
        done, _ = await asyncio.wait({child}, timeout=timeout)
    except asyncio.CancelledError:
        absorb_cancel()  # later awaits of this task (the connection's reset) must not see it
        return Ended(interrupted=True, abandoned=not await _stop(child))
    if not done:
        return Ended(timed_out=True, abandoned=not await _stop(child))
    return _ended(child)


def absorb_cancel() -> None:
    """The current task's cancellation is handled here (it was ours): its later awaits must not see it again."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        task.uncancel()


async def _guarded(func: Callable[..., Awaitable[object]], *args: Any) -> object:
    try:
        return await func(*args)
    except (asyncio.CancelledError, GeneratorExit, Exception):
        raise
    except BaseException as exc:
        raise Escaped(exc) from None


def _ended(child: asyncio.Task[object]) -> Ended:
    if child.cancelled():  # nobody cancelled it: the handler raised CancelledError itself
        return Ended(error=RuntimeError("the handler raised CancelledError without being cancelled"))
    error = child.exception()
    if isinstance(error, Escaped):
        error = error.original
    return Ended(error=error) if error is not None else Ended(result=child.result())


async def _stop(child: asyncio.Task[object]) -> bool:
    """Cancel the handler and wait up to UNWIND_S; True if it stopped, else it is stopped by force or left."""
    child.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        # A second cancellation of the date (a hard shutdown) must not leave the handler unstopped.
        await asyncio.wait({child}, timeout=UNWIND_S)
    if child.done():
        _consume(child)
        return True
    metrics.HANDLERS_ABANDONED.labels("task").inc()
    log.warning("handler_ignored_cancellation", task=child.get_name(), waited_s=UNWIND_S)
    coro = child.get_coro()
    with contextlib.suppress(RuntimeError, ValueError):
        # GeneratorExit at its await point: `except CancelledError` does not catch it, so its code stops here.
        # The task then ends at its next wake-up, cancelled. (RuntimeError: it awaited again while closing.)
        coro.close()
    child.cancel()
    if not child.done():
        metrics.HANDLERS_STUCK.labels("task").inc()
        _left_behind.add(child)
        child.add_done_callback(_forget)
    return False


def left_behind() -> int:
    """Handler tasks that could not be stopped (they caught even the GeneratorExit of a forced close)."""
    return len(_left_behind)


def exit_regardless(code: int) -> None:
    """Called when a process's main coroutine has finished: if handler tasks could not be stopped, asyncio.run's
    clean-up would wait for them for ever (it cancels every task and waits), so exit after EXIT_AFTER_S anyway.
    A daemon thread: a process that exits normally first takes it along."""
    if not _left_behind:
        return
    log.warning("handlers_left_running", tasks=len(_left_behind), exit_in_s=EXIT_AFTER_S)

    def exit_now() -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(EXIT_AFTER_S, exit_now)
    timer.daemon = True
    timer.start()


def _forget(child: asyncio.Task[object]) -> None:
    _left_behind.discard(child)
    metrics.HANDLERS_STUCK.labels("task").dec()
    _consume(child)


def _consume(child: asyncio.Task[object]) -> None:
    """Read a stopped handler's exception so that asyncio does not log it as never retrieved."""
    if not child.cancelled():
        child.exception()


# -- the date's own database connection ---------------------------------------------------------------------


def connection_gone(conn: object) -> bool:
    """Whether ctx.db's connection is closed, asked without calling the pool's proxy: asyncpg detaches the proxy
    of a connection it loses, and then every method of it raises InterfaceError (issue 15)."""
    raw: Any = getattr(conn, "_con", conn)  # PoolConnectionProxy keeps the connection here; None once detached
    return raw is None or bool(raw.is_closed())


def terminate(conn: object) -> None:
    """Close a connection that an abandoned handler may still use (in a transaction, holding locks)."""
    raw: Any = getattr(conn, "_con", conn)
    if raw is not None:
        raw.terminate()


def lost_connection(exc: BaseException) -> bool:
    """Whether `exc`, or any exception it was raised from or during, says a database connection broke."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 20:
        seen.add(id(current))
        if isinstance(current, CONNECTION_LOST) and not isinstance(current, asyncpg.DataError):
            return True
        if isinstance(current, asyncpg.PostgresError) and (current.sqlstate or "")[:2] in ("08", "57"):
            return True
        current = current.__cause__ or current.__context__
    return False
