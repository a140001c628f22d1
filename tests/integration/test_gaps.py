"""The gaps query: `GET /api/v1/sync-status/gaps` and `datesync gaps FROM TO [--backfill]`."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from datesync.daemon.db.queries import q
from tests.support.server import live_server

ROOT = Path(__file__).resolve().parents[2]
MAY = [datetime.date(2025, 5, d) for d in range(1, 11)]


async def seed(db: asyncpg.Connection) -> None:
    """May 1-10 of `default`: 3 and 4 missing, 6 failed, 8 running, 10 missing; the rest synced. `other` has
    only May 2 synced."""
    await db.execute(q("source_register"), "other", "noop")
    statuses = {1: "success", 2: "success", 5: "success", 6: "failed", 7: "success", 8: "running", 9: "success"}
    for d, status in statuses.items():
        await db.execute("INSERT INTO datesync.day (source, day, status, synced_at) VALUES ('default', $1, "
                         "$2::datesync.day_status, now())", MAY[d - 1], status)
    await db.execute("INSERT INTO datesync.day (source, day, status, synced_at) "
                     "VALUES ('other', '2025-05-02', 'success', now())")


async def test_the_api_lists_missing_and_failed_dates_and_their_ranges(dsn: str, db: asyncpg.Connection) -> None:
    await seed(db)
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        answer = await client.get("/gaps", params={"from": "2025-05-01", "to": "2025-05-10"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "success", "data": {
            "source": "default", "from": "2025-05-01", "to": "2025-05-10",
            "gaps": [{"day": "2025-05-03", "status": "missing"}, {"day": "2025-05-04", "status": "missing"},
                     {"day": "2025-05-06", "status": "failed"}, {"day": "2025-05-10", "status": "missing"}],
            "ranges": [{"start_date": "2025-05-03", "end_date": "2025-05-04"},
                       {"start_date": "2025-05-06", "end_date": "2025-05-06"},
                       {"start_date": "2025-05-10", "end_date": "2025-05-10"}],
        }}
        other = (await client.get("/gaps", params={"from": "2025-05-01", "to": "2025-05-03", "source": "other"}))
        assert other.json()["data"]["ranges"] == [{"start_date": "2025-05-01", "end_date": "2025-05-01"},
                                                  {"start_date": "2025-05-03", "end_date": "2025-05-03"}]
        none = await client.get("/gaps", params={"from": "2025-05-01", "to": "2025-05-02"})
        assert none.json()["data"]["gaps"] == [] and none.json()["data"]["ranges"] == []
        default = (await client.get("/gaps")).json()["data"]  # the 30 days up to yesterday
        today = datetime.datetime.now(datetime.UTC).date()
        assert default["to"] == str(today - datetime.timedelta(days=1)) and len(default["gaps"]) == 30


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"from": "2025-5-1", "to": "2025-05-10"}, "from", "from must be a date written YYYY-MM-DD"),
        ({"from": "2025-05-01", "to": "2025-02-30"}, "to", "to 2025-02-30 is not a real calendar date"),
        ({"from": "2025-05-10", "to": "2025-05-01"}, "from", "from must not be after to"),
        ({"from": "2000-01-01", "to": "2025-05-01"}, "to", "the range is 9253 days; the limit is 3660 days"),
        ({"from": "2025-05-01", "to": "2999-01-01"}, "to", "to 2999-01-01 is in the future"),
        ({"from": "2025-05-01", "to": "2025-05-02", "source": "Nope!"}, "source", 'unknown source "Nope!"'),
        ({"from": "2025-05-01", "to": "2025-05-02", "source": "nope"}, "source", 'unknown source "nope"'),
    ],
)
async def test_bad_parameters_are_422_naming_the_field(
    dsn: str, params: dict[str, str], field: str, message: str
) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        answer = await client.get("/gaps", params=params)
    assert answer.status_code == 422
    body = answer.json()
    assert body["status"] == "error" and message in body["message"]
    assert [e["field"] for e in body["errors"]] == [field] and message in body["errors"][0]["message"]


async def cli(dsn: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "datesync.cli", "gaps", *args, cwd=ROOT,
        env={**os.environ, "DATABASE_URL": dsn, "LOG_FORMAT": "json", "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_lists_gaps_and_backfills_exactly_them(dsn: str, db: asyncpg.Connection) -> None:
    await seed(db)
    code, out, err = await cli(dsn, "2025-05-01", "2025-05-10", "--backfill")
    assert code == 0, err
    assert "2025-05-03" in out and "failed" in out and "2025-05-05" not in out
    assert "4 of 10 dates of default are missing or failed, in 3 ranges" in out
    batches = await db.fetch("SELECT id, source, start_date, end_date, force, requested_by FROM datesync.batch "
                             "ORDER BY id")
    assert [(b["start_date"].day, b["end_date"].day, b["requested_by"], b["force"]) for b in batches] == [
        (3, 4, "cli", False), (6, 6, "cli", False), (10, 10, "cli", False)]
    for b in batches:
        assert f"batch {b['id']}: {b['start_date']}..{b['end_date']}" in out
    code, out, _ = await cli(dsn, "2025-05-01", "2025-05-03", "--source", "other")
    assert code == 0 and "2 of 3 dates of other" in out
    assert await db.fetchval("SELECT count(*) FROM datesync.batch") == 3  # no --backfill, nothing requested
    code, _, err = await cli(dsn, "2025-05-01", "2025-05-03", "--source", "nope")
    # With LOG_FORMAT=json the CLI's last word is a JSON log line too.
    assert code == 2 and json.loads(err.strip().splitlines()[-1])["error"] == 'unknown source "nope"'
    code, _, err = await cli(dsn, "2025-05-03", "2025-05-01")
    assert code == 2 and "from must not be after to" in err  # the API's words (GET /gaps)
