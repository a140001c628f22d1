"""Your own handler (`package.module:function`) and several named sources in one daemon."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import asyncpg
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from datesync import service
from datesync.daemon.db.connect import create_pool
from datesync.daemon.db.queries import q
from datesync.daemon.errors import HandlerError
from datesync.daemon.settings import Settings
from datesync.daemon.sync import handlers
from datesync.daemon.sync.worker import Daemon
from tests.support.server import _Server, free_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]

MODULE = '''
import asyncio
import datetime

from datesync.daemon.sync.context import SyncContext

ACTIVE: dict[str, int] = {}
PEAK: dict[str, int] = {}
CLOSED: list[bool] = []


async def setup(pool):
    """Runs once when the daemon starts: create what sync() writes to."""
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS custom_out (source text, day date, PRIMARY KEY (source, day))")


async def sync(day: datetime.date, ctx: SyncContext) -> int:
    ACTIVE[ctx.source] = ACTIVE.get(ctx.source, 0) + 1
    PEAK[ctx.source] = max(PEAK.get(ctx.source, 0), ACTIVE[ctx.source])
    try:
        await asyncio.sleep(0.05)
        await ctx.db.execute(
            "INSERT INTO custom_out (source, day) VALUES ($1, $2) ON CONFLICT DO NOTHING", ctx.source, day)
        return 1
    finally:
        ACTIVE[ctx.source] -= 1


def plain(day, ctx):
    """A plain function runs in a thread; it must not touch ctx.db (asyncpg is not thread-safe)."""
    return day.day


async def close():
    CLOSED.append(True)


def wrong(day):
    return 0
'''


@contextlib.asynccontextmanager
async def _daemon(dsn: str, loaded: Mapping[str, handlers.Handler]) -> AsyncIterator[Daemon]:
    settings = Settings(retry_delay=0.05, poll_interval=2)
    pool = await create_pool(dsn, settings.pool_size, "t")
    daemon = Daemon(settings, pool, loaded, dsn, grace=2)
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)
        await pool.close()


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh importable module written to a temporary folder; returns its name."""
    name = f"custom_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


async def test_several_sources_with_custom_handlers_and_caps(dsn: str, db: asyncpg.Connection, module: str) -> None:
    settings = Settings.from_env({
        "DATESYNC_HANDLER": f"{module}:plain",
        "DATESYNC_SOURCES": f"capped={module}:sync;concurrency=1, wide={module}:sync",
        "DATESYNC_CONCURRENCY": "6", "DATESYNC_RETRY_DELAY": "0.05",
    })
    sources = service.sources_for(settings)
    assert sources == {"default": f"{module}:plain", "capped": f"{module}:sync", "wide": f"{module}:sync"}
    assert service.source_caps(settings) == {"capped": 1}
    for name, spec in {**sources, "elsewhere": "noop"}.items():  # another daemon's source
        await db.execute(q("source_register"), name, spec)
    pool = await create_pool(dsn, settings.pool_size, "t")
    ready = await handlers.set_up({name: handlers.load(spec, name) for name, spec in sources.items()}, pool)
    daemon = Daemon(settings, pool, ready, dsn, source_caps=service.source_caps(settings), grace=2)
    task = asyncio.create_task(daemon.run())
    try:
        for source in ("capped", "wide", "default", "elsewhere"):
            await db.execute("INSERT INTO datesync.batch (source, start_date, end_date) "
                             "VALUES ($1, '2025-06-01', '2025-06-04')", source)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 12 FROM datesync.day WHERE status = 'success'"))
        await asyncio.sleep(0.2)  # time enough to (wrongly) claim the other daemon's dates
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)
        await pool.close()
    state = importlib.import_module(module)
    assert state.PEAK["capped"] == 1 and state.PEAK["wide"] > 1, state.PEAK
    assert state.CLOSED == [True, True, True]  # close() once per source's handler, at stop
    assert await db.fetchval("SELECT count(*) FROM custom_out") == 8
    per_source = {r["source"]: r["rows"] for r in await db.fetch(
        "SELECT source, sum(rows_synced)::int AS rows FROM datesync.day GROUP BY source")}
    assert per_source == {"capped": 4, "wide": 4, "default": 1 + 2 + 3 + 4}  # plain() returned day.day
    left = await db.fetch("SELECT state::text FROM datesync.task WHERE source = 'elsewhere'")
    assert [r["state"] for r in left] == ["queued"] * 4


