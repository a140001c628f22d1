"""Plain handlers' threads (daemon/sync/threads.py): daemon threads, left behind when their caller gives up,
counted while stuck, and refused past the limit instead of piling up."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from datesync.daemon.sync import threads

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def test_a_result_an_exception_and_the_context_come_back() -> None:
    VAR.set("bound")
    assert await threads.run_in_thread(lambda: (VAR.get(), threading.current_thread().daemon)) == ("bound", True)
    with pytest.raises(SystemExit):  # a BaseException travels back to the caller, not into the event loop
        await threads.run_in_thread(lambda: (_ for _ in ()).throw(SystemExit(3)))


async def test_a_thread_whose_caller_gave_up_is_counted_until_it_ends_and_caps_new_ones(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # The count is the process's: threads that earlier tests left stuck end on their own meanwhile, and would
    # lower it under this test's feet (seen: 8 of them, ending between the two lines below).
    for _ in range(300):
        if threads.stuck() == 0:
            break
        await asyncio.sleep(0.1)
    assert threads.stuck() == 0, "threads left stuck by earlier tests did not end within 30 s"
    monkeypatch.setattr(threads, "STUCK_LIMIT", 1)
    release = threading.Event()
    call = asyncio.create_task(threads.run_in_thread(release.wait, 10))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert threads.stuck() == threads.STUCK_LIMIT
    with pytest.raises(threads.TooManyStuckThreads):
        await threads.run_in_thread(lambda: 1)
    release.set()
    for _ in range(100):
        if threads.stuck() < threads.STUCK_LIMIT:
            break
        await asyncio.sleep(0.01)
    assert await threads.run_in_thread(lambda: 2) == 2
