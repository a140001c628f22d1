"""The event streams on a real uvicorn and a real PostgreSQL: snapshot, one event per transition, the end of a
batch's stream, exact resume, fan-out, slow clients, a lost LISTEN connection, and shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

import datesync.web.events
from datesync.daemon.db.connect import connect
from datesync.daemon.settings import Settings
from datesync.web.events import HubConfig, hub_for
from tests.support.server import live_server
from tests.support.waiting import wait_for

FAST = Settings(retry_delay=0.05, poll_interval=60, max_attempts=2, concurrency=2)


@dataclasses.dataclass
class Msg:
    """One parsed SSE message (a comment is a message of its own here)."""

    event: str | None = None
    id: int | None = None
    data: Any = None
    retry: int | None = None
    comment: str | None = None


async def parse(response: httpx.Response) -> AsyncIterator[Msg]:
    msg = Msg()
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield Msg(comment=line[1:].strip())
        elif line == "":
            if msg != Msg():
                yield msg
            msg = Msg()
        else:
            name, _, value = line.partition(": ")
            if name == "id":
                msg.id = int(value)
            elif name == "event":
                msg.event = value
            elif name == "data":
                msg.data = json.loads(value)
            elif name == "retry":
                msg.retry = int(value)


async def read_stream(http: httpx.AsyncClient, url: str, *, headers: dict[str, str] | None = None,
                      stop: int | None = None, opened: asyncio.Event | None = None,
                      into: list[Msg] | None = None, until_final: bool = False) -> list[Msg]:
    """Every message of a stream until the server ends it (or `stop` data messages, or a final event, came)."""
    got: list[Msg] = [] if into is None else into
    async with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        if opened is not None:
            opened.set()
        async for msg in parse(response):
            got.append(msg)
            if stop is not None and len(events_of(got)) >= stop:
                break
            if until_final and msg.event == "batch" and msg.data["data"].get("final"):
                break
    return got


def events_of(msgs: list[Msg]) -> list[Msg]:
    return [m for m in msgs if m.event in ("batch", "task")]


async def insert_batch(db: asyncpg.Connection, start: str, end: str) -> int:
    batch_id: int = await db.fetchval(
        "INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $2) RETURNING id",
        datetime.date.fromisoformat(start), datetime.date.fromisoformat(end))
    return batch_id


async def log_ids(db: asyncpg.Connection, batch_id: int | None = None) -> list[int]:
    if batch_id is None:
        return [r["id"] for r in await db.fetch("SELECT id FROM datesync.event ORDER BY id")]
    return [r["id"] for r in await db.fetch("SELECT id FROM datesync.event WHERE batch_id = $1 ORDER BY id", batch_id)]


async def insert_events(dsn: str, batch_id: int, count: int, *, error: str | None = None) -> None:
    """`count` events, one transaction each, as a daemon would write them."""
    conn = await connect(dsn, "test-writer")
    try:
        for _ in range(count):
            await conn.execute("INSERT INTO datesync.event (batch_id, kind, state, error) VALUES ($1, 'task', "
                               "'running', $2)", batch_id, error)
    finally:
        await conn.close()


@pytest.fixture
def demo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATESYNC_DEMO_DELAY_MS", "30")
    monkeypatch.setenv("DATESYNC_DEMO_FAIL_DATES", "2024-01-03")


@pytest.fixture
def hub_config(monkeypatch: pytest.MonkeyPatch) -> Any:
    def use(**changes: Any) -> None:
        config = dataclasses.replace(HubConfig(safety_interval=60), **changes)
        monkeypatch.setattr(datesync.web.events, "CONFIG", config)
    return use


async def test_a_batch_stream_carries_one_event_per_transition_and_ends(
    dsn: str, db: asyncpg.Connection, demo_env: None
) -> None:
    async with live_server(dsn, FAST, daemon=True) as live, httpx.AsyncClient(timeout=20) as http:
        batch_id = await insert_batch(db, "2024-01-01", "2024-01-04")
        # last_event_id=0: everything of this batch from its first event, however far the daemon has got.
        got = await read_stream(http, f"{live.api}/batches/{batch_id}/events?last_event_id=0")

    assert got[0].retry == 3000
    assert got[1].event == "snapshot" and got[1].id is None
    assert got[1].data["batch"]["id"] == batch_id and got[1].data["batch"]["days"] == 4
    evs = events_of(got)
    assert got[-1] is evs[-1], "the stream ends right after the final event"
    assert [m.id for m in evs] == await log_ids(db, batch_id), "exactly the log, in order"
    assert all(m.id == m.data["id"] and m.data["batch_id"] == batch_id for m in evs)
    assert [(m.event, m.data["state"]) for m in evs[:2]] == [("batch", "queued"), ("batch", "running")]
    final = evs[-1].data
    assert final["kind"] == "batch" and final["state"] == "failed" and final["data"]["final"] is True
    assert final["data"]["failed"] == 1 and final["data"]["succeeded"] == 3

    per_day: dict[str, list[tuple[str, int | None]]] = {}
    for m in evs[2:-1]:
        assert m.event == "task"
        per_day.setdefault(m.data["day"], []).append((m.data["state"], m.data["attempt"]))
    ok = [("running", 1), ("succeeded", 1)]
    assert per_day == {"2024-01-01": ok, "2024-01-02": ok, "2024-01-04": ok,
                       "2024-01-03": [("running", 1), ("queued", 1), ("running", 2), ("failed", 2)]}
    failed = [m.data for m in evs if m.data["day"] == "2024-01-03" and m.data["state"] in ("queued", "failed")]
    assert all("no data for 2024-01-03" in d["error"] for d in failed)
    assert all("counts" in m.data["data"] for m in evs if m.event == "task")
    runs = await db.fetchval("SELECT count(*) FROM datesync_demo.run_log WHERE batch_id = $1", batch_id)
    assert runs == sum(1 for m in evs if m.event == "task" and m.data["state"] == "running"), "one per attempt"


async def test_resume_replays_exactly_the_rest_from_header_or_query(
    dsn: str, db: asyncpg.Connection, demo_env: None
) -> None:
    async with live_server(dsn, FAST, daemon=True) as live, httpx.AsyncClient(timeout=20) as http:
        batch_id = await insert_batch(db, "2024-01-01", "2024-01-06")
        url = f"{live.api}/batches/{batch_id}/events"
        # A client reads the first few events live, loses its connection, and resumes from the last id it saw.
        first = events_of(await read_stream(http, url + "?last_event_id=0", stop=3))
        rest = events_of(await read_stream(http, url, headers={"Last-Event-ID": str(first[-1].id)}))
        everything = await log_ids(db, batch_id)
        assert [m.id for m in first + rest] == everything

        # After the end: from the middle, by header or by query parameter (the header wins over the query).
        middle = everything[len(everything) // 2]
        expected = [i for i in everything if i > middle]
        by_header = await read_stream(http, url + "?last_event_id=0", headers={"Last-Event-ID": str(middle)})
        by_query = await read_stream(http, f"{url}?last_event_id={middle}")
        assert [m.id for m in events_of(by_header)] == expected
        assert [m.id for m in events_of(by_query)] == expected
        assert by_query[1].event == "snapshot" and by_query[1].data["batch"]["state"] == "failed"
        # Connecting afresh to an ended batch: its snapshot, and the stream ends.
        fresh = await read_stream(http, url)
        assert [m.event for m in fresh if m.event] == ["snapshot"]
        # Resuming after the final event: nothing more will come; 204 tells an EventSource to stop retrying.
        done = await http.get(url, headers={"Last-Event-ID": str(everything[-1])})
        assert done.status_code == 204


async def test_two_clients_see_the_same_sequence(dsn: str, db: asyncpg.Connection, demo_env: None) -> None:
    async with live_server(dsn, FAST, daemon=True) as live, httpx.AsyncClient(timeout=20) as http:
        start = await db.fetchval("SELECT coalesce(max(id), 0) FROM datesync.event")
        opened = [asyncio.Event(), asyncio.Event()]
        readers = [asyncio.create_task(read_stream(http, f"{live.api}/events", opened=o, until_final=True))
                   for o in opened]
        await asyncio.gather(*(o.wait() for o in opened))
        batch_id = await insert_batch(db, "2024-01-01", "2024-01-03")
        a, b = await asyncio.wait_for(asyncio.gather(*readers), 20)
    ids = [i for i in await log_ids(db, batch_id) if i > start]
    assert a[1].event == "snapshot" and set(a[1].data["cards"]) == {
        "synced", "failed", "running", "queued", "last_success_at", "waiting", "stale"}
    assert [m.id for m in events_of(a)] == [m.id for m in events_of(b)] == ids
    assert [m.data for m in events_of(a)] == [m.data for m in events_of(b)]


async def test_concurrent_writers_leave_no_gap_and_no_repeat(dsn: str, db: asyncpg.Connection) -> None:
    """Writers commit in another order than they start in; readers follow with `id > last`. That is gapless
    only because an event's id is drawn under the lock its transaction then holds until commit (event_serialize):
    a smaller id can never become visible after a larger one has been read. Here transactions linger before and
    after their INSERT while others race them; a reader from the start, one that joins mid-way (snapshot) and
    one that resumes from an id must each see every committed event after their start exactly once, in order."""
    writers, per_writer = 6, 25

    async def writer(n: int) -> None:
        conn = await connect(dsn, f"writer-{n}")
        try:
            for i in range(per_writer):
                async with conn.transaction():
                    await conn.execute("SELECT pg_sleep($1)", random.random() / 500)
                    await conn.execute(
                        "INSERT INTO datesync.event (batch_id, kind, state, attempt) "
                        "SELECT $1, 'task', 'running', g FROM generate_series(1, $2) g", n, 1 + i % 3)
                    await conn.execute("SELECT pg_sleep($1)", random.random() / 500)
        finally:
            await conn.close()

    total = writers * sum(1 + i % 3 for i in range(per_writer))
    whole: list[Msg] = []
    late: list[Msg] = []
    resumed: list[Msg] = []
    async with live_server(dsn, FAST) as live, httpx.AsyncClient(timeout=30) as http:
        url = f"{live.api}/events"
        opened = asyncio.Event()
        readers = [asyncio.create_task(read_stream(http, url, opened=opened, into=whole))]
        await opened.wait()
        tasks = [asyncio.create_task(writer(n)) for n in range(writers)]
        await wait_for(lambda: db.fetchval("SELECT count(*) >= $1 FROM datesync.event", total // 3))
        late_opened = asyncio.Event()
        readers.append(asyncio.create_task(read_stream(http, url, opened=late_opened, into=late)))
        await late_opened.wait()
        resume_from: int = await db.fetchval("SELECT max(id) - 7 FROM datesync.event")
        readers.append(asyncio.create_task(
            read_stream(http, url, headers={"Last-Event-ID": str(resume_from)}, into=resumed)))
        await asyncio.gather(*tasks)
        ids = await log_ids(db)
        assert len(ids) == total
        for got in (whole, late, resumed):
            await wait_for(lambda got=got: asyncio.sleep(0, result=bool(got) and got[-1].id == ids[-1]))
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    assert [m.id for m in events_of(whole)] == ids
    assert [m.id for m in events_of(resumed)] == [i for i in ids if i > resume_from]
    joined = [m.id for m in events_of(late)]
    assert joined == ids[ids.index(joined[0]):], "from its snapshot on, the late reader missed nothing"


async def test_a_long_replay_outpaced_by_live_events_reads_on_from_the_table(
    dsn: str, db: asyncpg.Connection, hub_config: Any
) -> None:
    """While a client replays a long history its queue may fill with live events; it is not dropped for that
    (it is not slow, it is busy): the queue is emptied and the replay reads on from the table, which has them."""
    hub_config(queue_size=2, page_rows=5, read_concurrency=1)
    await db.execute("INSERT INTO datesync.event (batch_id, kind, state) "
                     "SELECT 1, 'task', 'running' FROM generate_series(1, 500)")
    async with live_server(dsn, FAST) as live, httpx.AsyncClient(timeout=30) as http:
        hub = hub_for(live.state)
        await hub.ready.wait()
        async with hub.read_gate:  # hold the client between its registration and its snapshot
            reader = asyncio.create_task(read_stream(http, f"{live.api}/events?last_event_id=0", stop=523))
            await wait_for(lambda: asyncio.sleep(0, result=len(hub.clients) == 1))
            for _ in range(3):  # three pages for a queue of two
                await insert_events(dsn, 1, 1)
                newest = await db.fetchval("SELECT max(id) FROM datesync.event")
                await wait_for(lambda newest=newest: asyncio.sleep(0, result=hub.last_seen == newest))
            assert hub.overruns == 1
        await insert_events(dsn, 1, 20)  # and more while it replays
        got = await asyncio.wait_for(reader, 20)
        assert hub.dropped_total == 0
    assert [m.id for m in events_of(got)] == await log_ids(db)


async def test_a_client_that_stops_reading_is_dropped_without_slowing_the_others(
    dsn: str, db: asyncpg.Connection, hub_config: Any
) -> None:
    hub_config(queue_size=32)  # roomy enough for the reading client on a busy machine
    count, fat = 400, "x" * 16_000  # 6.4 MB: more than the socket buffers can hide
    async with live_server(dsn, FAST) as live, httpx.AsyncClient(timeout=30) as http:
        hub = hub_for(live.state)
        # The slow client: a tiny receive buffer, a request, and then it never reads again.
        stalled = socket.socket()
        try:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.setblocking(False)
            port = int(live.base_url.rsplit(":", 1)[1])
            await asyncio.get_running_loop().sock_connect(stalled, ("127.0.0.1", port))
            await asyncio.get_running_loop().sock_sendall(
                stalled, b"GET /api/v1/sync-status/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await wait_for(lambda: asyncio.sleep(0, result=len(hub.clients) == 1))
            opened = asyncio.Event()
            reader = asyncio.create_task(read_stream(http, f"{live.api}/events", stop=count, opened=opened))
            await opened.wait()
            await insert_events(dsn, 1, count, error=fat)
            got = await asyncio.wait_for(reader, 30)
            assert [m.id for m in events_of(got)] == await log_ids(db), "the reading client got everything"
            assert hub.dropped_total == 1
            await wait_for(lambda: asyncio.sleep(0, result=not hub.clients))
        finally:
            stalled.close()


async def test_the_stream_survives_a_terminated_listen_connection(dsn: str, db: asyncpg.Connection) -> None:
    async with live_server(dsn, FAST) as live, httpx.AsyncClient(timeout=30) as http:
        hub = hub_for(live.state)
        await hub.listener.connected.wait()
        opened = asyncio.Event()
        reader = asyncio.create_task(read_stream(http, f"{live.api}/events", stop=5, opened=opened))
        await opened.wait()
        killed = hub.listener.backend_pid
        assert await db.fetchval("SELECT pg_terminate_backend($1)", killed)
        await wait_for(lambda: asyncio.sleep(0, result=not hub.listener.connected.is_set()))
        await insert_events(dsn, 7, 3)  # committed while nobody LISTENs: they must come from the table
        await wait_for(lambda: asyncio.sleep(0, result=hub.listener.reconnects >= 1))
        assert hub.listener.backend_pid != killed
        await insert_events(dsn, 7, 2)  # and the new connection's NOTIFYs work
        got = await asyncio.wait_for(reader, 10)  # the safety poll is 60 s: delivery came from the reconnect
    assert [m.id for m in events_of(got)] == await log_ids(db)


async def test_protocol_details_and_limits(dsn: str, db: asyncpg.Connection, hub_config: Any) -> None:
    hub_config(heartbeat=0.1, max_clients=1)
    async with live_server(dsn, FAST) as live, httpx.AsyncClient(timeout=10) as http:
        hub = hub_for(live.state)
        missing = await http.get(f"{live.api}/batches/999/events")
        assert missing.status_code == 404 and missing.json()["status"] == "error"
        assert missing.json()["errors"][0]["field"] == "id"
        assert (await http.get(f"{live.api}/batches/abc/events")).status_code == 404
        bad = await http.get(f"{live.api}/events", headers={"Last-Event-ID": "x1"})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "Last-Event-ID"
        assert (await http.get(f"{live.api}/events?last_event_id=-3")).status_code == 400
        assert (await http.head(f"{live.api}/events")).status_code == 200

        async with http.stream("GET", f"{live.api}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            full = await http.get(f"{live.api}/events")  # the cap is one client
            assert full.status_code == 503 and full.json()["status"] == "error"
            msgs = parse(response)
            seen = [await anext(msgs) for _ in range(3)]
            assert seen[0].retry == 3000 and seen[1].event == "snapshot" and seen[2].comment == "keep-alive"
        # The client hung up: the hub forgets it.
        await wait_for(lambda: asyncio.sleep(0, result=not hub.clients))


async def test_shutdown_ends_open_streams_with_a_farewell(dsn: str) -> None:
    got: list[Msg] = []
    async with httpx.AsyncClient(timeout=10) as http:
        async with live_server(dsn, FAST) as live:
            opened = asyncio.Event()
            reader = asyncio.create_task(read_stream(http, f"{live.api}/events", opened=opened))
            await opened.wait()
        # uvicorn waits for open streams (2 s here, 5 s in production) before it runs the lifespan's exit, and
        # then cuts them: a farewell proves the stream was ended as the shutdown began.
        got = await asyncio.wait_for(reader, 5)
    assert got[-1].comment is not None and "shutting down" in got[-1].comment
