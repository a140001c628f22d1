"""Migrations: numbered SQL files applied once each, in order, then the repeatable function files.

Versioned files (`migrations/NNNN_name.sql`) hold DDL and data changes; once released they never change, and
their numbers run without gaps. View, function and trigger bodies live in `functions/*.sql`, one current
definition each (CREATE OR REPLACE): a file is re-applied whenever its checksum differs from the one recorded,
after the versioned migrations and in file-name order, like Flyway's repeatable migrations. Everything runs
under one session-level advisory lock, each file in its own transaction.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

import asyncpg
import structlog

from datesync.daemon.db.connect import Conn
from datesync.daemon.db.queries import q
from datesync.daemon.errors import MigrationError

log = structlog.get_logger("datesync.migrate")

# Session-level advisory lock: two processes starting at once must not both migrate.
MIGRATION_LOCK = (7355608, 0)
# The last version released while function bodies still lived in versioned files: those files stay as they are
# (an upgrade replays them), and later ones define no function.
FROZEN_THROUGH = 6

_VERSIONED = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_REPEATABLE = re.compile(r"(\d{2})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return _checksum(self.sql)


@dataclass(frozen=True)
class Repeatable:
    name: str  # the file name, e.g. 40_task.sql
    sql: str

    @property
    def checksum(self) -> str:
        return _checksum(self.sql)


def _checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def _files(folder: str, pattern: re.Pattern[str]) -> list[tuple[re.Match[str], Traversable]]:
    found = []
    for entry in (resources.files("datesync.daemon.db") / folder).iterdir():
        match = pattern.fullmatch(entry.name)
        if match:
            found.append((match, entry))
    return found


def check_numbering(versions: list[int]) -> None:
    """Raise MigrationError unless the versions are 1, 2, … with no gap and no number twice."""
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migration numbers must run 1, 2, 3, … without gaps or repeats; found {versions}")


def available() -> list[Migration]:
    """The versioned migration files shipped with the package, in order."""
    found = [Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8"))
             for m, entry in _files("migrations", _VERSIONED)]
    found.sort(key=lambda m: m.version)
    check_numbering([m.version for m in found])
    return found


def repeatables() -> list[Repeatable]:
    """The function files, in the order they are applied (by name)."""
    found = [Repeatable(entry.name, entry.read_text(encoding="utf-8")) for _, entry in _files("functions", _REPEATABLE)]
    return sorted(found, key=lambda r: r.name)


async def applied(conn: Conn) -> dict[int, str]:
    """Applied versions and their checksums; empty when the schema does not exist yet."""
    if not await conn.fetchval(q("migration_table_exists")):
        return {}
    return {r["version"]: r["checksum"] for r in await conn.fetch(q("migration_applied"))}


async def applied_repeatables(conn: Conn) -> dict[str, str]:
    """Applied function files and their checksums; empty before the first start that had them."""
    if not await conn.fetchval(q("repeatable_table_exists")):
        return {}
    return {r["name"]: r["checksum"] for r in await conn.fetch(q("repeatable_applied"))}


async def is_current(conn: Conn) -> bool:
    """True when every shipped migration is applied and every function file is applied as shipped."""
    done = await applied(conn)
    if not all(m.version in done for m in available()):
        return False
    functions = await applied_repeatables(conn)
    return all(functions.get(r.name) == r.checksum for r in repeatables())


async def migrate(conn: asyncpg.Connection, *, through: int | None = None) -> list[int]:
    """Apply the pending migrations, then the changed function files; return the versions applied.

    `through` stops after that version and applies no function file: the schema as that release left it (tests
    build old databases this way)."""
    await conn.execute("SELECT pg_advisory_lock($1, $2)", *MIGRATION_LOCK)
    try:
        await conn.execute(q("migration_bootstrap"))
        done = await applied(conn)
        newly: list[int] = []
        for m in available():
            if through is not None and m.version > through:
                break
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name}.sql changed after it was applied; "
                        "migrations are forward-only: add a new file instead"
                    )
                continue
            await _apply(conn, f"migration {m.version:04d}_{m.name}.sql", m.sql, q("migration_record"),
                         m.version, m.name, m.checksum)
            newly.append(m.version)
            log.info("migration_applied", version=m.version, name=m.name)
        if through is None:
            await _apply_functions(conn)
        return newly
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", *MIGRATION_LOCK)


async def _apply_functions(conn: asyncpg.Connection) -> None:
    await conn.execute(q("repeatable_bootstrap"))
    recorded = await applied_repeatables(conn)
    for r in repeatables():
        if recorded.get(r.name) == r.checksum:
            continue
        await _apply(conn, f"function file {r.name}", r.sql, q("repeatable_record"), r.name, r.checksum,
                     check_bodies=False)
        log.info("functions_applied", file=r.name)


async def _apply(conn: asyncpg.Connection, label: str, sql: str, record: str, *args: object,
                 check_bodies: bool = True) -> None:
    async with conn.transaction():
        if not check_bodies:
            # A SQL-language function's body is checked at CREATE against the functions that exist; one file may
            # call a function of a later file. pg_dump restores with this off for the same reason.
            await conn.execute("SET LOCAL check_function_bodies = off")
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            raise MigrationError(f"{label} failed: {exc}") from exc
        await conn.execute(record, *args)
