"""The one set-up and tear-down of a fault scenario: its clock, seeded randomness, Figures, connection, fleet of
daemons, run file and (for the database-fault scenarios) a fresh database on a server it may restart.

    async with scenario("random_kills", seed, dsn) as s:
        fleet = await s.fleet(env)
        ...
        await s.settle(fleet, invariants.Rules())
        return s.fig

Everything the scenario opens through `s` is closed when the block ends, last opened first (so the fleet is
stopped before the connections close and before the fresh database is dropped); then `s.fig.seconds` is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from tests.faults import invariants
from tests.faults.common import Figures, open_conn
from tests.faults.dbs import DedicatedServer, fresh_database
from tests.faults.procs import Fleet


@contextlib.asynccontextmanager
async def daemon_fleet(dsn: str, env: dict[str, str]) -> AsyncIterator[Fleet]:
    fleet = Fleet(dsn, env)
    try:
        yield fleet
    finally:
        try:
            await fleet.stop()
        finally:
            fleet.close()


@contextlib.asynccontextmanager
async def run_file() -> AsyncIterator[Path]:
    """A file outside the database that the recording handlers (tests.faults.handlers) append their runs to."""
    with tempfile.TemporaryDirectory(prefix="dsfaults-runs-") as folder:
        yield Path(folder) / "runs.jsonl"


@contextlib.asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection for a stretch of a scenario (one that restarts the server cannot keep one throughout)."""
    conn = await open_conn(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def settle(fig: Figures, conn: asyncpg.Connection, fleet: Fleet, rules: invariants.Rules,
                 run_file: Path | None = None) -> Figures:
    """Stop the fleet, then check every invariant and fill in the figures."""
    await fleet.stop()
    report = await invariants.check(conn, rules, fleet.deaths, run_file,
                                    [(p.pid, p.log_text()) for p in fleet.procs])
    fig.problems += report.problems
    fig.dates, fig.runs, fig.overlaps = report.dates, report.runs, report.overlaps
    fig.failed_by_faults = report.failed_by_faults
    fig.failed_by_upstream = report.failed_by_upstream
    fig.kills, fig.sigterms = fig.kills + fleet.kills, fig.sigterms + fleet.sigterms
    if fig.problems:
        fig.details = fleet.logs()
    return fig


@dataclasses.dataclass
class ScenarioRun:
    """One run of a scenario: what it fills in, where its randomness comes from, and what it has opened."""

    fig: Figures
    rng: random.Random
    dsn: str
    _stack: contextlib.AsyncExitStack
    _conn: asyncpg.Connection | None = None

    @property
    def conn(self) -> asyncpg.Connection:
        """The connection held for the whole scenario (opened when the scenario was given a dsn)."""
        if self._conn is None:
            raise RuntimeError("this scenario holds no connection throughout: use `async with s.connection()`")
        return self._conn

    async def fleet(self, env: dict[str, str]) -> Fleet:
        """A fleet of daemons with this environment, stopped when the scenario ends."""
        return await self._stack.enter_async_context(daemon_fleet(self.dsn, env))

    async def run_file(self) -> Path:
        """A run file, removed when the scenario ends."""
        return await self._stack.enter_async_context(run_file())

    async def connect(self) -> asyncpg.Connection:
        """Another connection (a lock holder, say), closed when the scenario ends."""
        return await self._stack.enter_async_context(connection(self.dsn))

    def connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        """A connection for a stretch of the scenario, closed at the end of that stretch."""
        return connection(self.dsn)

    async def settle(self, fleet: Fleet, rules: invariants.Rules, run_file: Path | None = None,
                     conn: asyncpg.Connection | None = None) -> Figures:
        """settle() with this scenario's figures and (unless another is given) its connection."""
        return await settle(self.fig, conn or self.conn, fleet, rules, run_file)

    def check_alive(self, fleet: Fleet) -> None:
        """A problem for each daemon of the fleet that has died."""
        for proc in fleet.procs:
            if not proc.alive():
                self.fig.problems.append(f"daemon {proc.pid} died: {proc.log_text()[-2000:]}")


@contextlib.asynccontextmanager
async def scenario(name: str, seed: int, dsn: str | None = None, *, server: DedicatedServer | None = None
                   ) -> AsyncIterator[ScenarioRun]:
    """Set up a scenario: on `dsn` with a connection held throughout (`s.conn`), or, given a `server`, on a fresh
    database of it with no connection held (the scenario restarts the server: `async with s.connection()`), or
    on neither (a scenario with no database). `s.rng` is random.Random(seed), drawn from by the scenario alone."""
    started = time.monotonic()
    fig = Figures(name, seed)
    rng = random.Random(seed)
    async with contextlib.AsyncExitStack() as stack:
        if server is not None:
            dsn = await stack.enter_async_context(fresh_database(server.admin_dsn))
            run = ScenarioRun(fig, rng, dsn, stack)
        else:
            run = ScenarioRun(fig, rng, dsn or "", stack)
            if dsn is not None:
                run._conn = await run.connect()
        yield run
    fig.seconds = time.monotonic() - started