def test_a_handler_that_cannot_be_used_is_refused_at_start(module: str) -> None:
    cases = [
        ("no_such_module_xyz:sync", "default", r"DATESYNC_HANDLER='no_such_module_xyz:sync': cannot import "
                                               r"no_such_module_xyz: ModuleNotFoundError"),
        (f"{module}:missing", "default", f"{module} has no function missing"),
        (f"{module}:wrong", "default", r"a handler takes \(day, ctx\); wrong\(day\) does not"),
        (f"{module}:ACTIVE", "default", "has no function ACTIVE"),
        ("just_a_name", "default", r"expected one of demo, noop, http, sql or package\.module:function"),
        ("no_such_module_xyz:sync", "orders", r"DATESYNC_SOURCES \(source orders\)='no_such_module_xyz:sync'"),
    ]
    for spec, source, message in cases:
        with pytest.raises(HandlerError, match=message):
            handlers.load(spec, source)


def test_a_module_that_fails_on_import_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_handler_mod.py").write_text("raise RuntimeError('missing API key')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HandlerError, match="cannot import broken_handler_mod: RuntimeError: missing API key"):
        handlers.load("broken_handler_mod:sync")
    sys.modules.pop("broken_handler_mod", None)


async def test_a_setup_that_raises_stops_the_start_and_closes_the_others(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    (tmp_path / "bad_setup_mod.py").write_text(
        "async def setup(pool):\n    raise KeyError('TABLE')\n\nasync def sync(day, ctx):\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pool = await create_pool(dsn, 2, "t")
    try:
        loaded = {"a": handlers.load(f"{module}:sync", "a"), "b": handlers.load("bad_setup_mod:sync", "b")}
        with pytest.raises(HandlerError, match=r"source b: the bad_setup_mod:sync handler's setup failed: KeyError"):
            await handlers.set_up(loaded, pool)
    finally:
        await pool.close()
        sys.modules.pop("bad_setup_mod", None)
    assert importlib.import_module(module).CLOSED == [True]  # the one already set up was closed


async def test_the_documented_example_handler_works(
    dsn: str, db: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's weather.py, run by a daemon against a local stand-in for Open-Meteo."""
    doc = (ROOT / "README.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    name = f"weather_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))

    async def archive(request: Request) -> JSONResponse:
        day = request.query_params["start_date"]
        lat = float(request.query_params["latitude"])
        return JSONResponse({"daily": {"time": [day], "temperature_2m_max": [lat / 2],
                                       "temperature_2m_min": [1.5], "precipitation_sum": [0.0]}})

    port = free_port()
    server = _Server(uvicorn.Config(Starlette(routes=[Route("/v1/archive", archive)]), host="127.0.0.1",
                                    port=port, log_config=None, lifespan="off"))
    serving = asyncio.create_task(server.serve())
    monkeypatch.setenv("WEATHER_API", f"http://127.0.0.1:{port}/v1/archive")
    try:
        async with _daemon(dsn, {"default": handlers.load(f"{name}:sync")}):
            await db.execute("INSERT INTO datesync.batch (start_date, end_date) VALUES ('2025-01-01', '2025-01-02')")
            await wait_for(lambda: db.fetchval("SELECT count(*) = 2 FROM datesync.day WHERE status = 'success'"))
    finally:
        server.should_exit = True
        await serving
        sys.modules.pop(name, None)
    rows = await db.fetch("SELECT city, day, t_max FROM weather_daily ORDER BY day, city")
    assert [(r["city"], r["day"].day, r["t_max"]) for r in rows] == [
        ("berlin", 1, pytest.approx(26.26)), ("shanghai", 1, pytest.approx(15.615)),
        ("berlin", 2, pytest.approx(26.26)), ("shanghai", 2, pytest.approx(15.615))]
    assert await db.fetchval("SELECT sum(rows_synced) FROM datesync.day") == 4
