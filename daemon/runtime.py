"""Start-up shared by every command: find the database (embedded when no DATABASE_URL), wait for it, migrate,
and record what the database's own checks need."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import asyncpg
import structlog

from datesync.daemon.db import dsn as dsns
from datesync.daemon.db.connect import wait_until_reachable
from datesync.daemon.db.migrate import migrate
from datesync.daemon.db.queries import q
from datesync.daemon.embedded import EmbeddedPostgres
from datesync.daemon.errors import SettingsError
from datesync.daemon.settings import Settings

log = structlog.get_logger("datesync.runtime")

@dataclasses.dataclass
class Database:
    """Where the database is: the DSN for queries and the direct one for LISTEN."""

    dsn: str
    direct_dsn: str
    embedded: EmbeddedPostgres | None = None
    pooled: bool = False  # `dsn` leads through a transaction pooler: no named statements, no session state


def direct_dsn_for(settings: Settings, dsn: str) -> str:
    if settings.database_direct_url:
        return settings.database_direct_url
    direct = dsns.direct_from(dsn)
    if direct != dsn:
        log.info("direct_url_derived", direct_url=dsns.redact(direct),
                 reason="DATABASE_URL is a Neon -pooler endpoint, which cannot LISTEN")
    return direct


def pooled_for(settings: Settings, dsn: str, direct: str) -> bool:
    """Whether DATABASE_URL is a transaction pooler (DATESYNC_POOLED); recorded so that every connection to it,
    from any part of this process, leaves named prepared statements alone."""
    pooled = dsns.decide_pooled(settings.pooled, dsn, direct)
    if pooled:
        dsns.mark_pooled(dsn)
    return pooled


def check_endpoints(db: Database, settings: Settings) -> None:
    """Before a process that LISTENs starts: refuse a direct URL that is still a pooler, and say once which
    endpoint serves what."""
    refuse_pooled_direct(db, settings)
    if db.embedded is None:
        log.info("database_endpoints", queries=dsns.redact(db.dsn), listen=dsns.redact(db.direct_dsn),
                 pooled=db.pooled, pooled_setting=settings.pooled,
                 statement_cache="off (transaction pooler)" if db.pooled else "on")


def refuse_pooled_direct(db: Database, settings: Settings) -> None:
    """Raise SettingsError, naming the variable, when the direct endpoint is a pooler: Neon's -pooler host, or
    DATABASE_URL itself once DATESYNC_POOLED=on says it is one."""
    if settings.pooled == "off" and dsns.is_pooler(db.dsn):
        raise SettingsError(
            f"DATESYNC_POOLED=off, but DATABASE_URL is a Neon -pooler endpoint ({urlsplit(db.dsn).hostname}), "
            "which is always PgBouncer in transaction mode; remove DATESYNC_POOLED or set it to auto"
        )
    if dsns.is_pooler(db.direct_dsn):
        given = "DATABASE_DIRECT_URL" if settings.database_direct_url else "DATABASE_URL"
        raise SettingsError(
            f"{given} points at a Neon -pooler endpoint ({urlsplit(db.direct_dsn).hostname}), which runs PgBouncer "
            "in transaction mode and cannot LISTEN or hold the migrations' lock; set DATABASE_DIRECT_URL to the "
            "direct endpoint (the same URL without -pooler in the host), or leave it unset to derive it from "
            "DATABASE_URL"
        )
    if db.pooled and db.direct_dsn == db.dsn:
        raise SettingsError(
            "DATESYNC_POOLED=on says DATABASE_URL is a transaction pooler, which cannot LISTEN or hold the "
            "migrations' lock; set DATABASE_DIRECT_URL to a direct connection to the same database (for "
            "Supabase, the session pooler on port 5432 or the db.<project>.supabase.co host)"
        )


@contextlib.asynccontextmanager
async def database(settings: Settings, *, own_embedded: bool = True) -> AsyncIterator[Database]:
    """The database for this process. With no DATABASE_URL, the embedded server in DATESYNC_DATA_DIR: started
    (and stopped on exit) when `own_embedded`, else only joined when another datesync process runs it."""
    if settings.database_url:
        direct = direct_dsn_for(settings, settings.database_url)
        yield Database(settings.database_url, direct, pooled=pooled_for(settings, settings.database_url, direct))
        return
    server = EmbeddedPostgres(settings.data_dir)
    if not own_embedded and server.running_pid() is not None:
        yield Database(server.dsn(), server.dsn())
        return
    dsn = await asyncio.to_thread(server.start)
    try:
        yield Database(dsn, dsn, server)
    finally:
        await asyncio.to_thread(server.stop)


def variables(db: Database, settings: Settings) -> tuple[str | None, str | None]:
    """The variables the user set for the query and the direct endpoints, to name in errors (None: embedded)."""
    if db.embedded is not None or not settings.database_url:
        return None, None
    return "DATABASE_URL", "DATABASE_DIRECT_URL" if settings.database_direct_url else "DATABASE_URL"


async def prepare(db: Database, settings: Settings, sources: Mapping[str, str], *, runs_sources: bool = False
                  ) -> None:
    """Wait for the database, apply migrations, and register settings and sources (and, in a process that runs
    the sources' dates, their dependencies: see migrate_and_register).

    Through the direct endpoint: migrations hold a session-level advisory lock, which a transaction pooler
    (Neon's -pooler) would take on one server connection and try to release on another, leaving it held."""
    refuse_pooled_direct(db, settings)
    conn = await wait_until_reachable(db.direct_dsn, settings.startup_timeout, "datesync-migrate",
                                      variables(db, settings)[1])
    try:
        await migrate_and_register(conn, settings, sources, runs_sources=runs_sources)
    finally:
        await conn.close()


async def check_queries_endpoint(db: Database, settings: Settings) -> None:
    """When DATABASE_URL is not the URL prepare() used, connect to it once: the pool opens its connections
    lazily, so a wrong one would otherwise surface only at the first query, as a traceback."""
    if db.dsn != db.direct_dsn:
        probe = await wait_until_reachable(db.dsn, settings.startup_timeout, "datesync-check",
                                           variables(db, settings)[0])
        await probe.close()


async def migrate_and_register(conn: asyncpg.Connection, settings: Settings, sources: Mapping[str, str], *,
                               runs_sources: bool = False) -> None:
    await migrate(conn)
    await conn.execute(q("setting_upsert"), "max_range_days", str(settings.max_range_days))
    await conn.execute(q("setting_upsert"), "timezone", settings.timezone)
    async with conn.transaction():
        for name, handler in sources.items():
            await conn.execute(q("source_register"), name, handler)
        if not runs_sources:
            return
        # The graph as the daemon was configured (DATESYNC_<NAME>_AFTER), for the sources it runs; a CLI or a
        # web-only process, which may lack those variables, leaves it alone.
        await conn.execute(q("dependency_forget"), list(sources))
        for name, upstream in settings.after.items():
            for up in upstream:
                await conn.execute(q("dependency_register"), name, up.source, up.lo, up.hi)
