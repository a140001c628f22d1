"""A connection pool that serves its waiters in arrival order.

asyncpg's Pool (0.32) keeps its idle connections in an asyncio.LifoQueue and its waiters in that queue's getters.
A release wakes the first getter, but until that getter runs, any task that calls acquire() finds the connection
and takes it; the woken getter then finds the queue empty and waits again, at the back of the line (asyncio.Queue
re-appends it). Under contention some waiters lose over and over: asyncpg issue #1247 (open) shows acquire
timeouts of 10 s on a pool whose fair wait is 2 s, and our POST p99 was 78 ms with it against 28 ms with a fair
pool (issue 20). No asyncpg option changes this, so we replace the one piece that decides who goes next.

The piece is the holder queue: asyncpg owns a fixed set of holders, one per possible connection, and every path
that frees one (a release, a failed reset, a connection closed under its user or a failed acquire) puts the
holder back through `put_nowait`. Here `put_nowait` hands it straight to the longest waiting caller, so every
one of those paths gives the turn to the next in line, and a caller never takes a holder while others wait.
Everything else (connecting, init, reset, expiry, close) stays asyncpg's. The queue is private to asyncpg:
pyproject pins its version, and tests/integration/test_fair_pool.py fails if the hook stops being used.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionHolder


class FairHolderQueue:
    """What asyncpg's Pool asks of its holder queue (get, put_nowait, get_disconnected_nowait), first come, first
    served. Idle holders are kept as asyncpg keeps them: the most recently used live one goes out first, so that
    surplus connections stay idle long enough to be closed (max_inactive_connection_lifetime)."""

    def __init__(self, holders: list[PoolConnectionHolder[Any]]) -> None:
        self._idle = list(holders)
        self._turns: collections.deque[asyncio.Future[PoolConnectionHolder[Any]]] = collections.deque()

    async def get(self) -> PoolConnectionHolder[Any]:
        """The next idle holder; behind every caller already waiting."""
        if self._idle and not self._waiting():
            return self._take()
        turn: asyncio.Future[PoolConnectionHolder[Any]] = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        try:
            return await turn
        except BaseException:  # cancelled or timed out while waiting
            if turn.done() and not turn.cancelled():
                # The holder reached us in the same loop turn as the cancellation: pass it on, never keep it.
                self.put_nowait(turn.result())
            else:
                turn.cancel()
                with contextlib.suppress(ValueError):  # a put_nowait meanwhile has dropped it already
                    self._turns.remove(turn)
            raise

    def put_nowait(self, holder: PoolConnectionHolder[Any]) -> None:
        """A holder comes back (released, its connection closed, or an acquire with it failed): to the longest
        waiting caller, else to the idle list."""
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(holder)
                return
        self._idle.append(holder)

    def get_disconnected_nowait(self) -> PoolConnectionHolder[Any]:
        """An idle holder without a connection, for asyncpg's min_size upkeep; raise QueueEmpty if none."""
        for i in range(len(self._idle) - 1, -1, -1):
            if not self._idle[i].is_connected():
                return self._idle.pop(i)
        raise asyncio.QueueEmpty

    def _waiting(self) -> bool:
        return any(not turn.done() for turn in self._turns)

    def _take(self) -> PoolConnectionHolder[Any]:
        for i in range(len(self._idle) - 1, -1, -1):  # a live connection first, the most recently used
            if self._idle[i].is_connected():
                return self._idle.pop(i)
        return self._idle.pop()


class FairPool(asyncpg.Pool):
    """asyncpg's Pool with FairHolderQueue in place of its own holder queue."""

    async def _initialize(self) -> None:
        # Private, so not in the stubs; asyncpg is pinned. Right after it no holder is in use: all are idle.
        await super()._initialize()  # type: ignore[misc]
        self._queue = FairHolderQueue(self._holders)  # type: ignore[attr-defined]
