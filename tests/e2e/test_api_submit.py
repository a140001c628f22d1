# ruff: noqa: RUF001  (Chinese punctuation and full-width digits are meant)
"""POST /api/v1/sync-status/sync/batch on a real uvicorn server and a real PostgreSQL: every bad input is a 4xx
naming its field and writes nothing; the success envelope in English and Chinese; dedupe; Idempotency-Key."""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datesync.daemon.db.connect import connect
from datesync.daemon.db.dsn import with_database
from datesync.daemon.ops.validation import MIN_DATE
from datesync.daemon.settings import Settings
from tests.support.server import Live, live_server

# UTC-12: "today" there is often yesterday in UTC, so the zone visibly decides what is in the future.
ZONE = "Etc/GMT+12"
SHARED = Settings(retry_delay=0.05, poll_interval=5, max_range_days=31, timezone=ZONE)
GOOD = {"start_date": "2025-10-01", "end_date": "2025-10-03"}


def today_in(zone: str) -> datetime.date:
    return datetime.datetime.now(ZoneInfo(zone)).date()


def assert_error(answer: httpx.Response, status: int, field: str) -> dict[str, Any]:
    """The answer is the error envelope with this status, naming this field."""
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) == {"status", "message", "errors"}
    assert body["status"] == "error" and isinstance(body["message"], str) and body["message"]
    assert all(set(e) == {"field", "message"} and e["message"] for e in body["errors"])
    assert field in [e["field"] for e in body["errors"]], body
    assert "Traceback" not in answer.text
    return body


async def rows_written(conn: asyncpg.Connection) -> tuple[int, int]:
    found = await conn.fetchrow("SELECT (SELECT count(*) FROM datesync.batch) AS b, "
                                "(SELECT count(*) FROM datesync.event) AS e")
    assert found is not None
    return found["b"], found["e"]


