"""`sql`: run the statements of `DATESYNC_SQL_FILE` for each date, in one transaction, with `$1` the date.

The file may hold several statements separated by `;` (quotes, dollar quotes and comments are respected).
Rows synced are the rows the INSERT, UPDATE, DELETE and MERGE statements report; other statements count 0.

At start every statement is checked against the database inside a transaction that is rolled back: those
that use `$1` are prepared (syntax, tables, columns, types); those that do not are run, so that a
`CREATE TABLE IF NOT EXISTS` at the top of the file is seen by the statements after it. A file that does not
parse, or names a table that is not there, stops the daemon at start with the statement's number and line.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import re
from collections.abc import Callable
from pathlib import Path

import asyncpg

from datesync.daemon.db.connect import Conn
from datesync.daemon.errors import HandlerError, SettingsError
from datesync.daemon.sources import SourceEnv
from datesync.daemon.sync.context import SyncContext
from datesync.daemon.sync.handlers.base import Handler

# Runs of a date lost to the catalog race of CREATE ... IF NOT EXISTS (SqlHandler.sync) before it fails.
CATALOG_RACE_TRIES = 3
_COUNTED = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE"})
_TRANSACTION_CONTROL = re.compile(
    r"(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE\s+TRANSACTION)\b", re.I)
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
Convert = Callable[[datetime.date], object]
# What $1 may be declared as, and how the date is passed for it.
_DATE_PARAM: dict[str, Convert] = {
    "date": lambda d: d,
    "text": lambda d: d.isoformat(),
    "varchar": lambda d: d.isoformat(),
    "timestamp": lambda d: datetime.datetime.combine(d, datetime.time()),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Statement:
    text: str
    line: int  # where it starts in the file, for messages


def split_statements(script: str) -> list[Statement]:
    """Split SQL text on top-level `;`, leaving quoted text, dollar-quoted bodies and comments intact;
    statements that hold only comments are dropped."""
    statements: list[Statement] = []
    i, n = 0, len(script)
    start = -1  # where the current statement's code starts (after leading comments); -1 before any
    while i < n:
        c = script[i]
        if c == "-" and script.startswith("--", i):
            end = script.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if c == "/" and script.startswith("/*", i):
            i = _skip_block_comment(script, i)
            continue
        if c == ";":
            if start >= 0:
                statements.append(_statement(script, start, i))
            start = -1
            i += 1
            continue
        if start < 0 and not c.isspace():
            start = i
        if c in ("'", '"'):
            escapes = c == "'" and i > 0 and script[i - 1] in "eE" and (i < 2 or not script[i - 2].isalnum())
            i = _skip_quoted(script, i, c, escapes)
        elif c == "$" and (match := _DOLLAR_TAG.match(script, i)) and (i == 0 or not script[i - 1].isalnum()):
            end = script.find(match.group(0), match.end())
            if end < 0:
                raise ValueError(f"line {_line(script, i)}: dollar quote {match.group(0)} is never closed")
            i = end + len(match.group(0))
        else:
            i += 1
    if start >= 0:
        statements.append(_statement(script, start, n))
    return statements


def _statement(script: str, start: int, end: int) -> Statement:
    return Statement(script[start:end].strip(), _line(script, start))


def _line(script: str, offset: int) -> int:
    return script.count("\n", 0, offset) + 1


def _skip_block_comment(script: str, i: int) -> int:
    depth, i = 1, i + 2  # PostgreSQL block comments nest
    while depth and i < len(script):
        if script.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif script.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    if depth:
        raise ValueError("a /* comment is never closed")
    return i


def _skip_quoted(script: str, i: int, quote: str, escapes: bool) -> int:
    start, i = i, i + 1
    while i < len(script):
        c = script[i]
        if escapes and c == "\\":
            i += 2
        elif c == quote:
            if script.startswith(quote * 2, i):
                i += 2  # a doubled quote is a literal quote
            else:
                return i + 1
        else:
            i += 1
    raise ValueError(f"line {_line(script, start)}: a {quote} quote is never closed")


def rows_affected(status: str) -> int:
    """Rows reported by a command status such as 'INSERT 0 5' or 'UPDATE 3'; 0 for other commands."""
    words = status.split()
    if len(words) >= 2 and words[0] in _COUNTED and words[-1].isdigit():
        return int(words[-1])
    return 0


class SqlHandler:
    """Runs one file's statements per date; checked against the database once, at start."""

    def __init__(self, path: Path, statements: list[Statement], var: str) -> None:
        self.path = path
        self.statements = statements
        self.var = var
        # Per statement, how to pass the date as $1 (None: it takes no parameter); known after setup().
        self._converters: list[Convert | None] = []

    @classmethod
    def from_env(cls, env: SourceEnv) -> SqlHandler:
        var = env.name("DATESYNC_SQL_FILE")
        raw = env.get("DATESYNC_SQL_FILE")
        if raw is None:
            raise SettingsError(f"{var} is required for the sql handler (a file of SQL with $1 the date)")
        path = Path(raw)
        try:
            script = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{var}={raw!r} cannot be read: {exc}") from None
        try:
            statements = split_statements(script)
        except ValueError as exc:
            raise HandlerError(f"{var}={raw!r} does not parse: {exc}") from None
        if not statements:
            raise HandlerError(f"{var}={raw!r} holds no SQL statement")
        for number, stmt in enumerate(statements, 1):
            if _TRANSACTION_CONTROL.match(stmt.text):
                raise HandlerError(
                    f"{var}={raw!r}: statement {number} (line {stmt.line}) controls the transaction; remove it, "
                    "each date already runs the whole file in one transaction"
                )
        return cls(path, statements, var)

    def _where(self, number: int, stmt: Statement) -> str:
        return f"{self.var}={str(self.path)!r}, statement {number} (line {stmt.line})"

    async def setup(self, pool: asyncpg.Pool) -> None:
        """Check every statement against the database, in a transaction that is rolled back."""
        converters: list[Convert | None] = []
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                for number, stmt in enumerate(self.statements, 1):
                    converters.append(await self._check(conn, number, stmt))
            finally:
                await tx.rollback()
        self._converters = converters

    async def _check(self, conn: Conn, number: int, stmt: Statement) -> Convert | None:
        where = self._where(number, stmt)
        try:
            prepared = await conn.prepare(stmt.text)
            params = prepared.get_parameters()
            if not params:
                await conn.execute(stmt.text)  # rolled back; later statements may need what it creates
                return None
        except asyncpg.PostgresError as exc:
            raise HandlerError(f"{where} is refused by the database: {type(exc).__name__}: {exc}") from None
        if len(params) > 1:
            raise HandlerError(f"{where} uses ${len(params)}; only $1 (the date) is given")
        convert = _DATE_PARAM.get(params[0].name)
        if convert is None:
            raise HandlerError(f"{where}: $1 is read as {params[0].name}; write $1::date")
        return convert

    async def sync(self, day: datetime.date, ctx: SyncContext) -> int:
        if len(self._converters) != len(self.statements):
            raise RuntimeError("the sql handler was not set up; the daemon runs setup() at start")
        for tries in itertools.count(1):
            try:
                return await self._run(day, ctx)
            except (asyncpg.UniqueViolationError, asyncpg.DuplicateObjectError, asyncpg.DuplicateTableError) as exc:
                # Two first dates running the file's CREATE ... IF NOT EXISTS at once race on the catalog: the
                # loser gets a unique violation on a pg_catalog index (pg_type_typname_nsp_index) or "type ...
                # already exists" instead of the notice IF NOT EXISTS promises. Run again: the winner has committed
                # by then, and IF NOT EXISTS now sees it.
                catalog = not isinstance(exc, asyncpg.UniqueViolationError) or (exc.constraint_name or "").startswith(
                    "pg_")
                if tries >= CATALOG_RACE_TRIES or not catalog:
                    raise
        raise AssertionError("unreachable")

    async def _run(self, day: datetime.date, ctx: SyncContext) -> int:
        rows = 0
        async with ctx.db.transaction():
            for stmt, convert in zip(self.statements, self._converters, strict=True):
                if convert is None:
                    status = await ctx.db.execute(stmt.text)
                else:
                    status = await ctx.db.execute(stmt.text, convert(day))
                rows += rows_affected(status)
        return rows


def handler(env: SourceEnv | None = None) -> Handler:
    made = SqlHandler.from_env(env or SourceEnv())
    return Handler(name="sql", sync=made.sync, setup=made.setup)
