"""The `http` handler against a real local HTTP server: pages, throttling, errors, the rate limit, and a table
that ends up matching the upstream exactly."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from datesync.daemon.db.connect import create_pool
from datesync.daemon.errors import HandlerError, SettingsError
from datesync.daemon.settings import Settings
from datesync.daemon.sources import SourceEnv
from datesync.daemon.sync import handlers
from datesync.daemon.sync.context import SyncContext
from datesync.daemon.sync.handlers.http import (
    HttpConfig,
    HttpHandler,
    RateLimiter,
    UpstreamError,
    quote_table,
    retry_after_seconds,
    safe_url,
)
from datesync.daemon.sync.worker import Daemon
from tests.support.server import free_port
from tests.support.waiting import wait_for

SECRET = "s3cr3t-api-key"
DAY = datetime.date(2025, 3, 1)


@dataclasses.dataclass
class Upstream:
    """A scripted API: `items[day]` is what it returns; `script` queues special answers per path."""

    base: str
    items: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    script: dict[str, list[Response]] = dataclasses.field(default_factory=dict)
    hits: list[tuple[float, str, str | None]] = dataclasses.field(default_factory=list)  # (time, path, api key)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _app(up: Upstream) -> Starlette:
    async def endpoint(request: Request) -> Response:
        path = request.url.path
        up.hits.append((time.monotonic(), path + ("?" + request.url.query if request.url.query else ""),
                        request.headers.get("x-api-key")))
        queued = up.script.get(path)
        if queued:
            return queued.pop(0)
        day = request.path_params["day"]
        rows = up.items.get(day, [])
        kind = request.path_params["kind"]
        if kind == "list":
            return JSONResponse(rows)
        if kind == "paged":  # two per page: body `next` on page 1, a Link header after that
            page = int(request.query_params.get("page", "1"))
            chunk = rows[(page - 1) * 2: page * 2]
            more = page * 2 < len(rows)
            if page == 1:
                return JSONResponse({"data": chunk, "next": f"?page=2&api_key={SECRET}" if more else None})
            headers = {"Link": f'<{up.base}/paged/{day}?page={page + 1}>; rel="next"'} if more else {}
            return JSONResponse({"data": chunk}, headers=headers)
        return JSONResponse({"data": rows})

    return Starlette(routes=[Route("/{kind}/{day}", endpoint)])


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    port = free_port()
    up = Upstream(base=f"http://127.0.0.1:{port}")
    server = _Server(uvicorn.Config(_app(up), host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # the server failed to start: show why
        await asyncio.sleep(0.01)
    yield up
    server.should_exit = True
    await task


def env_for(up: Upstream, kind: str = "list", **extra: str) -> SourceEnv:
    return SourceEnv("default", {
        "DATESYNC_HTTP_URL": f"{up.base}/{kind}/{{date}}",
        "DATESYNC_HTTP_TABLE": "raw.orders",
        "DATESYNC_HTTP_HEADERS": json.dumps({"X-Api-Key": SECRET}),
        **extra,
    })


def ctx(conn: asyncpg.Connection, day: datetime.date = DAY) -> SyncContext:
    return SyncContext(day=day, db=conn, log=structlog.get_logger("test"), attempt=1, batch_id=0,
                       source="default", task_id=0, worker="test")


@contextlib.asynccontextmanager
async def handler_for(dsn: str, env: SourceEnv, sleeps: list[float] | None = None) -> AsyncIterator[HttpHandler]:
    """A set-up handler whose waits are recorded instead of slept when `sleeps` is given."""

    async def record(seconds: float) -> None:
        assert sleeps is not None
        sleeps.append(seconds)

    made = HttpHandler(HttpConfig.from_env(env), **({"sleep": record} if sleeps is not None else {}))
    pool = await create_pool(dsn, 2, "t")
    try:
        await made.setup(pool)
        yield made
    finally:
        await made.close()
        await pool.close()


async def table(db: asyncpg.Connection, day: datetime.date = DAY) -> dict[str, Any]:
    rows = await db.fetch('SELECT key, payload FROM raw."orders" WHERE day = $1 ORDER BY key', day)
    return {r["key"]: r["payload"] for r in rows}


async def test_pages_are_followed_and_a_resync_makes_the_day_match_exactly(
    dsn: str, db: asyncpg.Connection, upstream: Upstream
) -> None:
    upstream.items[DAY.isoformat()] = [{"id": i, "v": i * 10} for i in range(1, 6)]
    async with handler_for(dsn, env_for(upstream, "paged")) as h:
        assert await h.sync(DAY, ctx(db)) == 5
        assert [path for _, path, _ in upstream.hits] == [
            "/paged/2025-03-01", f"/paged/2025-03-01?page=2&api_key={SECRET}", "/paged/2025-03-01?page=3"]
        assert all(key == SECRET for _, _, key in upstream.hits)
        assert await table(db) == {str(i): {"id": i, "v": i * 10} for i in range(1, 6)}
        # Upstream drops 2 and 5, changes 3: a re-sync mirrors that, and other dates are untouched.
        await db.execute("INSERT INTO raw.orders (day, key, payload) VALUES ('2025-03-02', 'x', '{}')")
        upstream.items[DAY.isoformat()] = [{"id": 1, "v": 10}, {"id": 3, "v": 99}, {"id": 4, "v": 40}]
        assert await h.sync(DAY, ctx(db)) == 3
    assert await table(db) == {"1": {"id": 1, "v": 10}, "3": {"id": 3, "v": 99}, "4": {"id": 4, "v": 40}}
    assert await table(db, datetime.date(2025, 3, 2)) == {"x": {}}
    columns = await db.fetch("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_schema = 'raw' AND table_name = 'orders' ORDER BY ordinal_position")
    assert [(c["column_name"], c["data_type"]) for c in columns] == [
        ("day", "date"), ("key", "text"), ("payload", "jsonb"), ("synced_at", "timestamp with time zone")]


async def test_an_empty_day_empties_the_day_and_a_data_object_is_accepted(
    dsn: str, db: asyncpg.Connection, upstream: Upstream
) -> None:
    upstream.items[DAY.isoformat()] = [{"id": "a"}, {"id": "b"}]
    async with handler_for(dsn, env_for(upstream, "wrapped")) as h:
        assert await h.sync(DAY, ctx(db)) == 2
        upstream.items[DAY.isoformat()] = []
        assert await h.sync(DAY, ctx(db)) == 0
    assert await table(db) == {}


async def test_503_with_retry_after_is_waited_out_within_the_attempt(
    dsn: str, db: asyncpg.Connection, upstream: Upstream
) -> None:
    upstream.items[DAY.isoformat()] = [{"id": 1}]
    path = f"/list/{DAY.isoformat()}"
    upstream.script[path] = [PlainTextResponse("busy", 503, headers={"Retry-After": "1"}),
                             PlainTextResponse("slow down", 429, headers={"Retry-After": "0.2"})]
    async with handler_for(dsn, env_for(upstream)) as h:
        started = time.monotonic()
        assert await h.sync(DAY, ctx(db)) == 1
        elapsed = time.monotonic() - started
    assert len(upstream.hits) == 3
    assert 1.2 <= elapsed < 3, elapsed  # it really waited what the server asked, and no more than that
    assert upstream.hits[1][0] - upstream.hits[0][0] >= 0.95


async def test_throttling_that_never_ends_fails_the_attempt_clearly(
    dsn: str, db: asyncpg.Connection, upstream: Upstream
) -> None:
    path = f"/list/{DAY.isoformat()}"
    upstream.script[path] = [PlainTextResponse("down", 502) for _ in range(3)]
    sleeps: list[float] = []
    async with handler_for(dsn, env_for(upstream), sleeps) as h:
        with pytest.raises(UpstreamError, match=r"answered HTTP 502 3 times"):
            await h.sync(DAY, ctx(db))
        assert len(sleeps) == 2  # backoff between the three tries, recorded instead of slept
        upstream.script[path] = [PlainTextResponse("later", 503, headers={"Retry-After": "3600"})]
        with pytest.raises(UpstreamError, match=r"retry after 3600 s; the date will be retried later"):
            await h.sync(DAY, ctx(db))
        assert len(sleeps) == 2


async def test_4xx_and_malformed_bodies_fail_with_a_clear_message_and_no_secret(
    dsn: str, db: asyncpg.Connection, upstream: Upstream
) -> None:
    upstream.items[DAY.isoformat()] = [{"id": 1}]
    await db.execute("CREATE SCHEMA raw; CREATE TABLE raw.orders (day date, key text, payload jsonb, "
                     "synced_at timestamptz, PRIMARY KEY (day, key))")
    await db.execute("INSERT INTO raw.orders VALUES ($1, 'keep', '{}', now())", DAY)
    path = f"/list/{DAY.isoformat()}"
    cases = [
        (PlainTextResponse("no such day", 404), r"GET http://127\.0\.0\.1:\d+/list/2025-03-01 answered HTTP 404: "
                                                r"no such day"),
        (PlainTextResponse("<html>oops</html>", 200), r"returned a body that is not JSON: <html>oops</html>"),
        (JSONResponse({"items": []}), r"returned JSON dict; expected a list of objects"),
        (JSONResponse([1, 2]), r"an item that is not an object"),
        (JSONResponse([{"name": "no id"}]), r"without a string or integer 'id' field"),
        (Response(status_code=302, headers={"Location": "https://elsewhere.example/x"}),
         r"redirects \(HTTP 302\) to https://elsewhere\.example/x"),
    ]
    with capture_logs() as logs:
        async with handler_for(dsn, env_for(upstream)) as h:
            for response, message in cases:
                upstream.script[path] = [response]
                with pytest.raises(UpstreamError, match=message) as caught:
                    await h.sync(DAY, ctx(db))
                assert SECRET not in str(caught.value)
    assert len(upstream.hits) == len(cases)  # a 4xx or a bad body is not retried within the attempt
    assert await table(db) == {"keep": {}}  # nothing written by a failed attempt
    assert SECRET not in repr(logs)


async def test_next_page_on_another_origin_is_refused(dsn: str, db: asyncpg.Connection, upstream: Upstream) -> None:
    upstream.script[f"/wrapped/{DAY.isoformat()}"] = [
        JSONResponse({"data": [{"id": 1}], "next": "https://evil.example/steal"})]
    async with handler_for(dsn, env_for(upstream, "wrapped")) as h:
        with pytest.raises(UpstreamError, match="another origin"):
            await h.sync(DAY, ctx(db))


async def test_connection_errors_are_retried_then_fail(dsn: str, db: asyncpg.Connection) -> None:
    closed = Upstream(base=f"http://127.0.0.1:{free_port()}")
    sleeps: list[float] = []
    async with handler_for(dsn, env_for(closed), sleeps) as h:
        with pytest.raises(UpstreamError, match=r"failed after 3 tries: ConnectError"):
            await h.sync(DAY, ctx(db))
    assert len(sleeps) == 2


async def test_the_rate_limit_is_shared_by_every_date_of_a_daemon(
    dsn: str, db: asyncpg.Connection, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm_up = DAY - datetime.timedelta(days=1)
    days = [DAY + datetime.timedelta(days=i) for i in range(6)]
    for d in [warm_up, *days]:
        upstream.items[d.isoformat()] = [{"id": d.day}]
    for var, value in env_for(upstream, "wrapped", DATESYNC_HTTP_RATE="8").env.items():
        monkeypatch.setenv(var, value)
    settings = Settings(concurrency=6, retry_delay=0.05, poll_interval=2)
    pool = await create_pool(dsn, settings.pool_size, "t")
    daemon = Daemon(settings, pool, {"default": handlers.load("http")}, dsn, grace=2)
    task = asyncio.create_task(daemon.run())
    try:
        # One date first: the limiter spaces the requests' starts, and the first one also opens the connection,
        # which under load delayed its arrival until just before the second.
        await db.execute("INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $1)", warm_up)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 1 FROM datesync.day WHERE status = 'success'"))
        upstream.hits.clear()
        await db.execute("INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $2)", days[0], days[-1])
        await wait_for(lambda: db.fetchval("SELECT count(*) = 7 FROM datesync.day WHERE status = 'success'"))
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)
        await pool.close()
    times = sorted(t for t, _, _ in upstream.hits)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 6 and min(gaps) >= 0.11, gaps  # 8/s: 125 ms apart, though six dates ran at once
    assert await db.fetchval("SELECT sum(rows_synced) FROM datesync.day") == 7
    assert await db.fetchval("SELECT count(*) FROM raw.orders") == 7


async def test_rate_limiter_spaces_concurrent_callers() -> None:
    limiter = RateLimiter(20)
    stamps: list[float] = []

    async def one() -> None:
        await limiter.wait()
        stamps.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(5)))
    assert stamps[-1] - stamps[0] >= 4 * 0.05 * 0.9


def test_settings_are_validated_naming_the_variable_and_never_echo_headers() -> None:
    base = {"DATESYNC_HTTP_URL": "https://api.example/{date}", "DATESYNC_HTTP_TABLE": "orders"}
    cases = [
        ({"DATESYNC_HTTP_URL": ""}, "DATESYNC_HTTP_URL is required"),
        ({"DATESYNC_HTTP_URL": "https://api.example/x"}, "DATESYNC_HTTP_URL must contain {date}"),
        ({"DATESYNC_HTTP_URL": "https://api.example/{day}"}, "only {date}"),
        ({"DATESYNC_HTTP_URL": "ftp://api.example/{date}"}, "must be an http:// or https:// URL"),
        ({"DATESYNC_HTTP_TABLE": ""}, "DATESYNC_HTTP_TABLE is required"),
        ({"DATESYNC_HTTP_TABLE": 'orders"; DROP TABLE x; --'}, "DATESYNC_HTTP_TABLE=.* is invalid"),
        ({"DATESYNC_HTTP_TABLE": "a.b.c"}, "DATESYNC_HTTP_TABLE=.* is invalid"),
        ({"DATESYNC_HTTP_RATE": "0"}, "DATESYNC_HTTP_RATE='0' is invalid"),
        ({"DATESYNC_HTTP_HEADERS": f"X-Api-Key: {SECRET}"}, "DATESYNC_HTTP_HEADERS is not valid JSON"),
        ({"DATESYNC_HTTP_HEADERS": json.dumps({"X-Api-Key": 1})}, "DATESYNC_HTTP_HEADERS must be a JSON object"),
        ({"DATESYNC_HTTP_HEADERS": json.dumps({"X-Api-Key": SECRET + "\n"})}, "line break"),
    ]
    for change, message in cases:
        with pytest.raises(SettingsError, match=message) as caught:
            HttpConfig.from_env(SourceEnv("default", {**base, **change}))
        assert SECRET not in str(caught.value)
    # A named source reads its own variables first and names them in messages.
    named = SourceEnv("orders", {**base, "DATESYNC_ORDERS_HTTP_TABLE": "bad name"})
    with pytest.raises(SettingsError, match="DATESYNC_ORDERS_HTTP_TABLE='bad name' is invalid"):
        HttpConfig.from_env(named)
    with pytest.raises(SettingsError, match=r"DATESYNC_HTTP_URL \(or DATESYNC_SHOP_HTTP_URL\) is required"):
        handlers.load("http", "shop", {})
    config = HttpConfig.from_env(SourceEnv("default", {**base, "DATESYNC_HTTP_URL": "https://a.example/{date:%Y%m%d}",
                                                       "DATESYNC_HTTP_HEADERS": json.dumps({"X-Api-Key": SECRET})}))
    assert config.url_for(DAY) == "https://a.example/20250301" and config.table == '"orders"'
    assert SECRET not in repr(config)


@pytest.mark.parametrize("userinfo", ["user:pa55word@", "user@", ":pa55word@"])
@pytest.mark.parametrize("source", ["default", "shop"])
def test_url_userinfo_never_silently_replaces_a_configured_authorization(userinfo: str, source: str) -> None:
    """httpx turns user:password in the URL into Basic auth, which overwrote the Authorization header of
    DATESYNC_HTTP_HEADERS without a word; the handler now refuses the pair when it loads."""
    env = {"DATESYNC_HTTP_URL": f"https://{userinfo}api.example/{{date}}", "DATESYNC_HTTP_TABLE": "orders",
           "DATESYNC_HTTP_HEADERS": json.dumps({"authorization": f"Bearer {SECRET}"})}
    with pytest.raises(SettingsError) as caught:
        handlers.load("http", source, env)
    message = str(caught.value)
    assert "DATESYNC_HTTP_URL" in message and "DATESYNC_HTTP_HEADERS" in message and "Authorization" in message
    assert "\n" not in message and SECRET not in message and "pa55word" not in message
    # Either one alone is fine.
    handlers.load("http", source, {**env, "DATESYNC_HTTP_HEADERS": json.dumps({"X-Api-Key": SECRET})})
    handlers.load("http", source, {**env, "DATESYNC_HTTP_URL": "https://api.example/{date}"})


async def test_the_configured_authorization_reaches_the_upstream(dsn: str, upstream: Upstream) -> None:
    seen: list[str | None] = []
    env = env_for(upstream, DATESYNC_HTTP_HEADERS=json.dumps({"Authorization": f"Bearer {SECRET}"}))
    async with handler_for(dsn, env) as made:
        assert made.client is not None
        made.client.event_hooks["request"].append(lambda request: _record(seen, request))
        upstream.items[DAY.isoformat()] = [{"id": "a"}]
        await made.fetch(DAY)
    assert seen == [f"Bearer {SECRET}"]


async def _record(seen: list[str | None], request: Any) -> None:
    seen.append(request.headers.get("authorization"))


async def test_an_existing_table_of_another_shape_is_reported_at_start(
    dsn: str, db: asyncpg.Connection, upstream: Upstream
) -> None:
    await db.execute("CREATE SCHEMA raw; CREATE TABLE raw.orders (id int)")
    with pytest.raises(HandlerError, match=r'DATESYNC_HTTP_TABLE: table "raw"."orders" cannot be used'):
        async with handler_for(dsn, env_for(upstream)):
            pass


def test_helpers() -> None:
    assert quote_table("Raw.Orders") == '"Raw"."Orders"'
    assert safe_url(f"https://user:pw@api.example:8443/x?day=2025-01-01&api_key={SECRET}") == (
        "https://api.example:8443/x?day=2025-01-01&api_key=***")
    assert retry_after_seconds("7") == 7 and retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = datetime.datetime(2025, 1, 1, 12, 0, tzinfo=datetime.UTC)
    assert retry_after_seconds("Wed, 01 Jan 2025 12:00:30 GMT", now) == 30
