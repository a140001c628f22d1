"""The `sql` handler: a real daily roll-up run by a daemon, and files that are refused at start."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import asyncpg
import pytest
import structlog

from datesync.daemon.db.connect import create_pool
from datesync.daemon.errors import HandlerError, SettingsError
from datesync.daemon.settings import Settings
from datesync.daemon.sources import SourceEnv
from datesync.daemon.sync import handlers
from datesync.daemon.sync.context import SyncContext
from datesync.daemon.sync.handlers.sql import rows_affected, split_statements
from datesync.daemon.sync.worker import Daemon
from tests.support.waiting import wait_for

ROLLUP = """
-- A daily revenue roll-up. The table is created by the file itself the first time.
CREATE TABLE IF NOT EXISTS daily_revenue (
    day     date NOT NULL,
    region  text NOT NULL,
    orders  integer NOT NULL,
    revenue numeric NOT NULL,
    PRIMARY KEY (day, region)
);

DELETE FROM daily_revenue WHERE day = $1;   -- idempotent: rebuild the day

INSERT INTO daily_revenue (day, region, orders, revenue)
SELECT $1, region, count(*), sum(amount)
FROM sales
WHERE sold_at >= $1 AND sold_at < $1 + 1   /* the date, whole */
GROUP BY region;
"""


def load(path: Path) -> handlers.Handler:
    return handlers.load("sql", "default", {"DATESYNC_SQL_FILE": str(path)})


async def test_a_rollup_runs_per_date_in_a_daemon(dsn: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE sales (id serial, sold_at date, region text, amount numeric)")
    await db.execute("""
        INSERT INTO sales (sold_at, region, amount)
        SELECT '2025-05-01'::date + (i % 3), CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, i
        FROM generate_series(1, 30) AS i""")
    path = tmp_path / "rollup.sql"
    path.write_text(ROLLUP)
    settings = Settings(retry_delay=0.05, poll_interval=2)
    pool = await create_pool(dsn, settings.pool_size, "t")
    daemon = Daemon(settings, pool, {"default": load(path)}, dsn, grace=2)
    task = asyncio.create_task(daemon.run())
    try:
        await db.execute("INSERT INTO datesync.batch (start_date, end_date) VALUES ('2025-05-01', '2025-05-03')")
        await wait_for(lambda: db.fetchval("SELECT count(*) = 3 FROM datesync.day WHERE status = 'success'"))
        # A forced re-run rebuilds the days: the DELETE counts too (rows affected, as documented).
        await db.execute("UPDATE sales SET amount = amount * 2 WHERE sold_at = '2025-05-02'")
        await db.execute("INSERT INTO datesync.batch (start_date, end_date, force) "
                         "VALUES ('2025-05-02', '2025-05-02', true)")
        await wait_for(lambda: db.fetchval("SELECT state = 'succeeded' FROM datesync.batch WHERE id = 2"))
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)
        await pool.close()
    expected = await db.fetch("SELECT sold_at, region, count(*)::int AS n, sum(amount) AS revenue FROM sales "
                              "GROUP BY 1, 2 ORDER BY 1, 2")
    got = await db.fetch("SELECT day, region, orders, revenue FROM daily_revenue ORDER BY 1, 2")
    assert [tuple(r) for r in got] == [tuple(r) for r in expected] and len(got) == 6
    synced = await db.fetch("SELECT day, rows_synced FROM datesync.day ORDER BY day")
    assert [r["rows_synced"] for r in synced] == [2, 4, 2]  # 2 regions inserted; the re-run also deleted 2


async def test_first_dates_run_at_once_all_create_the_table_without_failing(dsn: str, db: asyncpg.Connection,
                                                                           tmp_path: Path) -> None:
    # The file's CREATE TABLE IF NOT EXISTS, run by several first dates at once: PostgreSQL lets two of them race
    # on its catalog (a unique violation on pg_type's index), which once failed the attempt of all but one.
    path = tmp_path / "rollup.sql"
    path.write_text("CREATE TABLE IF NOT EXISTS built (day date PRIMARY KEY, at timestamptz);\n"
                    "INSERT INTO built VALUES ($1, now());")
    handler = load(path)
    pool = await create_pool(dsn, 8, "t")
    try:
        assert handler.setup is not None
        await handler.setup(pool)

        async def one(n: int) -> int:
            async with pool.acquire() as conn:
                day = datetime.date(2025, 1, 1) + datetime.timedelta(days=n)
                ctx = SyncContext(day=day, db=conn, log=structlog.get_logger(), attempt=1, batch_id=0,
                                  source="default", task_id=n, worker="t")
                return await handler.sync(day, ctx)

        for _ in range(3):  # the race is won or lost by timing: give it several chances to show
            await db.execute("DROP TABLE IF EXISTS built")
            assert await asyncio.gather(*(one(n) for n in range(8))) == [1] * 8
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM built") == 8


async def test_the_whole_file_is_one_transaction(dsn: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE t (day date PRIMARY KEY, n int CHECK (n < 10))")
    path = tmp_path / "two.sql"
    path.write_text("INSERT INTO t VALUES ($1, 1);\nUPDATE t SET n = 99 WHERE day = $1::date;")
    handler = load(path)
    pool = await create_pool(dsn, 2, "t")
    try:
        assert handler.setup is not None
        await handler.setup(pool)
        async with pool.acquire() as conn:
            ctx = SyncContext(day=datetime.date(2025, 1, 1), db=conn, log=structlog.get_logger(), attempt=1,
                              batch_id=0, source="default", task_id=0, worker="t")
            with pytest.raises(asyncpg.CheckViolationError):
                await handler.sync(ctx.day, ctx)
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM t") == 0  # the INSERT was rolled back with the UPDATE


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC 1", r"statement 1 \(line 1\) is refused by the database: PostgresSyntaxError"),
        ("-- fine\nSELECT 1;\n\nINSERT INTO nowhere VALUES ($1)", r"statement 2 \(line 4\) is refused.*nowhere"),
        ("SELECT $1::date, $2::int", r"statement 1 \(line 1\) uses \$2; only \$1 \(the date\) is given"),
        ("SELECT $1::int", r"statement 1 \(line 1\): \$1 is read as int4; write \$1::date"),
    ],
)
async def test_a_file_the_database_refuses_stops_the_start(
    dsn: str, db: asyncpg.Connection, tmp_path: Path, sql: str, message: str
) -> None:
    path = tmp_path / "bad.sql"
    path.write_text(sql)
    settings = Settings(retry_delay=0.05, poll_interval=2)
    pool = await create_pool(dsn, settings.pool_size, "t")
    try:
        daemon = Daemon(settings, pool, {"default": load(path)}, dsn, grace=1)
        with pytest.raises(HandlerError, match=rf"DATESYNC_SQL_FILE='{path}', {message}"):
            await asyncio.wait_for(daemon.run(), 10)
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM datesync.task") == 0


def test_files_that_cannot_be_used_are_refused_when_loaded(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="DATESYNC_SQL_FILE is required"):
        handlers.load("sql", "default", {})
    with pytest.raises(SettingsError, match=r"DATESYNC_SQL_FILE='/nonexistent.sql' cannot be read"):
        handlers.load("sql", "default", {"DATESYNC_SQL_FILE": "/nonexistent.sql"})
    for text, message in [
        ("  -- only a comment\n", "holds no SQL statement"),
        ("SELECT 'unterminated", "quote is never closed"),
        ("BEGIN; SELECT 1; COMMIT;", r"statement 1 \(line 1\) controls the transaction"),
    ]:
        path = tmp_path / "f.sql"
        path.write_text(text)
        with pytest.raises(HandlerError, match=message):
            load(path)
    path = tmp_path / "g.sql"
    path.write_text("SELECT 1")
    env = {"DATESYNC_SQL_FILE": str(path), "DATESYNC_ROLLUP_SQL_FILE": "/missing.sql"}
    with pytest.raises(SettingsError, match=r"DATESYNC_ROLLUP_SQL_FILE='/missing\.sql' cannot be read"):
        handlers.load("sql", "rollup", env)
    assert SourceEnv("other", env).get("DATESYNC_SQL_FILE") == str(path)


def test_statements_are_split_outside_quotes_and_comments() -> None:
    script = """
    INSERT INTO t VALUES ('a;b', "we;ird", E'it\\'s;');  -- a comment; with a semicolon
    /* block; /* nested; */ still comment; */
    CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$;
    DO $$ BEGIN PERFORM 1; END $$;
    SELECT $1::date;
    ;;
    """
    statements = split_statements(script)
    assert [s.text.split()[0] for s in statements] == ["INSERT", "CREATE", "DO", "SELECT"]
    assert statements[0].text == """INSERT INTO t VALUES ('a;b', "we;ird", E'it\\'s;')"""
    assert [s.line for s in statements] == [2, 4, 5, 6]
    assert statements[3].text == "SELECT $1::date"
    assert rows_affected("INSERT 0 5") == 5 and rows_affected("UPDATE 3") == 3 and rows_affected("MERGE 2") == 2
    assert rows_affected("SELECT 7") == 0 and rows_affected("CREATE TABLE") == 0
