"""Shared fixtures: one real PostgreSQL per session (embedded, or TEST_DATABASE_URL), a migrated template
database, and a fresh database cloned from it for each test that asks for one."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from datesync.daemon.db.connect import connect
from datesync.daemon.db.dsn import with_database
from datesync.daemon.embedded import EmbeddedPostgres
from datesync.daemon.runtime import migrate_and_register
from datesync.daemon.settings import Settings
from tests.support.pgbouncer import PgBouncer, pgbouncer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """DSN of a maintenance database on the test server."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    folder = Path(tempfile.mkdtemp(prefix="dstest-"))
    server = EmbeddedPostgres(folder)
    server.start()
    try:
        yield server.dsn("postgres")
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def template_db(server_dsn: str) -> AsyncIterator[str]:
    """A database with every migration applied, to clone per test."""
    name = f"dstmpl_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await connect(with_database(server_dsn, name), "datesync-test")
    try:
        await migrate_and_register(conn, Settings(), {"default": "demo"})
    finally:
        await conn.close()
    yield name
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@contextlib.asynccontextmanager
async def _clone(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A database cloned from the migrated template, dropped afterwards."""
    name = f"dstest_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        yield with_database(server_dsn, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def dsn(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test."""
    async with _clone(server_dsn, template_db) as cloned:
        yield cloned


@pytest.fixture
async def other_dsn(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A second installation: another fresh, migrated database on the same server."""
    async with _clone(server_dsn, template_db) as cloned:
        yield cloned


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all."""
    name = f"dsempty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(server_dsn, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database."""
    conn = await connect(dsn, "datesync-test")
    yield conn
    await conn.close()



@pytest.fixture(scope="session")
def bouncer(server_dsn: str) -> Iterator[PgBouncer]:
    """A real PgBouncer in transaction mode in front of the test server (Debian's package)."""
    with pgbouncer(server_dsn) as running:
        yield running


@pytest.fixture
def pooled_dsn(bouncer: PgBouncer, dsn: str) -> str:
    """This test's database through PgBouncer in transaction mode (`dsn` stays the direct URL)."""
    return bouncer.pooled(dsn)
