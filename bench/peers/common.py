"""What the peer drain scripts share: a scratch database, the server's own counters, the summary line and the
event loop. Run the scripts from anywhere; Python finds this module beside them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

COUNTERS = ("xact_commit", "tup_inserted", "tup_updated", "tup_deleted")


def dsn_for_db(dsn: str, dbname: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + dbname))


@contextlib.asynccontextmanager
async def scratch_database(admin_dsn: str, prefix: str) -> AsyncIterator[tuple[str, str]]:
    """A new database next to `admin_dsn`'s, dropped afterwards: (its name, its DSN)."""
    dbname = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        await admin.close()
    try:
        yield dbname, dsn_for_db(admin_dsn, dbname)
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        finally:
            await admin.close()


async def db_counters(admin_dsn: str, dbname: str) -> dict[str, int]:
    """pg_stat_database counters of the scratch database (read through the admin DSN)."""
    await asyncio.sleep(0.6)  # let exited backends flush their statistics
    conn = await asyncpg.connect(admin_dsn)
    try:
        row = await conn.fetchrow(f"SELECT {', '.join(COUNTERS)} FROM pg_stat_database WHERE datname = $1", dbname)
    finally:
        await conn.close()
    return dict(row)


def per_job(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    return {f"{k}_per_job": round((after[k] - before[k]) / n, 2) for k in before}


def summarize(results: list[dict[str, Any]], **fields: Any) -> int:
    """Print the summary line (the median over the repeats); the exit code says whether every repeat checked out."""
    rates = [r["jobs_per_s"] for r in results]
    summary = {"summary": True, **fields, "repeats": len(results), "jobs_per_s": rates,
               "median_jobs_per_s": round(statistics.median(rates), 1), "all_ok": all(r["ok"] for r in results)}
    print(json.dumps(summary), flush=True)
    return 0 if summary["all_ok"] else 1


def run(main: Coroutine[Any, Any, int], loop: str) -> int:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