@pytest.fixture(scope="module")
async def shared(server_dsn: str, template_db: str) -> AsyncIterator[tuple[Live, asyncpg.Connection]]:
    """One server for the tests that must write nothing (its database stays empty throughout)."""
    name = f"dsapi_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    dsn = with_database(server_dsn, name)
    conn = await connect(dsn, "datesync-test")
    try:
        await conn.execute("UPDATE datesync.setting SET value = '31' WHERE key = 'max_range_days'")
        await conn.execute("UPDATE datesync.setting SET value = $1 WHERE key = 'timezone'", ZONE)
        async with live_server(dsn, SHARED) as live:
            yield live, conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def body(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


FUTURE = (today_in("Pacific/Kiritimati") + datetime.timedelta(days=1)).isoformat()
BAD_INPUTS: list[tuple[str, bytes, int, str]] = [
    ("empty body", b"", 400, "body"),
    ("malformed JSON", b'{"start_date": "2025-10-01",', 400, "body"),
    ("not UTF-8", b'{"start_date": "\xff"}', 400, "body"),
    ("an array", b'["2025-10-01", "2025-10-03"]', 400, "body"),
    ("a string", b'"2025-10-01"', 400, "body"),
    ("null", b"null", 400, "body"),
    ("NaN", b'{"start_date": NaN}', 400, "body"),
    ("deep nesting", b'{"a":' + b"[" * 20000 + b"]" * 20000 + b"}", 400, "body"),
    ("missing start_date", json.dumps({"end_date": "2025-10-03"}).encode(), 422, "start_date"),
    ("missing end_date", json.dumps({"start_date": "2025-10-03"}).encode(), 422, "end_date"),
    ("null start_date", body(start_date=None), 422, "start_date"),
    ("null end_date", body(end_date=None), 422, "end_date"),
    ("slashes", body(start_date="2025/10/01"), 422, "start_date"),
    ("no dashes", body(end_date="20251003"), 422, "end_date"),
    ("a number", body(start_date=20251001), 422, "start_date"),
    ("a boolean date", body(end_date=True), 422, "end_date"),
    ("a time too", body(end_date="2025-10-03T00:00:00"), 422, "end_date"),
    ("impossible date", body(start_date="2025-02-30"), 422, "start_date"),
    ("month 13", body(end_date="2025-13-01"), 422, "end_date"),
    ("year 1 (-infinity to the driver)", body(start_date="0001-01-01"), 422, "start_date"),
    ("start after end", body(start_date="2025-10-05"), 422, "start_date"),
    ("range over the limit", body(start_date="2025-01-01"), 422, "end_date"),
    ("future date", body(end_date=FUTURE), 422, "end_date"),
    ("unknown source", body(source="nope"), 422, "source"),
    ("source not a name", body(source="../etc"), 422, "source"),
    ("source not a string", body(source=["default"]), 422, "source"),
    ("force a string", body(force="true"), 422, "force"),
    ("force a number", body(force=1), 422, "force"),
    ("force null", body(force=None), 422, "force"),
    ("dry_run a string", body(dry_run="yes"), 422, "dry_run"),
    ("unknown field", body(priority="high"), 422, "priority"),
    ("duplicate field", b'{"start_date":"2025-10-01","start_date":"2025-10-02","end_date":"2025-10-03"}', 422,
     "start_date"),
]


@pytest.mark.parametrize(("raw", "status", "field"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
async def test_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(
    shared: tuple[Live, asyncpg.Connection], raw: bytes, status: int, field: str
) -> None:
    live, conn = shared
    async with httpx.AsyncClient(base_url=live.api) as client:
        answer = await client.post("/sync/batch", content=raw, headers={"Content-Type": "application/json"})
    assert_error(answer, status, field)
    assert await rows_written(conn) == (0, 0)


async def test_errors_speak_chinese_when_asked_and_keep_english_field_names(
    shared: tuple[Live, asyncpg.Connection],
) -> None:
    live, _ = shared
    async with httpx.AsyncClient(base_url=live.api) as client:
        zh = await client.post("/sync/batch", content=body(start_date="2025-10-05"),
                               headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
        en = await client.post("/sync/batch", content=body(start_date="2025-10-05"),
                               headers={"Accept-Language": "en-GB,zh;q=0.5"})
    assert assert_error(zh, 422, "start_date")["message"] == "start_date 不能晚于 end_date"
    assert assert_error(en, 422, "start_date")["message"] == "start_date must not be after end_date"


async def test_the_future_is_judged_in_the_configured_zone(shared: tuple[Live, asyncpg.Connection]) -> None:
    live, conn = shared
    local_today = today_in(ZONE)
    async with httpx.AsyncClient(base_url=live.api) as client:
        ok = await client.post("/sync/batch", content=body(start_date=local_today.isoformat(),
                                                           end_date=local_today.isoformat(), dry_run=True))
        ahead = today_in("Pacific/Kiritimati").isoformat()  # 26 hours ahead of UTC-12: always a later date
        late = await client.post("/sync/batch", content=body(start_date=ahead, end_date=ahead))
    assert ok.status_code == 200, ok.text
    message = assert_error(late, 422, "end_date")["message"]
    assert message == f"end_date {ahead} is in the future (today is {local_today} in {ZONE})"
    assert await rows_written(conn) == (0, 0)


async def test_an_oversized_body_is_413_whether_declared_or_streamed(shared: tuple[Live, asyncpg.Connection]) -> None:
    live, conn = shared
    dry = body(dry_run=True)
    exactly = dry[:-1] + b" " * (64 * 1024 - len(dry)) + b"}"
    assert len(exactly) == 64 * 1024

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 8192

    async with httpx.AsyncClient(base_url=live.api) as client:
        assert (await client.post("/sync/batch", content=exactly)).status_code == 200  # the limit itself is fine
        assert_error(await client.post("/sync/batch", content=exactly + b" "), 413, "body")
        assert_error(await client.post("/sync/batch", content=chunked()), 413, "body")
    assert await rows_written(conn) == (0, 0)


def _not_an_iso_date(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        return datetime.date.fromisoformat(value).isoformat() != value
    except ValueError:
        return True


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=12), st.lists(st.integers(), max_size=2),
                        st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", fullmatch=True),
                        st.dates().map(lambda d: d.strftime("%Y/%m/%d")),
                        st.dates().map(lambda d: f"{d.year}-{d.month}-{d.day}"))


def _drive(base: str) -> None:
    """Hypothesis runs synchronously in a worker thread while the server keeps serving in the test's loop."""
    with httpx.Client(base_url=base, timeout=10) as client:

        @settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(field=st.sampled_from(["start_date", "end_date"]), value=JSON_VALUES.filter(_not_an_iso_date))
        def bad_dates_are_named(field: str, value: object) -> None:
            answer = client.post("/sync/batch", content=json.dumps({**GOOD, field: value}))
            assert_error(answer, 422, field)

        @settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(start=st.dates(), end=st.dates())
        def real_dates_follow_the_rules(start: datetime.date, end: datetime.date) -> None:
            answer = client.post("/sync/batch", content=json.dumps(
                {"start_date": start.isoformat(), "end_date": end.isoformat(), "dry_run": True}))
            if start < MIN_DATE:
                assert_error(answer, 422, "start_date")
            elif end < MIN_DATE:
                assert_error(answer, 422, "end_date")
            elif start > end:
                assert_error(answer, 422, "start_date")
            elif (end - start).days >= SHARED.max_range_days or end > today_in(ZONE):
                assert_error(answer, 422, "end_date")
            else:
                assert answer.status_code == 200, answer.text
                assert answer.json()["data"]["days"] == (end - start).days + 1

        bad_dates_are_named()
        real_dates_follow_the_rules()


async def test_property_based_date_fields(shared: tuple[Live, asyncpg.Connection]) -> None:
    live, conn = shared
    await asyncio.to_thread(_drive, live.api)
    assert await rows_written(conn) == (0, 0)


# -- requests that write -------------------------------------------------------------------------------------


@pytest.fixture
async def live(dsn: str) -> AsyncIterator[Live]:
    async with live_server(dsn) as server:
        yield server


async def test_a_batch_is_accepted_with_the_documented_envelope_in_english(live: Live, db: asyncpg.Connection) -> None:
    woken: list[int] = []
    live.state.wake_daemon = lambda: woken.append(1)
    async with httpx.AsyncClient(base_url=live.api) as client:
        answer = await client.post("/sync/batch", json={**GOOD, "force": False, "source": "default"})
    assert answer.status_code == 202, answer.text
    data = answer.json()["data"]
    assert answer.json()["status"] == "success"
    batch_id = data["batch_id"]
    assert data == {"batch_id": batch_id, "days": 3, "success": 0, "failed": 0, "skipped": 0,
                    "message": "Batch sync started: 3 days will be synced",
                    "status_url": f"/api/v1/sync-status/batches/{batch_id}",
                    "events_url": f"/api/v1/sync-status/batches/{batch_id}/events", "deduplicated": False,
                    "waiting": 0, "linked": []}
    assert answer.headers["location"] == data["status_url"]
    row = await db.fetchrow("SELECT * FROM datesync.batch WHERE id = $1", batch_id)
    assert row is not None and (row["requested_by"], row["state"], row["days"]) == ("api", "queued", 3)
    assert await db.fetchval("SELECT count(*) FROM datesync.event WHERE batch_id = $1 AND state = 'queued'",
                             batch_id) == 1
    assert woken == [1]


async def test_the_message_is_chinese_when_the_request_prefers_zh(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.api) as client:
        answer = await client.post("/sync/batch", json=GOOD, headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert answer.status_code == 202
    assert answer.json()["data"]["message"] == "批量同步任务已启动，将同步 3 天的数据"


async def test_the_insert_and_its_notify_commit_together(live: Live, dsn: str) -> None:
    listener = await connect(dsn, "datesync-test-listen")
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("datesync_batch", lambda *args: heard.put_nowait(args[3]))
    try:
        async with httpx.AsyncClient(base_url=live.api) as client:
            answer = await client.post("/sync/batch", json=GOOD)
        assert await asyncio.wait_for(heard.get(), 5) == str(answer.json()["data"]["batch_id"])
    finally:
        await listener.close()


async def test_an_identical_unfinished_batch_is_returned_instead_of_a_new_one(
    live: Live, db: asyncpg.Connection
) -> None:
    woken: list[int] = []
    live.state.wake_daemon = lambda: woken.append(1)
    async with httpx.AsyncClient(base_url=live.api) as client:
        first = (await client.post("/sync/batch", json=GOOD)).json()["data"]
        again = await client.post("/sync/batch", json={**GOOD, "source": "default", "force": False})
        forced = await client.post("/sync/batch", json={**GOOD, "force": True})
        await db.execute("UPDATE datesync.batch SET cancel_requested = true WHERE id = $1", first["batch_id"])
        after_cancel = await client.post("/sync/batch", json=GOOD)
    assert again.status_code == 200
    assert again.json()["data"]["batch_id"] == first["batch_id"] and again.json()["data"]["deduplicated"] is True
    assert forced.status_code == 202 and forced.json()["data"]["batch_id"] != first["batch_id"]
    assert after_cancel.status_code == 202
    assert await db.fetchval("SELECT count(*) FROM datesync.batch") == 3
    assert woken == [1, 1, 1]


async def test_concurrent_identical_requests_make_exactly_one_batch(live: Live, db: asyncpg.Connection) -> None:
    async with httpx.AsyncClient(base_url=live.api) as client:
        answers = await asyncio.gather(*(client.post("/sync/batch", json=GOOD) for _ in range(20)))
    assert sorted(a.status_code for a in answers) == [200] * 19 + [202]
    assert len({a.json()["data"]["batch_id"] for a in answers}) == 1
    assert await db.fetchval("SELECT count(*) FROM datesync.batch") == 1


async def test_a_repeated_idempotency_key_returns_the_first_batch_and_refuses_another_body(
    live: Live, db: asyncpg.Connection
) -> None:
    async with httpx.AsyncClient(base_url=live.api) as client:
        first = await client.post("/sync/batch", json=GOOD, headers={"Idempotency-Key": "order-1"})
        # End it as the engine does: a cancel request, then the daemon's cancel of a batch never expanded.
        await db.execute("UPDATE datesync.batch SET cancel_requested = true WHERE id = $1",
                         first.json()["data"]["batch_id"])
        await db.execute("SELECT datesync.batch_cancel_unexpanded($1)", first.json()["data"]["batch_id"])
        replay = await client.post("/sync/batch", json=GOOD, headers={"Idempotency-Key": "order-1"})
        other_body = await client.post("/sync/batch", json={**GOOD, "force": True},
                                       headers={"Idempotency-Key": "order-1"})
        bad_key = await client.post("/sync/batch", json=GOOD, headers={"Idempotency-Key": "x" * 300})
    assert first.status_code == 202
    assert replay.status_code == 200, replay.text
    assert replay.json()["data"]["batch_id"] == first.json()["data"]["batch_id"]
    assert replay.json()["data"]["deduplicated"] is True
    # The same key with another body is the client's mistake, not a retry: refused, naming the key and its batch.
    assert_error(other_body, 422, "Idempotency-Key")
    batch_id = first.json()["data"]["batch_id"]
    assert other_body.json()["message"] == (f"Idempotency-Key order-1 was already used for batch {batch_id} with "
                                            "another body; use a new key for another request")
    assert_error(bad_key, 422, "Idempotency-Key")
    assert await db.fetchval("SELECT count(*) FROM datesync.batch") == 1


async def test_concurrent_requests_with_one_key_and_different_bodies_make_one_batch_and_refuse_the_rest(
    live: Live, db: asyncpg.Connection
) -> None:
    bodies = [{"start_date": f"2025-09-{d:02d}", "end_date": "2025-09-30"} for d in range(1, 13)]
    async with httpx.AsyncClient(base_url=live.api) as client:
        answers = await asyncio.gather(*(client.post("/sync/batch", json=b, headers={"Idempotency-Key": "k"})
                                         for b in bodies))
    assert sorted(a.status_code for a in answers) == [202] + [422] * 11
    assert all(a.json()["errors"][0]["field"] == "Idempotency-Key" for a in answers if a.status_code == 422)
    assert await db.fetchval("SELECT count(*) FROM datesync.batch") == 1


async def test_a_dry_run_answers_the_plan_and_writes_nothing(live: Live, db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO datesync.day (source, day, status, synced_at) VALUES "
                     "('default', '2025-10-02', 'success', now()), ('default', '2025-10-03', 'failed', NULL)")
    woken: list[int] = []
    live.state.wake_daemon = lambda: woken.append(1)
    async with httpx.AsyncClient(base_url=live.api) as client:
        plain = await client.post("/sync/batch", json={**GOOD, "dry_run": True})
        forced = await client.post("/sync/batch", json={**GOOD, "dry_run": True, "force": True},
                                   headers={"Accept-Language": "zh"})
    assert plain.status_code == 200, plain.text
    data = plain.json()["data"]
    assert (data["dry_run"], data["days"], data["run"], data["skip"]) == (True, 3, 2, 1)
    assert data["plan"] == [{"day": "2025-10-01", "action": "run", "status": None},
                            {"day": "2025-10-02", "action": "skip", "status": "success"},
                            {"day": "2025-10-03", "action": "run", "status": "failed"}]
    assert forced.json()["data"]["skip"] == 0 and "试运行" in forced.json()["data"]["message"]
    assert await rows_written(db) == (0, 0)
    assert woken == []


async def test_the_database_check_is_a_422_backstop(live: Live, db: asyncpg.Connection) -> None:
    """When the trigger refuses what Python accepted (here: the database holds a smaller limit), the answer
    is still a 422 naming the field, with the trigger's wording."""
    await db.execute("UPDATE datesync.setting SET value = '2' WHERE key = 'max_range_days'")
    async with httpx.AsyncClient(base_url=live.api) as client:
        answer = await client.post("/sync/batch", json=GOOD)
    assert assert_error(answer, 422, "end_date")["message"] == "the range is 3 days; the limit is 2 days"
    assert await rows_written(db) == (0, 0)

