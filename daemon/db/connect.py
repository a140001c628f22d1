"""Opening pools and connections, with the settings every datesync connection needs."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from daemon.db import dsn as dsns
from daemon.errors import DatabaseUnavailable

log = structlog.get_logger("datesync.db")

# Errors that mean "the server is not there (yet)": worth retrying at start-up.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
)

# Any database failure worth retrying or reporting rather than crashing on.
DB_ERRORS: tuple[type[BaseException], ...] = (*CONNECT_ERRORS, asyncpg.PostgresError)

# A connection, whether held alone or borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _options(dsn: str, application_name: str) -> dict[str, Any]:
    return {
        "dsn": dsns.clean(dsn),
        # A transaction pooler may run each transaction on another server connection, where a named prepared
        # statement does not exist. Without a cache asyncpg uses the unnamed statement and parses it again with
        # its Bind/Execute/Sync; no Sync comes between, so the pooler keeps one server connection for it (checked
        # through PgBouncer 1.18 in tests/e2e/test_pooled_pgbouncer.py). conn.prepare() is unnamed then too.
        "statement_cache_size": 0 if dsns.is_pooled(dsn) else 256,
        "server_settings": {"application_name": application_name},
        "timeout": 15,
    }


async def connect(dsn: str, application_name: str) -> asyncpg.Connection:
    """One connection (the listener's, migrations)."""
    conn: asyncpg.Connection = await asyncpg.connect(**_options(dsn, application_name))
    await _init_connection(conn)
    return conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook. asyncpg still rolls back an open transaction and drops listeners first; we skip its
    reset query (one round trip per release) because our own statements leave no session state. Handler code
    that may (SET, temp tables) gets a full reset from the daemon after each date."""


async def create_pool(dsn: str, size: int, application_name: str) -> asyncpg.Pool:
    """The pool for ordinary queries; connections are opened lazily, up to `size`.

    No floor (min_size=0): asyncpg re-opens a floor connection as soon as one drops, which wakes a Neon compute
    that has just suspended, and while the database is away it logs a traceback on every retry."""
    pool = await asyncpg.create_pool(
        **_options(dsn, application_name),
        min_size=0,
        max_size=size,
        init=_init_connection,
        reset=_keep_session,
        max_inactive_connection_lifetime=120,
    )
    assert pool is not None
    return pool


async def wait_until_reachable(dsn: str, timeout: float, application_name: str) -> asyncpg.Connection:
    """Connect, retrying with capped backoff for up to `timeout` seconds (a database that is still starting,
    or a Neon compute waking up); raise DatabaseUnavailable with the last error after that."""
    deadline = time.monotonic() + timeout
    delay = 0.25
    attempt = 0
    while True:
        attempt += 1
        try:
            return await connect(dsn, application_name)
        except CONNECT_ERRORS as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseUnavailable(
                    f"cannot reach the database at {dsns.redact(dsn)} after {attempt} attempts: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if attempt == 1:
                log.warning("database_unreachable_retrying", error=f"{type(exc).__name__}: {exc}",
                            give_up_in_s=round(remaining, 1))
            await asyncio.sleep(min(delay, remaining) * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 5.0)
