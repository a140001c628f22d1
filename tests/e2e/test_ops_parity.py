"""The API and the CLI are adapters over one operations layer (daemon/ops): each bad input goes through both and
is refused in the same words, the API with a 4xx and the CLI with exit code 2."""

from __future__ import annotations

import asyncio
import datetime
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.server import live_server

DATESYNC = str(Path(sys.executable).with_name("datesync"))
TODAY = datetime.datetime.now(datetime.UTC).date()
FUTURE = (TODAY + datetime.timedelta(days=3)).isoformat()

Call = Callable[[httpx.AsyncClient], Any]


def post(path: str, body: dict[str, object] | None = None) -> Call:
    return lambda c: c.post(path, json=body) if body is not None else c.post(path)


def get(path: str, **params: str) -> Call:
    return lambda c: c.get(path, params=params)


CASES: list[tuple[str, Call, list[str], int]] = [
    ("reversed range", post("/sync/batch", {"start_date": "2024-01-05", "end_date": "2024-01-01"}),
     ["batch", "2024-01-05", "2024-01-01"], 422),
    ("impossible date", post("/sync/batch", {"start_date": "2024-02-30", "end_date": "2024-03-01"}),
     ["batch", "2024-02-30", "2024-03-01"], 422),
    ("not YYYY-MM-DD", post("/sync/batch", {"start_date": "2024-1-1", "end_date": "2024-01-02"}),
     ["batch", "2024-1-1", "2024-01-02"], 422),
    ("before the lower bound", post("/sync/batch", {"start_date": "0999-12-31", "end_date": "2024-01-02"}),
     ["batch", "0999-12-31", "2024-01-02"], 422),
    ("future end", post("/sync/batch", {"start_date": "2024-01-01", "end_date": FUTURE}),
     ["batch", "2024-01-01", FUTURE], 422),
    ("range over the limit", post("/sync/batch", {"start_date": "2000-01-01", "end_date": "2024-01-01"}),
     ["batch", "2000-01-01", "2024-01-01"], 422),
    ("unknown source", post("/sync/batch", {"start_date": "2024-01-01", "end_date": "2024-01-02", "source": "nope"}),
     ["batch", "2024-01-01", "2024-01-02", "--source", "nope"], 422),
    ("cancel of an unknown batch", post("/batches/9999/cancel"), ["cancel", "9999"], 404),
    ("retry of an unknown batch", post("/batches/9999/retry"), ["retry", "9999"], 404),
    ("retry of a batch still queued", post("/batches/1/retry"), ["retry", "1"], 409),
    ("gaps, reversed", get("/gaps", **{"from": "2024-01-05", "to": "2024-01-01"}),
     ["gaps", "2024-01-05", "2024-01-01"], 422),
    ("gaps reaching the future", get("/gaps", **{"from": "2024-01-01", "to": FUTURE}),
     ["gaps", "2024-01-01", FUTURE], 422),
    ("gaps of an unknown source", get("/gaps", **{"from": "2024-01-01", "to": "2024-01-02", "source": "nope"}),
     ["gaps", "2024-01-01", "2024-01-02", "--source", "nope"], 422),
    ("status, reversed", get("/", **{"from": "2024-01-05", "to": "2024-01-01"}),
     ["status", "--from", "2024-01-05", "--to", "2024-01-01"], 422),
    ("status, impossible date", get("/", **{"from": "2024-02-30"}), ["status", "--from", "2024-02-30"], 422),
]


@pytest.mark.parametrize(("case", "api", "cli", "status"), CASES, ids=[c[0] for c in CASES])
async def test_the_api_and_the_cli_refuse_alike(dsn: str, db: asyncpg.Connection, case: str, api: Call,
                                                cli: list[str], status: int) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        # One batch, still queued (no daemon here): what "retry of a batch still queued" retries.
        await client.post("/sync/batch", json={"start_date": "2023-01-01", "end_date": "2023-01-02"})
        answer = await api(client)
        assert answer.status_code == status, answer.text
        message = answer.json()["message"]
        env = {**os.environ, "DATABASE_URL": dsn, "LOG_FORMAT": "console", "COLUMNS": "400", "LANG": "C.UTF-8"}
        proc = await asyncio.create_subprocess_exec(DATESYNC, *cli, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, (out.decode(), err.decode())
    assert f"error: {message}" in " ".join(err.decode().split()), (message, err.decode())
    assert await db.fetchval("SELECT count(*) FROM datesync.batch") == 1  # nothing left behind


async def test_the_cli_speaks_chinese_when_the_locale_does(dsn: str) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.api) as client:
        answer = await client.post("/batches/9999/cancel", headers={"Accept-Language": "zh-CN"})
        env = {**os.environ, "DATABASE_URL": dsn, "LOG_FORMAT": "console", "COLUMNS": "400",
               "LANG": "zh_CN.UTF-8"}
        proc = await asyncio.create_subprocess_exec(DATESYNC, "cancel", "9999", env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert answer.json()["message"] in err.decode()
