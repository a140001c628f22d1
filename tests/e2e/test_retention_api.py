"""A pruned batch through a real uvicorn: event streams resumed from pruned events, the batch's own page, and an
Idempotency-Key replayed after its batch was pruned."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from datesync.daemon.retention import Retention
from tests.e2e.test_events_stream import FAST, events_of, insert_batch, log_ids, read_stream
from tests.support.daemons import wait_batch_final
from tests.support.retention import backdate
from tests.support.server import live_server


@pytest.fixture
def demo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATESYNC_DEMO_DELAY_MS", "20")
    monkeypatch.setenv("DATESYNC_DEMO_FAIL_DATES", "2024-01-03")


async def test_resuming_from_pruned_events_answers_a_snapshot_then_continues(
    dsn: str, db: asyncpg.Connection, demo_env: None
) -> None:
    async with live_server(dsn, FAST, daemon=True) as live, httpx.AsyncClient(timeout=20) as http:
        old = await insert_batch(db, "2024-01-01", "2024-01-04")
        await wait_batch_final(db, old)
        kept = await insert_batch(db, "2024-02-01", "2024-02-02")
        await wait_batch_final(db, kept)
        old_ids, kept_ids = await log_ids(db, old), await log_ids(db, kept)
        await backdate(db, [old], days=40)
        assert (await Retention(live.state.pool, 30).prune_once()).batches == 1

        # The pruned batch's stream, resumed from one of its deleted events: its snapshot (final counts, when it
        # was pruned), then the one event it keeps, its final one, and the stream ends as any ended batch's does.
        url = f"{live.api}/batches/{old}/events"
        got = await read_stream(http, url, headers={"Last-Event-ID": str(old_ids[1])})
        snapshot = got[1]
        assert snapshot.event == "snapshot" and snapshot.data["batch"]["state"] == "failed"
        assert snapshot.data["batch"]["pruned_at"] is not None
        assert (snapshot.data["batch"]["succeeded"], snapshot.data["batch"]["failed"]) == (3, 1)
        evs = events_of(got)
        assert [m.id for m in evs] == [old_ids[-1]] and evs[0].data["data"]["final"] is True
        assert (await http.get(url, headers={"Last-Event-ID": str(old_ids[-1])})).status_code == 204

        # Every batch's stream, resumed from a deleted event: the replay would have a gap, so the client gets the
        # snapshot (marked so), then what commits from now on, not a partial history.
        opened = asyncio.Event()
        reader = asyncio.create_task(read_stream(http, f"{live.api}/events", opened=opened, until_final=True,
                                                 headers={"Last-Event-ID": str(old_ids[1])}))
        await asyncio.wait_for(opened.wait(), 10)
        new = await insert_batch(db, "2024-03-01", "2024-03-01")
        got = await asyncio.wait_for(reader, 20)
        assert got[1].event == "snapshot" and got[1].data["pruned"] is True and "synced" in got[1].data["cards"]
        assert [m.id for m in events_of(got)] == await log_ids(db, new)

        # Resumed from an event that was not pruned (the pruned batch's kept final one): the exact rest.
        got = await read_stream(http, f"{live.api}/events", headers={"Last-Event-ID": str(old_ids[-1])},
                                stop=len(kept_ids))
        assert "pruned" not in got[1].data
        assert [m.id for m in events_of(got)] == kept_ids


async def test_a_pruned_batch_reads_with_its_counts_and_its_key_still_replays_it(
    dsn: str, db: asyncpg.Connection, demo_env: None
) -> None:
    body = {"start_date": "2024-01-01", "end_date": "2024-01-04"}
    async with live_server(dsn, FAST, daemon=True) as live, httpx.AsyncClient(timeout=20) as http:
        first = await http.post(f"{live.api}/sync/batch", json=body, headers={"Idempotency-Key": "k-19"})
        assert first.status_code == 202
        batch_id = first.json()["data"]["batch_id"]
        await wait_batch_final(db, batch_id)
        await backdate(db, [batch_id], days=31)
        assert (await Retention(live.state.pool, 30).prune_once()).tasks == 4

        page = (await http.get(f"{live.api}/batches/{batch_id}")).json()["data"]
        assert page["tasks"] == [] and page["batch"]["pruned_at"] is not None
        assert (page["batch"]["state"], page["batch"]["succeeded"], page["batch"]["failed"]) == ("failed", 3, 1)
        # The day records keep what happened, the failed date's error included.
        days = (await http.get(f"{live.api}/", params={"from": "2024-01-01", "to": "2024-01-04"})).json()["data"]
        assert {r["day"]: r["status"] for r in days["records"]} == {
            "2024-01-01": "success", "2024-01-02": "success", "2024-01-03": "failed", "2024-01-04": "success"}
        assert "no data for 2024-01-03" in next(r["error"] for r in days["records"] if r["status"] == "failed")

        again = await http.post(f"{live.api}/sync/batch", json=body, headers={"Idempotency-Key": "k-19"})
        assert again.status_code == 200
        data = again.json()["data"]
        assert (data["batch_id"], data["deduplicated"], data["success"], data["failed"]) == (batch_id, True, 3, 1)
        assert await db.fetchval("SELECT count(*) FROM datesync.batch") == 1, "no new work for a replayed key"
