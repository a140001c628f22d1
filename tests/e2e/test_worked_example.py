"""The README's worked example of sources that depend on each other, as written: the orders API stand-in and a
real `datesync run` with the README's settings, driven through the CLI. The roll-up waits for its seven days of
orders, sums them right, goes stale on a forced re-sync and is re-run by a cascade."""

from __future__ import annotations

import asyncio
import datetime
import os
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from tests.support.daemons import ROOT
from tests.support.server import free_port
from tests.support.service import DATESYNC, datesync_run
from tests.support.waiting import wait_for

EXAMPLES = ROOT / "docs" / "examples"
SETTINGS = {
    "DATESYNC_SOURCES": "orders=http, rollup=sql",
    "DATESYNC_ORDERS_HTTP_TABLE": "raw_orders",
    "DATESYNC_ROLLUP_SQL_FILE": "docs/examples/rollup_7d.sql",
    "DATESYNC_ROLLUP_AFTER": "orders:-6..0",
}
D = datetime.date


def test_the_readme_gives_these_settings() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, value in SETTINGS.items():
        assert f"{name}={value}" in readme or f"{name}='{value}'" in readme, name
    assert "DATESYNC_ORDERS_HTTP_URL='http://127.0.0.1:8100/orders?day={date}'" in readme


async def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(str(DATESYNC), *args, env=env, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, " ".join(out.decode().split())


async def test_the_worked_example_runs_as_the_readme_says(dsn: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from orders_api import orders_of  # the stand-in's own data, to check the sums against
    finally:
        sys.path.remove(str(EXAMPLES))
    api_port, port = free_port(), free_port()
    env = {**os.environ, **SETTINGS, "DATABASE_URL": dsn, "PORT": str(port), "LOG_FORMAT": "json", "COLUMNS": "200",
           "DATESYNC_ORDERS_HTTP_URL": f"http://127.0.0.1:{api_port}/orders?day={{date}}",
           "DATESYNC_URL": f"http://127.0.0.1:{port}"}
    api = await asyncio.create_subprocess_exec(sys.executable, str(EXAMPLES / "orders_api.py"), str(api_port),
                                               stdout=asyncio.subprocess.DEVNULL)
    try:
        async with datesync_run(env, tmp_path / "server.log"):
            await follow_the_readme(env, db, orders_of)
    finally:
        api.terminate()
        await api.wait()


async def follow_the_readme(env: dict[str, str], db: asyncpg.Connection,
                            orders_of: Callable[[datetime.date], list[dict[str, Any]]]) -> None:
    code, text = await cli(env, "batch", "2026-11-24", "2026-11-30", "--source", "rollup")
    assert code == 0 and "7 of its days wait for orders, not synced yet" in text, text
    code, text = await cli(env, "batch", "2026-11-24", "2026-11-30", "--source", "rollup", "--with-upstream",
                           "--follow")
    assert code == 0, text
    assert "Batch 2 requested for orders 2026-11-18..2026-11-30 first" in text, text
    assert "batch 1 succeeded: 7 succeeded, 0 failed" in text, text
    for day, orders, revenue in await db.fetch("SELECT day, orders, revenue FROM orders_7d ORDER BY day"):
        window = [o for n in range(7) for o in orders_of(day - datetime.timedelta(days=n))]
        assert orders == len(window), day
        assert revenue == sum(Decimal(str(o["amount"])) for o in window), day
    # Every roll-up date started after its last upstream date had synced.
    late = await db.fetchval("""
        SELECT count(*) FROM datesync.task r JOIN datesync.day o
          ON o.source = 'orders' AND o.day BETWEEN r.day - 6 AND r.day
        WHERE r.source = 'rollup' AND r.started_at < o.synced_at""")
    assert late == 0
    code, text = await cli(env, "batch", "2026-11-28", "2026-11-28", "--source", "orders", "--force", "--follow")
    assert code == 0, text
    code, text = await cli(env, "gaps", "2026-11-24", "2026-11-30", "--source", "rollup")
    assert "3 of 7 dates of rollup are missing, failed or stale, in 1 range" in text, text
    code, text = await cli(env, "batch", "2026-11-27", "2026-11-27", "--source", "orders", "--force", "--cascade")
    assert code == 0 and "Batch 5 requested for rollup 2026-11-27..2026-11-30 after it (cascade)" in text, text

    async def fresh() -> bool:
        return await db.fetchval("SELECT state = 'succeeded' FROM datesync.batch WHERE id = 5") and not \
            await db.fetchval("SELECT count(*) FROM datesync.day WHERE stale_since IS NOT NULL")

    await wait_for(fresh, timeout=30)
