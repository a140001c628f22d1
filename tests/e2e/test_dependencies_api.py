"""Sources that depend on each other through the API and the CLI: a request says which dates will wait, and
with_upstream / --with-upstream and cascade / --cascade request the linked batches, each expanded after those
before it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.server import live_server

DATESYNC = str(Path(sys.executable).with_name("datesync"))


@pytest.fixture
async def graph(db: asyncpg.Connection) -> asyncpg.Connection:
    """orders; rollup after the seven days of orders ending on its date (as DATESYNC_ROLLUP_AFTER=orders:-6..0)."""
    for name in ("orders", "rollup"):
        await db.execute("INSERT INTO datesync.source (name, handler) VALUES ($1, 'noop')", name)
    await db.execute("INSERT INTO datesync.dependency (source, upstream, lo, hi) VALUES ('rollup', 'orders', -6, 0)")
    return db


async def test_a_request_says_how_many_dates_will_wait_for_what(graph: asyncpg.Connection, dsn: str) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        answer = await client.post("/sync/batch", json={"start_date": "2025-10-01", "end_date": "2025-10-03",
                                                        "source": "rollup"})
        zh = await client.post("/sync/batch", json={"start_date": "2025-10-05", "end_date": "2025-10-05",
                                                    "source": "rollup"}, headers={"Accept-Language": "zh"})
        bad = await client.post("/sync/batch", json={"start_date": "2025-10-01", "end_date": "2025-10-03",
                                                     "source": "rollup", "with_upstream": "yes"})
    assert answer.status_code == 202, answer.text
    data = answer.json()["data"]
    assert (data["waiting"], data["linked"]) == (3, [])
    assert data["message"] == ("Batch sync started: 3 days will be synced. 3 of its days wait for orders, not "
                               "synced yet (request those too with with_upstream).")
    assert "1 天需等待尚未同步的 orders" in zh.json()["data"]["message"]
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "with_upstream"
    assert await graph.fetchval("SELECT count(*) FROM datesync.batch") == 2


async def test_with_upstream_requests_the_window_first_and_links_the_batch_after_it(
    graph: asyncpg.Connection, dsn: str
) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        answer = await client.post("/sync/batch", json={"start_date": "2025-10-10", "end_date": "2025-10-11",
                                                        "source": "rollup", "with_upstream": True})
    assert answer.status_code == 202, answer.text
    data = answer.json()["data"]
    [upstream] = data["linked"]
    assert upstream | {"batch_id": 0} == {"batch_id": 0, "role": "upstream", "source": "orders",
                                          "start_date": "2025-10-04", "end_date": "2025-10-11", "deduplicated": False}
    assert f"Batch {upstream['batch_id']} requested for orders 2025-10-04..2025-10-11 first" in data["message"]
    rows = await graph.fetch("SELECT id, source, force, after_batches FROM datesync.batch ORDER BY id")
    assert [(r["source"], r["force"], r["after_batches"]) for r in rows] == [
        ("orders", False, []), ("rollup", False, [upstream["batch_id"]])]


async def test_cascade_reruns_the_dates_built_on_the_range_after_it(graph: asyncpg.Connection, dsn: str) -> None:
    # rollup has synced 09-30, 10-02 and 10-05: the span of those built on orders 10-01 is 10-02..10-05.
    await graph.execute("INSERT INTO datesync.day (source, day, status, synced_at) SELECT 'rollup', d, 'success', "
                        "now() FROM unnest('{2025-09-30,2025-10-02,2025-10-05}'::date[]) d")
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        answer = await client.post("/sync/batch", json={"start_date": "2025-10-01", "end_date": "2025-10-01",
                                                        "source": "orders", "force": True, "cascade": True})
        again = await client.post("/sync/batch", json={"start_date": "2025-10-01", "end_date": "2025-10-01",
                                                       "source": "orders", "force": True, "cascade": True})
    assert answer.status_code == 202, answer.text
    [downstream] = answer.json()["data"]["linked"]
    assert (downstream["role"], downstream["source"], downstream["start_date"], downstream["end_date"]) == (
        "downstream", "rollup", "2025-10-02", "2025-10-05")
    rows = await graph.fetch("SELECT id, source, force, after_batches FROM datesync.batch ORDER BY id")
    assert [(r["source"], r["force"], r["after_batches"]) for r in rows] == [
        ("orders", True, []), ("rollup", True, [rows[0]["id"]])]
    # The same request again while both are queued: both deduplicated, nothing new.
    assert again.status_code == 200 and again.json()["data"]["linked"][0]["deduplicated"] is True
    assert await graph.fetchval("SELECT count(*) FROM datesync.batch") == 2


async def test_the_cli_requests_upstream_dates_and_says_so(graph: asyncpg.Connection, dsn: str) -> None:
    env = {**os.environ, "DATABASE_URL": dsn, "LOG_FORMAT": "console", "COLUMNS": "400", "LANG": "C.UTF-8",
           "DATESYNC_SOURCES": "orders=noop,rollup=noop"}
    proc = await asyncio.create_subprocess_exec(DATESYNC, "batch", "2025-10-10", "2025-10-10", "--source", "rollup",
                                                "--with-upstream", env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    rows = await graph.fetch("SELECT id, source, start_date::text, after_batches FROM datesync.batch ORDER BY id")
    assert [(r["source"], r["start_date"]) for r in rows] == [("orders", "2025-10-04"), ("rollup", "2025-10-10")]
    assert out.decode().split() == [str(rows[1]["id"])]
    assert f"Batch {rows[0]['id']} requested for orders 2025-10-04..2025-10-10 first" in " ".join(err.decode().split())
    # The CLI does not run dates: it leaves the daemon's dependencies as they are.
    assert await graph.fetchval("SELECT count(*) FROM datesync.dependency") == 1
