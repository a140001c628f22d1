"""The web process's edges on real servers and sockets: which Host names it serves, which Origins may mutate,
the security headers of every HTML answer, proxy headers, and connections that are idle, slow or too many."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser

from datesync.daemon.settings import Settings
from tests.faults.procs import Proc, free_port, spawn
from tests.support.server import live_server
from tests.support.waiting import wait_for

API = "/api/v1/sync-status"
GOOD = {"start_date": "2025-10-01", "end_date": "2025-10-03"}


async def _batches(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM datesync.batch")
    return count


# -- Host ------------------------------------------------------------------------------------------------


async def test_a_dns_rebinding_host_is_refused_with_the_envelope(dsn: str, db: asyncpg.Connection) -> None:
    """A page on rebind.attacker.example whose name now resolves to 127.0.0.1 talks to us "same-origin": the
    browser sends its own name as Host and Sec-Fetch-Site: same-origin. Only the Host gives it away."""
    existing = await db.fetchval("INSERT INTO datesync.batch (start_date, end_date) VALUES "
                                 "('2025-01-01', '2025-01-02') RETURNING id")
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.base_url) as client:
        port = live.base_url.rsplit(":", 1)[1]
        evil = f"rebind.attacker.example:{port}"
        browser = {"Host": evil, "Origin": f"http://{evil}", "Sec-Fetch-Site": "same-origin"}
        answers = [
            await client.post(f"{API}/sync/batch", json=GOOD, headers=browser),
            await client.post(f"{API}/batches/{existing}/cancel", headers=browser),
            await client.post(f"{API}/batches/{existing}/retry", headers=browser),
            await client.get(f"{API}/batches", headers={"Host": evil}),
            await client.get("/", headers={"Host": evil}),
            await client.get(f"{API}/batches", headers={"Host": evil, "Accept-Language": "zh-CN"}),
        ]
        health = await client.get("/healthz", headers={"Host": evil})
        served = [await client.get(f"{API}/batches", headers={"Host": f"{name}:{port}"})
                  for name in ("localhost", "127.0.0.1", "[::1]", "LOCALHOST", "localhost.")]
    for answer in answers:
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["status"] == "error" and body["errors"][0]["field"] == "Host", body
        assert "rebind.attacker.example" in body["message"]
    assert "DATESYNC_ALLOWED_HOSTS" in answers[0].json()["message"]
    assert "Host" in answers[-1].json()["message"] and "不" in answers[-1].json()["message"]
    assert await _batches(db) == 1
    assert await db.fetchval("SELECT cancel_requested FROM datesync.batch WHERE id = $1", existing) is False
    # Liveness says nothing but "up": platform health checks that send an IP as Host must keep working.
    assert health.status_code == 200
    assert [a.status_code for a in served] == [200] * 5


@pytest.mark.parametrize(
    ("allowed", "host", "served"),
    [
        ((".example.com",), "api.example.com", True),
        ((".example.com",), "example.com", True),
        ((".example.com",), "a.b.example.com:8443", True),
        ((".example.com",), "badexample.com", False),
        ((".example.com",), "localhost", True),  # our own names stay served
        (("status.example.com",), "Status.Example.COM", True),
        (("status.example.com",), "api.example.com", False),
        (("*",), "anything.example", True),
        (("10.0.0.5", "[fd00::1]"), "[fd00::1]:8000", True),
        (("10.0.0.5",), "10.0.0.6", False),
        (("example.com",), "example.com:notaport", False),
        (("example.com",), "example.com@evil.example", False),
    ],
)
async def test_allowed_hosts_match_names_suffixes_and_the_wildcard(
        dsn: str, allowed: tuple[str, ...], host: str, served: bool) -> None:
    settings = Settings(retry_delay=0.05, poll_interval=5, allowed_hosts=allowed)
    async with live_server(dsn, settings) as live, httpx.AsyncClient(base_url=live.base_url) as client:
        answer = await client.get(f"{API}/batches", headers={"Host": host})
    assert answer.status_code == (200 if served else 400), answer.text


# -- Origin ----------------------------------------------------------------------------------------------


async def test_another_sites_origin_is_refused_even_without_sec_fetch_site(dsn: str, db: asyncpg.Connection) -> None:
    """Browsers that send no Sec-Fetch-* headers (older ones, some embedded views) still send Origin on a POST."""
    settings = Settings(retry_delay=0.05, poll_interval=5, cors_origins=("https://app.example",))
    async with live_server(dsn, settings) as live, httpx.AsyncClient(base_url=live.base_url) as client:
        port = live.base_url.rsplit(":", 1)[1]
        refused = [
            await client.post(f"{API}/sync/batch", json=GOOD, headers={"Origin": origin})
            for origin in ("https://evil.example", "null", f"http://127.0.0.1:{int(port) + 1}",
                           f"https://127.0.0.1:{port}", "http://app.example")
        ]
        refused.append(await client.post(f"{API}/batches/1/cancel", headers={"Origin": "https://evil.example"}))
        own = await client.post(f"{API}/sync/batch", json=GOOD, headers={"Origin": live.base_url})
        own_by_name = await client.post(
            f"{API}/sync/batch", json={**GOOD, "force": True},
            headers={"Host": f"localhost:{port}", "Origin": f"http://LOCALHOST:{port}"})
        configured = await client.post(f"{API}/sync/batch", json={**GOOD, "end_date": "2025-10-04"},
                                       headers={"Origin": "https://app.example"})
        no_origin = await client.post(f"{API}/sync/batch", json={**GOOD, "end_date": "2025-10-05"})
        read = await client.get(f"{API}/batches", headers={"Origin": "https://evil.example"})
    for answer in refused:
        assert answer.status_code == 403, answer.text
        assert answer.json()["errors"][0]["field"] == "Origin"
    assert [own.status_code, own_by_name.status_code, configured.status_code, no_origin.status_code] == [202] * 4
    assert read.status_code == 200
    assert await _batches(db) == 4


# -- security headers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/static/index.html"])
async def test_every_copy_of_the_page_forbids_framing(dsn: str, path: str) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.base_url) as client:
        answer = await client.get(path)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "same-origin"


async def test_a_browser_refuses_to_frame_either_copy_of_the_page(dsn: str, browser: Browser) -> None:
    """Clickjacking: another site's page puts ours in a frame. Chromium must refuse to render it."""
    async with live_server(dsn) as live:
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.set_content(f'<iframe src="{live.base_url}/"></iframe>'
                                   f'<iframe src="{live.base_url}/static/index.html"></iframe>')
            await page.wait_for_timeout(1500)
            frames = [f for f in page.frames if f is not page.main_frame]
            assert len(frames) == 2
            for frame in frames:
                # A blocked frame shows Chromium's error page instead; ours would have a title and the form.
                assert frame.url.startswith("chrome-error://"), frame.url
        finally:
            await context.close()


