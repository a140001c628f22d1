# ruff: noqa: RUF001  (Chinese punctuation and full-width digits are meant)
"""GET /batches, GET /batches/{id}, cancel and retry on a real server; the daemon (demo handler) runs in-process
for the cancel and retry flows."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from datesync.daemon.settings import Settings
from tests.support.server import live_server

T = TypeVar("T")
DAEMON_SETTINGS = Settings(retry_delay=0.05, poll_interval=5, max_attempts=2)


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 15.0) -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"not reached within {timeout}s: {value!r}"
        await asyncio.sleep(0.05)


def error_of(answer: httpx.Response, status: int, field: str) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["status"] == "error" and [e["field"] for e in body["errors"]] == [field]
    message: str = body["message"]
    return message


async def batch_when(client: httpx.AsyncClient, batch_id: int, *states: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        data: dict[str, Any] = (await client.get(f"/batches/{batch_id}")).json()["data"]
        return data if data["batch"]["state"] in states else None

    return await eventually(probe)


async def test_batches_are_listed_newest_first_and_paginated(dsn: str) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        ids = [(await client.post("/sync/batch", json={"start_date": f"2025-09-{d:02d}", "end_date": "2025-09-20"}))
               .json()["data"]["batch_id"] for d in range(1, 6)]
        page = (await client.get("/batches", params={"limit": 2, "offset": 1})).json()["data"]
        everything = (await client.get("/batches")).json()["data"]
        none_cancelled = (await client.get("/batches", params={"state": "cancelled"})).json()["data"]
        bad = await client.get("/batches", params={"limit": 0, "offset": -1, "state": "sleeping"})
        huge = await client.get("/batches", params={"offset": "9" * 40})
    assert [b["id"] for b in page["batches"]] == ids[::-1][1:3]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)
    assert everything["limit"] == 50 and len(everything["batches"]) == 5
    assert set(everything["batches"][0]) == {
        "id", "source", "start_date", "end_date", "force", "state", "cancel_requested", "days", "queued", "running",
        "succeeded", "failed", "skipped", "cancelled", "done", "created_at", "started_at", "finished_at", "pruned_at",
        "waiting"}
    assert (none_cancelled["total"], none_cancelled["batches"]) == (0, [])
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["state", "limit", "offset"]
    error_of(huge, 422, "offset")


@pytest.mark.parametrize("path", ["/batches/999", "/batches/abc", "/batches/-1", "/batches/0",
                                  "/batches/99999999999999999999", "/batches/1.5"])
async def test_unknown_or_impossible_ids_are_404_everywhere(dsn: str, path: str) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        error_of(await client.get(path), 404, "id")
        error_of(await client.post(path + "/cancel"), 404, "id")
        error_of(await client.post(path + "/retry"), 404, "id")


async def test_nothing_to_cancel_or_retry_is_a_409_with_a_clear_message(dsn: str, db: asyncpg.Connection) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        batch_id = (await client.post("/sync/batch", json={"start_date": "2025-10-01", "end_date": "2025-10-02"}))\
            .json()["data"]["batch_id"]
        unfinished = error_of(await client.post(f"/batches/{batch_id}/retry"), 409, "id")
        # End it as the engine does: a cancel request, then the daemon's cancel of a batch never expanded.
        await db.execute("UPDATE datesync.batch SET cancel_requested = true WHERE id = $1", batch_id)
        await db.execute("SELECT datesync.batch_cancel_unexpanded($1)", batch_id)
        ended = await client.post(f"/batches/{batch_id}/cancel", headers={"Accept-Language": "zh"})
        nothing = error_of(await client.post(f"/batches/{batch_id}/retry"), 409, "id")
    assert unfinished == f"batch {batch_id} is still queued; retry it after it ends"
    assert error_of(ended, 409, "id") == f"批量任务 {batch_id} 已结束（cancelled），无法取消"
    assert nothing == f"batch {batch_id} has nothing to retry: none of its dates failed or was cancelled"


async def test_a_failed_date_is_shown_and_retried(dsn: str, db: asyncpg.Connection,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATESYNC_DEMO_DELAY_MS", "5")
    monkeypatch.setenv("DATESYNC_DEMO_FAIL_DATES", "2025-10-02")
    async with live_server(dsn, DAEMON_SETTINGS, daemon=True) as live, \
            httpx.AsyncClient(base_url=live.api) as client:
        batch_id = (await client.post("/sync/batch", json={"start_date": "2025-10-01", "end_date": "2025-10-03"}))\
            .json()["data"]["batch_id"]
        detail = await batch_when(client, batch_id, "failed")
        retried = await client.post(f"/batches/{batch_id}/retry", headers={"Accept-Language": "zh-CN"})
        again = await batch_when(client, batch_id, "failed")
    batch, tasks = detail["batch"], {t["day"]: t for t in detail["tasks"]}
    assert (batch["succeeded"], batch["failed"], batch["done"], batch["queued"]) == (2, 1, 3, 0)
    assert batch["finished_at"] is not None
    failed = tasks["2025-10-02"]
    assert (failed["state"], failed["attempt"], failed["max_attempts"], failed["rows_synced"]) == ("failed", 2, 2, None)
    assert failed["error"] == "DemoFailure: demo upstream has no data for 2025-10-02"
    assert tasks["2025-10-01"]["state"] == "succeeded" and tasks["2025-10-01"]["rows_synced"] == 1
    assert isinstance(tasks["2025-10-01"]["duration_ms"], int) and tasks["2025-10-01"]["finished_at"]

    assert retried.status_code == 202, retried.text
    data = retried.json()["data"]
    assert data["requeued"] == 1 and data["batch"]["id"] == batch_id
    assert data["message"] == f"批量任务 {batch_id} 已重新排队，将重试 1 天的数据"
    assert again["batch"]["failed"] == 1 and again["batch"]["succeeded"] == 2
    retry_events = await db.fetch("SELECT data FROM datesync.event WHERE batch_id = $1 AND kind = 'batch' "
                                  "AND state = 'running' AND data ? 'retry'", batch_id)
    assert [e["data"] for e in retry_events] == [{"retry": 1}]
    attempts = await db.fetchval("SELECT count(*) FROM datesync_demo.run_log WHERE day = '2025-10-02'")
    assert attempts == 4  # two attempts, retried: two more


async def test_a_running_batch_is_cancelled_then_its_cancelled_dates_retried(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATESYNC_DEMO_DELAY_MS", "400")
    async with live_server(dsn, DAEMON_SETTINGS, daemon=True) as live, \
            httpx.AsyncClient(base_url=live.api) as client:
        batch_id = (await client.post("/sync/batch", json={"start_date": "2025-10-01", "end_date": "2025-10-08"}))\
            .json()["data"]["batch_id"]
        await batch_when(client, batch_id, "running")
        cancel = await client.post(f"/batches/{batch_id}/cancel")
        cancelled = await batch_when(client, batch_id, "cancelled")
        twice = await client.post(f"/batches/{batch_id}/cancel")
        retry = await client.post(f"/batches/{batch_id}/retry")
        finished = await batch_when(client, batch_id, "succeeded")
    assert cancel.status_code == 202, cancel.text
    assert cancel.json()["data"]["message"] == f"Cancel requested for batch {batch_id}"
    assert cancel.json()["data"]["batch"]["cancel_requested"] is True
    assert cancelled["batch"]["cancelled"] >= 4  # the second wave never started
    error_of(twice, 409, "id")
    assert retry.status_code == 202 and retry.json()["data"]["requeued"] == cancelled["batch"]["cancelled"]
    assert finished["batch"]["succeeded"] + finished["batch"]["skipped"] == 8
