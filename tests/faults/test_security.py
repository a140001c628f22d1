"""Security review of the web process: the token, CORS, cross-site requests, the SSE cap, secrets kept out of
answers and logs, and every SQL statement parameterised."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.faults import abuse
from tests.faults.common import SUITE
from tests.faults.dbs import DedicatedServer

ROOT = Path(__file__).resolve().parents[2]


async def test_token_cors_cross_site_posts_and_the_sse_cap(dsn: str, seed: int) -> None:
    fig = await abuse.security(dsn, seed, SUITE)
    assert not fig.problems, fig.failure()


SQL_METHODS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare", "cursor"}
# Statements built from identifiers the code itself validates and quotes (no value is ever spliced in).
SPLICED_IDENTIFIERS = {
    ("daemon/sync/handlers/http.py", "CREATE SCHEMA"),  # quote_table() validated and quoted it
    ("datesync/bench.py", "DATABASE"),  # a name made of a uuid
}


def _spliced_sql(path: Path) -> list[str]:
    """Calls of asyncpg's query methods whose statement is built by formatting rather than passed as text with
    $n parameters."""
    found = []
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
                and node.func.attr in SQL_METHODS):
            continue
        first = node.args[0]
        built = isinstance(first, ast.JoinedStr | ast.BinOp) or (
            isinstance(first, ast.Call) and isinstance(first.func, ast.Attribute) and first.func.attr == "format")
        if not built:
            continue
        text = ast.get_source_segment(source, first) or ""
        rel = str(path.relative_to(ROOT))
        if not any(rel == f and marker in text for f, marker in SPLICED_IDENTIFIERS):
            found.append(f"{rel}:{node.lineno}: {text[:100]}")
    return found


def test_every_sql_statement_is_parameterised() -> None:
    """No value reaches SQL by string formatting: statements are constants (daemon/db/sql/*.sql, q(name)) with
    $n parameters; the only formatted ones splice identifiers the code validated and quoted."""
    found = [hit for package in ("daemon", "web", "datesync") for path in sorted((ROOT / package).rglob("*.py"))
             for hit in _spliced_sql(path)]
    assert found == [], "\n".join(found)


async def test_with_the_database_down_answers_are_503_and_leak_no_secret(own_server: DedicatedServer,
                                                                          seed: int) -> None:
    fig = await abuse.web_database_down(own_server, seed, SUITE)
    assert not fig.problems, fig.failure()
