"""Opening pools and connections, with the settings every datesync connection needs."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from datesync.daemon.backoff import Backoff
from datesync.daemon.db import dates, refusals
from datesync.daemon.db import dsn as dsns
from datesync.daemon.db.pool import FairPool
from datesync.daemon.errors import DatabaseRefused, DatabaseUnavailable

log = structlog.get_logger("datesync.db")

# Waits between connection attempts at start-up (a server still starting, a compute waking up).
STARTUP_RETRY = Backoff(0.25, cap=5.0)

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

# While start-up waits for the database, a line this often (seconds) says it still does.
STILL_WAITING_EVERY = 5.0

# Any database failure worth retrying or reporting rather than crashing on.
DB_ERRORS: tuple[type[BaseException], ...] = (*CONNECT_ERRORS, asyncpg.PostgresError)

# A connection, whether held alone or borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await dates.register(conn)  # rows from before 0007 may hold dates Python cannot: read them, never crash


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
    """The pool for ordinary queries; connections are opened lazily, up to `size`, and go to waiters in order.

    No floor (min_size=0): asyncpg re-opens a floor connection as soon as one drops, which wakes a Neon compute
    that has just suspended, and while the database is away it logs a traceback on every retry."""
    pool = FairPool(  # asyncpg's pool, serving waiters in arrival order (pool.py says why)
        **_options(dsn, application_name),
        min_size=0,
        max_size=size,
        max_queries=50_000,  # asyncpg's default
        init=_init_connection,
        reset=_keep_session,
        max_inactive_connection_lifetime=120,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
    )
    return await pool


async def wait_until_reachable(
    dsn: str, timeout: float, application_name: str, variable: str | None = "DATABASE_URL"
) -> asyncpg.Connection:
    """Connect, retrying with capped backoff for up to `timeout` seconds (a database that is still starting,
    or a Neon compute waking up), with a line every few seconds. Raise DatabaseRefused at once when the server
    refuses the URL itself (no retry fixes a missing database), DatabaseUnavailable when the time is up; both
    messages name `variable`, the URL with its password masked, and the cause."""
    started = time.monotonic()
    deadline = started + timeout
    attempt = 0
    said = 0.0
    while True:
        attempt += 1
        try:
            return await connect(dsn, application_name)
        except DB_ERRORS as exc:  # any server error too: a refusal is told apart from a server still starting
            reason = refusals.refused(exc, dsn)
            if reason is not None:
                raise DatabaseRefused(f"{refusals.label(variable, dsn)}: {reason}") from exc
            cause = refusals.unreachable(exc, dsn)
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                raise DatabaseUnavailable(
                    f"{refusals.label(variable, dsn)}: cannot reach the database after {attempt} attempts in "
                    f"{timeout:g} s ({cause}); check the host and port and that the server is running, or give it "
                    "longer with DATESYNC_STARTUP_TIMEOUT"
                ) from exc
            if attempt == 1:
                log.warning("database_unreachable_retrying", variable=variable, url=dsns.redact(dsn), error=cause,
                            give_up_in_s=round(remaining, 1))
                said = now
            elif now - said >= STILL_WAITING_EVERY:
                log.warning("database_still_unreachable", variable=variable, url=dsns.redact(dsn), error=cause,
                            waited_s=round(now - started, 1), give_up_in_s=round(remaining, 1))
                said = now
            await asyncio.sleep(min(STARTUP_RETRY.delay(attempt), remaining))
