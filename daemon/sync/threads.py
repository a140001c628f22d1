"""Threads for plain (`def`) handlers.

Not asyncio.to_thread: its default ThreadPoolExecutor has a fixed set of non-daemon workers that the interpreter
joins at exit (and asyncio.run waits for), so one handler blocked in a call without a timeout kept a stopped
daemon alive for good, and a few of them used up the pool for every later plain handler (issue 15). Here each call
gets a daemon thread of its own (its start costs tens of microseconds against a date's milliseconds). A caller
that gives up (timeout, cancel, shutdown) returns at once; the thread is left to finish alone and is counted
until it does. Past STUCK_LIMIT such threads a new call fails at once instead of piling up more.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import threading
from collections.abc import Callable
from typing import Any

from datesync.daemon import metrics

STUCK_LIMIT = 64

_lock = threading.Lock()
_stuck = 0
_names = itertools.count(1)


class TooManyStuckThreads(RuntimeError):
    """Too many handler threads are still running after their callers gave up."""


def stuck() -> int:
    """Threads whose caller gave up and that still run."""
    return _stuck


async def run_in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """Run func(*args) in a daemon thread with this task's context; cancelling the caller leaves it behind."""
    global _stuck
    if _stuck >= STUCK_LIMIT:
        raise TooManyStuckThreads(f"{_stuck} handler threads are still blocked after their dates timed out or "
                                  "were stopped; not starting another until some return")
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()
    state = {"finished": False, "abandoned": False}

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        global _stuck
        try:
            value, ok = context.run(func, *args), True
        except BaseException as exc:  # SystemExit too: it belongs to the date, not to this thread
            value, ok = exc, False
        with _lock:
            state["finished"] = True
            if state["abandoned"]:
                _stuck -= 1
                metrics.HANDLERS_STUCK.labels("thread").dec()
                return
        with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, value)

    thread = threading.Thread(target=work, name=f"datesync-handler-{next(_names)}", daemon=True)
    thread.start()
    try:
        return await future
    except asyncio.CancelledError:
        with _lock:
            if not state["finished"]:
                state["abandoned"] = True
                _stuck += 1
                metrics.HANDLERS_ABANDONED.labels("thread").inc()
                metrics.HANDLERS_STUCK.labels("thread").inc()
        raise
