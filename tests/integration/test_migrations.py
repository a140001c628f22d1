"""The migrator: numbers without gaps, one home per function (the function files), a changed function file applied
again, and an upgrade from the last release before the function files ending at exactly the fresh schema."""

from __future__ import annotations

import asyncio
import datetime
import re
from pathlib import Path

import asyncpg
import pytest

from datesync.daemon.db.connect import connect
from datesync.daemon.db.migrate import FROZEN_THROUGH, available, check_numbering, is_current, migrate, repeatables
from datesync.daemon.embedded import bin_dir
from datesync.daemon.errors import MigrationError

ROOT = Path(__file__).resolve().parents[2]
DB = ROOT / "daemon" / "db"
CREATE_FUNCTION = re.compile(r"^CREATE (?:OR REPLACE )?FUNCTION datesync\.([a-z_]+)\(", re.MULTILINE)
CREATE_TRIGGER = re.compile(r"^CREATE (?:OR REPLACE )?TRIGGER ([a-z_]+)", re.MULTILINE)
CREATE_VIEW = re.compile(r"^CREATE (?:OR REPLACE )?VIEW datesync\.([a-z_]+)", re.MULTILINE)


def test_migration_numbers_run_without_gaps() -> None:
    versions = [m.version for m in available()]
    assert versions == list(range(1, len(versions) + 1))
    with pytest.raises(MigrationError, match="without gaps"):
        check_numbering([1, 2, 4])
    with pytest.raises(MigrationError, match="without gaps"):
        check_numbering([1, 2, 2, 3])


async def test_every_function_and_trigger_has_exactly_one_home(db: asyncpg.Connection) -> None:
    functions = "\n".join(r.sql for r in repeatables())
    defined = CREATE_FUNCTION.findall(functions)
    live = [r["proname"] for r in await db.fetch(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'datesync'")]
    assert sorted(defined) == sorted(live), "each live function once in daemon/db/functions, and nothing else"
    triggers = [r["tgname"] for r in await db.fetch(
        "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = 'datesync' AND NOT t.tgisinternal")]
    assert sorted(CREATE_TRIGGER.findall(functions)) == sorted(triggers)
    views = [r["viewname"] for r in await db.fetch("SELECT viewname FROM pg_views WHERE schemaname = 'datesync'")]
    assert sorted(CREATE_VIEW.findall(functions)) == sorted(views), "each view once in daemon/db/functions"
    for m in available():
        if m.version > FROZEN_THROUGH:
            assert not CREATE_FUNCTION.search(m.sql), f"{m.version:04d}_{m.name}.sql defines a function"
            assert not CREATE_TRIGGER.search(m.sql), f"{m.version:04d}_{m.name}.sql defines a trigger"
            assert not CREATE_VIEW.search(m.sql), f"{m.version:04d}_{m.name}.sql defines a view"


async def test_a_changed_function_file_is_applied_again(db: asyncpg.Connection) -> None:
    assert await is_current(db)
    # As if an older release had applied another body: the recorded checksum differs, and so does the function.
    await db.execute("UPDATE datesync.schema_repeatable SET checksum = 'older' WHERE name = '10_engine.sql'")
    await db.execute("CREATE OR REPLACE FUNCTION datesync.engine_on() RETURNS void LANGUAGE sql AS $$ SELECT $$")
    assert not await is_current(db)
    assert await migrate(db) == []
    assert await is_current(db)
    body = await db.fetchval("SELECT pg_get_functiondef('datesync.engine_on'::regproc)")
    assert "set_config('datesync.engine', 'on', true)" in body


async def _schema(dsn: str) -> str:
    """pg_dump's schema of datesync, without what differs between two equal schemas (comments, settings)."""
    proc = await asyncio.create_subprocess_exec(
        str(bin_dir() / "pg_dump"), "--schema-only", "--schema=datesync", "--no-owner", "--no-privileges", dsn,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    kept = [line for line in out.decode().splitlines()
            if line.strip() and not line.startswith(("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict",
                                                     "\\unrestrict"))]
    return "\n".join(kept)


async def test_an_upgrade_from_0006_with_live_data_ends_at_the_fresh_schema(empty_dsn: str, dsn: str) -> None:
    old = await connect(empty_dsn, "datesync-test")
    try:
        await migrate(old, through=FROZEN_THROUGH)
        # 0003 was never released: a real 0006 database has 1, 2, 4, 5, 6 only.
        await old.execute("DELETE FROM datesync.schema_migration WHERE version = 3")
        assert not await old.fetchval("SELECT to_regclass('datesync.schema_repeatable') IS NOT NULL")
        # Live data of that release: a finished batch, a running one with claimed dates, a queued one.
        day = datetime.date(2024, 1, 1)
        for offset in (0, 10, 20):
            await old.execute("INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $2)",
                              day + datetime.timedelta(days=offset), day + datetime.timedelta(days=offset + 2))
        claimed = await old.fetch("SELECT * FROM datesync.batch_expand_claim(3, 'w1', 3, 60, '{default}')")
        ids = [r["id"] for r in claimed if r["kind"] == "claimed"]
        await old.fetch("SELECT * FROM datesync.task_finish('w1', $1, $2, $3, $4, $5, $6, '{}', 0, 60, "
                        "'{default}')", ids, [1] * 3, ["succeeded"] * 3, [None] * 3, [1] * 3, [0.0] * 3)
        await old.fetch("SELECT * FROM datesync.batch_expand_claim(3, 'w1', 2, 60, '{default}')")
        before = await old.fetch("SELECT id, state::text, succeeded, running, queued FROM datesync.batch ORDER BY id")
        assert [r["state"] for r in before] == ["succeeded", "running", "queued"]

        assert await migrate(old) == [3, *(m.version for m in available() if m.version > FROZEN_THROUGH)]
        assert await is_current(old)
        after = await old.fetch("SELECT id, state::text, succeeded, running, queued FROM datesync.batch ORDER BY id")
        assert after == before
    finally:
        await old.close()
    upgraded, fresh = await _schema(empty_dsn), await _schema(dsn)
    assert upgraded == fresh
