"""Databases for the fault scenarios: fresh migrated ones on a shared server (the soak's, like the suite's
`dsn` fixture), and a dedicated embedded server that a scenario may stop and start at will."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import asyncpg

from datesync.daemon.db.connect import connect
from datesync.daemon.db.dsn import with_database
from datesync.daemon.embedded import EmbeddedPostgres
from datesync.daemon.runtime import migrate_and_register
from datesync.daemon.settings import Settings

SOURCES = {"default": "demo"}




async def migrate(dsn: str, sources: Mapping[str, str] = SOURCES) -> None:
    conn = await connect(dsn, "datesync-faults")
    try:
        await migrate_and_register(conn, Settings(), sources)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str, template: str | None = None) -> AsyncIterator[str]:
    """A new database on the server (cloned from `template`, else migrated), dropped afterwards (with a new
    connection: the server may have been restarted meanwhile)."""
    name = f"dsfault_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        if template:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_database(server_dsn, name)
    try:
        if not template:
            await migrate(dsn)
        yield dsn
    finally:
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            admin = await asyncpg.connect(server_dsn)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


class DedicatedServer:
    """An embedded PostgreSQL of our own in a temporary folder (not pytest's tmp_path: another pytest starting
    resets its parent's mode), to stop and restart under running daemons."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="dsfaults-pg-"))
        self.server = EmbeddedPostgres(self.folder)
        self.restarts = 0

    @property
    def admin_dsn(self) -> str:
        return self.server.dsn("postgres")

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop)

    async def stop_now(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m fast` (every connection cut, a clean shutdown) or `-m immediate` (a crash: no
        shutdown checkpoint, recovery at the next start)."""
        if mode != "fast":
            await asyncio.to_thread(self.server._pg_ctl, "stop", "-w", "-t", "30", "-m", mode)
        await self.stop()  # (after an immediate stop: only lets the folder go)

    async def restart(self, down_for: float, mode: str = "fast") -> None:
        """Stop (fast shutdown by default: every connection is cut), stay down `down_for` seconds, start again."""
        await self.stop_now(mode)
        await asyncio.sleep(down_for)
        await self.start()
        self.restarts += 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def dedicated_server() -> AsyncIterator[DedicatedServer]:
    server = DedicatedServer()
    try:
        await server.start()
        yield server
    finally:
        await asyncio.to_thread(server.close)