# -- a real `datesync web` process -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def web_process(dsn: str, env: dict[str, str] | None = None,
                      prefix: Sequence[str] = ()) -> AsyncIterator[tuple[Proc, str]]:
    """`datesync web` on 127.0.0.1:<free port> (`prefix` runs in front, e.g. prlimit); yields once /healthz
    answers."""
    port = free_port()
    full = {"LOG_FORMAT": "json", "DATABASE_URL": dsn, "PORT": str(port), "HOST": "127.0.0.1",
            "RENDER_EXTERNAL_HOSTNAME": "", **(env or {})}
    proc = spawn(["datesync.cli", "web"], full, "web", prefix)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while True:
                assert proc.alive(), f"the web process exited: {proc.log_text()[-3000:]}"
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(base + "/healthz", timeout=2)).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"the web process did not answer: {proc.log_text()[-3000:]}"
                await asyncio.sleep(0.1)
        yield proc, base
    finally:
        proc.signal(15)
        with contextlib.suppress(AssertionError):
            await proc.wait(15)
        proc.close()


async def test_proxy_headers_are_ignored_unless_the_proxy_is_trusted(dsn: str) -> None:
    """The trailing-slash redirect is built from the request's scheme and Host: a client must not choose them."""
    forged = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    async with web_process(dsn) as (_, base), httpx.AsyncClient(base_url=base) as client:
        redirect = await client.get(f"{API}/batches/", headers=forged)
        elsewhere = await client.get(f"{API}/batches/", headers={"Host": "evil.example"})
    assert redirect.status_code in (307, 308), redirect.text
    assert redirect.headers["location"] == f"{base}{API}/batches"
    assert elsewhere.status_code == 400 and elsewhere.json()["errors"][0]["field"] == "Host"
    for trusted in ("127.0.0.1", "10.9.9.9, *"):  # Render's proxy: "*"
        async with web_process(dsn, {"DATESYNC_TRUSTED_PROXIES": trusted}) as (_, base), \
                httpx.AsyncClient(base_url=base) as client:
            behind_proxy = await client.get(f"{API}/batches/", headers=forged)
            # The page's own POST through a TLS-terminating proxy: its Origin is https, and so are we now.
            https_origin = f"https{base.removeprefix('http')}"
            posted = await client.post(f"{API}/sync/batch", json=GOOD, headers={**forged, "Origin": https_origin})
        assert behind_proxy.headers["location"] == f"{https_origin}{API}/batches", trusted
        assert posted.status_code in (200, 202), posted.text


