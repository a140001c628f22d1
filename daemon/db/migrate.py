"""Forward-only SQL migrations, applied in order under an advisory lock and recorded in a version table."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from daemon.db.connect import Conn
from daemon.errors import MigrationError

log = structlog.get_logger("datesync.migrate")

# Session-level advisory lock: two processes starting at once must not both migrate.
MIGRATION_LOCK = (7355608, 0)

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS datesync;
CREATE TABLE IF NOT EXISTS datesync.schema_migration (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The migration files shipped with the package, in order."""
    folder = resources.files("daemon.db") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number: {versions}")
    return found


async def applied(conn: Conn) -> dict[int, str]:
    """Applied versions and their checksums; empty when the schema does not exist yet."""
    exists = await conn.fetchval("SELECT to_regclass('datesync.schema_migration') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM datesync.schema_migration")
    return {r["version"]: r["checksum"] for r in rows}


async def is_current(conn: Conn) -> bool:
    """True when every shipped migration is applied."""
    done = await applied(conn)
    return all(m.version in done for m in available())


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply the pending migrations, each in its own transaction; return the versions applied."""
    await conn.execute("SELECT pg_advisory_lock($1, $2)", *MIGRATION_LOCK)
    try:
        await conn.execute(_BOOTSTRAP)
        done = await applied(conn)
        newly: list[int] = []
        for m in available():
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name}.sql changed after it was applied; "
                        "migrations are forward-only: add a new file instead"
                    )
                continue
            async with conn.transaction():
                try:
                    await conn.execute(m.sql)
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"migration {m.version:04d}_{m.name}.sql failed: {exc}") from exc
                await conn.execute(
                    "INSERT INTO datesync.schema_migration (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, m.name, m.checksum,
                )
            newly.append(m.version)
            log.info("migration_applied", version=m.version, name=m.name)
        return newly
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", *MIGRATION_LOCK)
