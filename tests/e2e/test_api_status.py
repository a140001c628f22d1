"""GET /api/v1/sync-status/ (cards and per-date records) and GET /sources on a real server."""

from __future__ import annotations

import asyncpg
import httpx

from tests.support.server import live_server


async def seed(db: asyncpg.Connection) -> None:
    """Ten days of records in two sources, and work in flight."""
    await db.execute("INSERT INTO datesync.source (name, handler) VALUES ('shop', 'noop')")
    await db.execute("""
        INSERT INTO datesync.day (source, day, status, attempts, rows_synced, error, synced_at)
        SELECT 'default', d::date,
               (CASE WHEN extract(day FROM d) IN (3, 7) THEN 'failed' ELSE 'success' END)::datesync.day_status,
               1, 5, CASE WHEN extract(day FROM d) IN (3, 7) THEN 'boom' END,
               CASE WHEN extract(day FROM d) IN (3, 7) THEN NULL
                    ELSE '2025-10-11 08:00+00'::timestamptz + (d - '2025-10-01') END
        FROM generate_series('2025-10-01'::date, '2025-10-10', interval '1 day') d""")
    await db.execute("INSERT INTO datesync.day (source, day, status, synced_at) "
                     "VALUES ('shop', '2025-10-01', 'success', '2025-12-01 00:00+00')")
    await db.execute("INSERT INTO datesync.batch (start_date, end_date, requested_by) "
                     "VALUES ('2025-09-01', '2025-09-05', 'test')")


async def test_the_summary_has_cards_and_filterable_paginated_records(dsn: str, db: asyncpg.Connection) -> None:
    await seed(db)
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        everything = (await client.get("/")).json()["data"]
        default = (await client.get("/", params={"source": "default"})).json()["data"]
        failed = (await client.get("/", params={"status": "failed", "source": "default"})).json()["data"]
        window = (await client.get("/", params={"from": "2025-10-04", "to": "2025-10-06", "limit": 2})).json()["data"]
        second = (await client.get("/", params={"from": "2025-10-04", "to": "2025-10-06", "limit": 2,
                                                "offset": 2})).json()["data"]
        bad = await client.get("/", params={"from": "2025-10-06", "to": "2025-10-04", "status": "done",
                                            "limit": "x"})
        bad_dates = await client.get("/", params={"from": "2025/10/01", "to": "2025-02-30"})
        no_slash = await client.get(live.api, follow_redirects=True)
    assert everything["cards"] == {"synced": 9, "failed": 2, "running": 0, "queued": 5,
                                   "last_success_at": "2025-12-01T00:00:00+00:00", "waiting": 0, "stale": 0}
    assert everything["total"] == 11 and everything["limit"] == 100 and everything["offset"] == 0
    assert default["cards"]["synced"] == 8 and default["cards"]["last_success_at"] == "2025-10-20T08:00:00+00:00"
    assert [r["day"] for r in failed["records"]] == ["2025-10-07", "2025-10-03"]
    assert failed["records"][0] == {"source": "default", "day": "2025-10-07", "status": "failed", "attempts": 1,
                                    "rows_synced": 5, "error": "boom", "batch_id": None, "synced_at": None,
                                    "updated_at": failed["records"][0]["updated_at"], "stale_since": None}
    assert [r["day"] for r in window["records"] + second["records"]] == ["2025-10-06", "2025-10-05", "2025-10-04"]
    assert window["total"] == 3
    assert bad.status_code == 422
    assert sorted(e["field"] for e in bad.json()["errors"]) == ["from", "limit", "status"]
    assert sorted(e["field"] for e in bad_dates.json()["errors"]) == ["from", "to"]
    assert no_slash.status_code == 200


async def test_sources_are_listed(dsn: str, db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO datesync.source (name, handler) VALUES ('shop', 'noop')")
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        answer = await client.get("/sources")
    assert answer.json() == {"status": "success", "data": {"sources": [{"name": "default", "handler": "demo"},
                                                                       {"name": "shop", "handler": "noop"}]}}
