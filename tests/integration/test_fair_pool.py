"""Issue 20: the pool serves waiters in arrival order, and every way a connection breaks (terminated while held,
a failed reconnect, a reset that fails at release, an acquire that times out, a waiter cancelled) passes the turn
to the next waiter, after which the pool still serves every later caller. A real PostgreSQL, no fakes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from datesync.daemon.db.connect import create_pool

WAIT = 10.0  # seconds any single step may take before the test calls it stuck


@contextlib.asynccontextmanager
async def pool_of(dsn: str, size: int) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, size, "datesync-test-pool")
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), WAIT)


class Line:
    """Callers that queue for the pool one after another and record the order in which they are served."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.served: list[str] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def join(self, name: str, *, timeout: float | None = None, hold: float = 0.0) -> asyncio.Task[None]:
        """Start a caller and return once it waits (it took its place in the line)."""
        task = asyncio.create_task(self._serve(name, timeout, hold), name=name)
        self.tasks[name] = task
        for _ in range(3):  # acquire() reaches its wait within a loop turn or two
            await asyncio.sleep(0)
        assert not task.done(), f"{name} was served at once: the pool was not contended"
        return task

    async def _serve(self, name: str, timeout: float | None, hold: float) -> None:
        async with self.pool.acquire(timeout=timeout) as conn:
            self.served.append(name)
            assert await conn.fetchval("SELECT 1") == 1
            await asyncio.sleep(hold)

    async def done(self, *names: str) -> None:
        await asyncio.wait_for(asyncio.gather(*(self.tasks[n] for n in names)), WAIT)


async def still_serves(pool: asyncpg.Pool, callers: int = 8) -> None:
    """Every one of several later callers, all at once, gets a working connection."""
    results = await asyncio.wait_for(asyncio.gather(*(pool.fetchval("SELECT $1::int", i) for i in range(callers))),
                                     WAIT)
    assert results == list(range(callers))


async def backend_pid(conn: asyncpg.pool.PoolConnectionProxy) -> int:
    return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def terminate_backend(dsn: str, pid: int) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


@pytest.mark.parametrize("late_by", range(6))
async def test_a_caller_arriving_as_a_connection_comes_back_queues_behind_the_waiters(dsn: str, late_by: int) -> None:
    """asyncpg's own pool lets a caller that arrives between a release and the wake-up of the first waiter take
    the connection; that waiter then goes to the back of the line (asyncpg issue #1247). `late_by` loop turns
    after the release starts, a newcomer asks: it must be served after every caller that was already waiting."""
    async with pool_of(dsn, 1) as pool:
        line = Line(pool)
        held = await pool.acquire()
        for name in ("a", "b", "c"):
            await line.join(name)

        async def newcomer() -> None:
            for _ in range(late_by):
                await asyncio.sleep(0)
            await line._serve("late", None, 0.0)

        releasing = asyncio.create_task(pool.release(held))
        line.tasks["late"] = asyncio.create_task(newcomer())
        await asyncio.wait_for(releasing, WAIT)
        await line.done("a", "b", "c", "late")
        assert line.served == ["a", "b", "c", "late"]
        await still_serves(pool)


async def test_many_contending_callers_are_served_round_robin(dsn: str) -> None:
    """Twelve callers that each queue again as soon as they are served, on one connection: between two turns of
    a caller, every other caller has exactly one."""
    async with pool_of(dsn, 1) as pool:
        served: list[int] = []
        stop = asyncio.Event()

        async def caller(i: int) -> None:
            while not stop.is_set():
                async with pool.acquire() as conn:
                    served.append(i)
                    await conn.execute("SELECT 1")

        tasks = [asyncio.create_task(caller(i)) for i in range(12)]
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        assert len(served) > 5 * 12
        assert served[12:] == served[:-12], "not round robin"


async def test_a_connection_terminated_while_held_passes_the_turn_in_order(dsn: str) -> None:
    async with pool_of(dsn, 1) as pool:
        line = Line(pool)
        held = await pool.acquire()
        pid = await backend_pid(held)
        for name in ("a", "b", "c"):
            await line.join(name)
        await terminate_backend(dsn, pid)
        await line.done("a", "b", "c")
        assert line.served == ["a", "b", "c"]
        await pool.release(held)  # its holder already went back when the server closed it: nothing more happens
        await still_serves(pool)
        async with pool.acquire() as conn:
            assert await backend_pid(conn) != pid


async def test_a_failed_reconnect_passes_the_turn_to_the_next_waiter(dsn: str, server_dsn: str) -> None:
    """The held connection is terminated while the database refuses new connections: each waiter in turn gets
    the holder, fails to connect and passes it on; once the database takes connections, later callers are served."""
    admin = await asyncpg.connect(server_dsn)  # another database: a session cannot lock out its own
    name = urlsplit(dsn).path.lstrip("/")
    try:
        async with pool_of(dsn, 1) as pool:
            line = Line(pool)
            held = await pool.acquire()
            pid = await backend_pid(held)
            for who in ("a", "b"):
                await line.join(who)
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
                results = await asyncio.wait_for(
                    asyncio.gather(line.tasks["a"], line.tasks["b"], return_exceptions=True), WAIT)
            finally:
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            assert line.served == []
            assert all(isinstance(r, asyncpg.PostgresError | OSError) for r in results), results
            await pool.release(held)
            await still_serves(pool)
    finally:
        await admin.close()


async def test_a_reset_that_fails_at_release_passes_the_turn(dsn: str) -> None:
    """Released inside a transaction with no time left for the rollback: asyncpg closes the connection and raises
    to the releaser; the waiter gets the holder and a new connection."""
    async with pool_of(dsn, 1) as pool:
        line = Line(pool)
        held = await pool.acquire()
        pid = await backend_pid(held)
        await held.execute("BEGIN")
        await line.join("a")
        with pytest.raises(TimeoutError):
            await pool.release(held, timeout=1e-9)
        await line.done("a")
        assert line.served == ["a"]
        await still_serves(pool)
        async with pool.acquire() as conn:
            assert await backend_pid(conn) != pid


async def test_a_waiter_that_times_out_gives_up_its_place(dsn: str) -> None:
    async with pool_of(dsn, 1) as pool:
        line = Line(pool)
        held = await pool.acquire()
        await line.join("a")
        impatient = await line.join("impatient", timeout=0.2)
        await line.join("b")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(impatient, WAIT)
        await pool.release(held)
        await line.done("a", "b")
        assert line.served == ["a", "b"]
        await still_serves(pool)


async def test_a_cancelled_waiter_gives_up_its_place(dsn: str) -> None:
    async with pool_of(dsn, 1) as pool:
        line = Line(pool)
        held = await pool.acquire()
        await line.join("a")
        gone = await line.join("gone")
        await line.join("b")
        gone.cancel()
        await pool.release(held)
        await line.done("a", "b")
        assert gone.cancelled() and line.served == ["a", "b"]
        await still_serves(pool)


async def test_a_waiter_cancelled_as_its_turn_comes_passes_it_on(dsn: str) -> None:
    """The turn reaches a waiter in the same loop turn as its cancellation (here: the server closes the held
    connection, which hands the holder over at once, and the waiter is cancelled before it runs)."""
    async with pool_of(dsn, 1) as pool:
        line = Line(pool)
        held = await pool.acquire()
        gone = await line.join("gone")
        await line.join("a")
        held.terminate()  # the holder goes to "gone" right here, before it runs
        gone.cancel()
        await line.done("a")
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert line.served == ["a"]
        await still_serves(pool)
