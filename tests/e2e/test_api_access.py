"""DATESYNC_API_TOKEN and DATESYNC_CORS_ORIGINS on a real server."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from datesync.daemon.settings import Settings
from tests.support.server import live_server

GOOD = {"start_date": "2025-10-01", "end_date": "2025-10-03"}
TOKEN = "s3cret-token"
ORIGIN = "https://status.example.com"
LOCKED = Settings(retry_delay=0.05, poll_interval=5, api_token=TOKEN, cors_origins=(ORIGIN, "http://localhost:3000"))


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x",
                                           "Bearer", f"Bearer {TOKEN[:-1]}"])
async def test_mutations_need_the_bearer_token(dsn: str, db: asyncpg.Connection, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with live_server(dsn, LOCKED) as live, httpx.AsyncClient(base_url=live.api, headers=headers) as client:
        answers = [await client.post("/sync/batch", json=GOOD), await client.post("/sync/batch", content=b"{bad"),
                   await client.post("/batches/1/cancel"), await client.post("/batches/1/retry")]
    for answer in answers:
        assert answer.status_code == 401, answer.text
        assert answer.json()["errors"][0]["field"] == "Authorization"
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in answer.text
    assert await db.fetchval("SELECT count(*) FROM datesync.batch") == 0


async def test_the_right_token_mutates_and_reads_stay_open(dsn: str) -> None:
    async with live_server(dsn, LOCKED) as live, httpx.AsyncClient(base_url=live.api) as client:
        accepted = await client.post("/sync/batch", json=GOOD, headers={"Authorization": f"Bearer {TOKEN}"})
        batch_id = accepted.json()["data"]["batch_id"]
        cancel = await client.post(f"/batches/{batch_id}/cancel", headers={"Authorization": f"bearer {TOKEN}"})
        reads = [await client.get(p) for p in ("/", "/batches", f"/batches/{batch_id}", "/sources")]
    assert accepted.status_code == 202 and cancel.status_code == 202
    assert [r.status_code for r in reads] == [200, 200, 200, 200]


async def test_cors_allows_exactly_the_configured_origins(dsn: str) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type, idempotency-key, last-event-id"}
    async with live_server(dsn, LOCKED) as live, httpx.AsyncClient(base_url=live.api) as client:
        allowed = await client.options("/sync/batch", headers={"Origin": ORIGIN, **preflight})
        other = await client.options("/sync/batch", headers={"Origin": "https://evil.example", **preflight})
        simple = await client.get("/batches", headers={"Origin": ORIGIN})
        simple_other = await client.get("/batches", headers={"Origin": "https://evil.example"})
        refused = await client.post("/sync/batch", json=GOOD, headers={"Origin": ORIGIN})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    for name in ("authorization", "content-type", "idempotency-key", "last-event-id"):
        assert name in allowed_headers
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in simple_other.headers
    # Error answers carry the CORS headers too, so a browser front end can read the envelope.
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN


async def test_without_settings_there_is_no_token_and_no_cors(dsn: str) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        accepted = await client.post("/sync/batch", json=GOOD)
        # An origin that is not configured may not mutate, with or without Sec-Fetch-Site (test_web_edges).
        foreign = await client.post("/sync/batch", json=GOOD, headers={"Origin": ORIGIN})
        preflight = await client.options("/sync/batch", headers={"Origin": ORIGIN,
                                                                 "Access-Control-Request-Method": "POST"})
    assert accepted.status_code == 202
    assert foreign.status_code == 403 and foreign.json()["errors"][0]["field"] == "Origin"
    for answer in (accepted, foreign, preflight):
        assert "access-control-allow-origin" not in answer.headers


async def test_unknown_routes_and_methods_are_envelopes(dsn: str) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        missing = await client.get("/nothing-here")
        wrong_method = await client.delete("/batches")
        get_on_post = await client.get("/sync/batch")
    assert missing.status_code == 404 and missing.json()["status"] == "error"
    assert wrong_method.status_code == 405 and wrong_method.json()["status"] == "error"
    assert "GET" in wrong_method.headers["allow"]
    assert get_on_post.status_code == 405