async def _open_idle(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server ends the connection within `within` seconds (whatever it sends first)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def _trickle(writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """Slowloris: a request head one byte every 0.2 s, never finished."""
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    with contextlib.suppress(ConnectionError):
        while not stop.is_set():
            writer.write(b"X")
            await writer.drain()
            await asyncio.sleep(0.2)


async def test_idle_and_slow_connections_are_closed_and_health_still_answers(dsn: str) -> None:
    env = {"DATESYNC_READ_TIMEOUT": "1", "DATESYNC_KEEPALIVE_TIMEOUT": "1"}
    async with web_process(dsn, env) as (_, base), httpx.AsyncClient(base_url=base) as client:
        port = int(base.rsplit(":", 1)[1])
        idle = await _open_idle(port, 40)
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        stop = asyncio.Event()
        trickling = asyncio.create_task(_trickle(slow_writer, stop))
        # A kept-alive connection after one answer.
        kept_reader, kept_writer = await asyncio.open_connection("127.0.0.1", port)
        kept_writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await kept_reader.readline()).startswith(b"HTTP/1.1 200")
        try:
            assert (await client.get("/healthz", timeout=2)).status_code == 200
            started = time.monotonic()
            closed = await asyncio.gather(*(_closed_by_server(r, 4) for r, _ in idle),
                                          _closed_by_server(slow_reader, 4), _closed_by_server(kept_reader, 4))
            assert all(closed), f"{closed.count(False)} of {len(closed)} connections still open"
            assert time.monotonic() - started < 4
            # A new client: the first one's kept-alive connection was closed after the 1 s keep-alive timeout.
            async with httpx.AsyncClient(base_url=base) as fresh:
                assert (await fresh.get("/healthz", timeout=2)).status_code == 200
        finally:
            stop.set()
            await trickling
            for _, writer in [*idle, (slow_reader, slow_writer), (kept_reader, kept_writer)]:
                writer.close()


async def test_between_requests_only_the_keep_alive_timeout_counts(dsn: str) -> None:
    """Behind a proxy that reuses connections (Render's), closing an idle kept-alive connection early races the
    proxy's next request on it (a 502): the read timeout must not shorten the keep-alive one."""
    env = {"DATESYNC_READ_TIMEOUT": "1", "DATESYNC_KEEPALIVE_TIMEOUT": "4"}
    async with web_process(dsn, env) as (_, base):
        port = int(base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            writer.write(request)
            assert (await reader.readuntil(b"}}")).startswith(b"HTTP/1.1 200")
            assert not await _closed_by_server(reader, 2)  # idle 2 s: longer than the read timeout
            writer.write(request)
            assert (await reader.readuntil(b"}}")).startswith(b"HTTP/1.1 200")
            # A request begun and never finished is closed after the read timeout, keep-alive or not.
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started = time.monotonic()
            assert await _closed_by_server(reader, 3)
            assert time.monotonic() - started < 2
        finally:
            writer.close()


async def test_with_a_low_fd_limit_idle_sockets_do_not_take_the_server_down(dsn: str) -> None:
    """The reported outage: about 110 idle sockets exhausted a 128-descriptor limit, and nothing closed them."""
    env = {"DATESYNC_READ_TIMEOUT": "1"}
    async with web_process(dsn, env, prefix=["prlimit", "--nofile=128:128"]) as (_, base), \
            httpx.AsyncClient(base_url=base) as client:
        port = int(base.rsplit(":", 1)[1])
        idle = await _open_idle(port, 200)
        try:
            # While the descriptors are used up a new connection may be dropped (the event loop accepts and
            # closes what it cannot keep); once the read timeout has closed the idle ones, the server is back.
            async def answers() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get("/healthz", timeout=3)).status_code == 200
                return False

            await wait_for(answers, timeout=15, interval=0.2)
            assert (await client.get(f"{API}/batches", timeout=5)).status_code == 200
            closed = await asyncio.gather(*(_closed_by_server(r, 5) for r, _ in idle))
            assert all(closed), f"{closed.count(False)} idle connections still open"
        finally:
            for _, writer in idle:
                writer.close()


async def test_connections_beyond_the_cap_get_503_and_event_streams_still_work(
        dsn: str, db: asyncpg.Connection) -> None:
    env = {"DATESYNC_SSE_MAX_CLIENTS": "2", "DATESYNC_MAX_CONNECTIONS": "5", "DATESYNC_READ_TIMEOUT": "1"}
    async with web_process(dsn, env) as (_, base), httpx.AsyncClient(base_url=base, timeout=10) as client:
        port = int(base.rsplit(":", 1)[1])
        async with client.stream("GET", f"{API}/events") as one, client.stream("GET", f"{API}/events") as two:
            assert one.status_code == two.status_code == 200
            lines = [one.aiter_lines(), two.aiter_lines()]
            for stream in lines:
                assert await anext(stream) == "retry: 3000"
            third = await client.get(f"{API}/events")
            assert third.status_code == 503  # the event streams' own cap
            # Two streams and two idle sockets: the next connection is over the cap of 5.
            idle = await _open_idle(port, 2)
            started = time.monotonic()
            async with httpx.AsyncClient(base_url=base, timeout=5) as fresh:
                over = await fresh.get("/healthz")
            assert over.status_code == 503 and time.monotonic() - started < 2
            for _, writer in idle:
                writer.close()
            # The streams outlive the read timeout: it covers receiving a request, not answering it.
            await asyncio.sleep(1.5)
            async with httpx.AsyncClient(base_url=base, timeout=5) as fresh:
                assert (await fresh.get("/healthz")).status_code == 200
            batch = await db.fetchval("INSERT INTO datesync.batch (start_date, end_date) VALUES "
                                      "('2025-01-01', '2025-01-02') RETURNING id")
            await db.execute("INSERT INTO datesync.event (batch_id, kind, state) VALUES ($1, 'task', 'running')",
                             batch)
            for stream in lines:
                async with asyncio.timeout(5):
                    while (line := await anext(stream)) != "event: task":
                        pass
                    assert line == "event: task"
