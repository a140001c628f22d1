"""Probes `datesync bench` runs beside the processes it measures: a raw-socket keep-alive HTTP client, an
open-loop load made of it, and a sampler of the database's wait events.

The open-loop load times each request from the moment it was due, not from the moment it was sent: a slow answer
then shows in its own latency and in that of every request due behind it, which a closed loop (a client waits for
its answer before it sends again) would leave out ("coordinated omission").
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import asyncpg


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection for the POST probes (plain HTTP). httpx spends more CPU per request than
    the server it would measure, and both share the machine's two cores: its cost showed up as server latency."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Open the connection ahead of the first request, so that its set-up is not timed; open it again if the
        server closed it while it sat idle (its keep-alive timer, or its read deadline for a connection that never
        sent a request: an open loop keeps more connections than it uses at a time)."""
        if self.writer is not None and self.reader is not None and self.reader.at_eof():
            self.writer.close()
            self.reader = self.writer = None
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, payload: dict[str, Any]) -> int:
        await self.connect()
        assert self.reader is not None and self.writer is not None
        body = json.dumps(payload).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise RuntimeError("bench: the server closed a connection without answering a request")
        status = int(status_line.split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        else:  # chunked
            while (size := int((await self.reader.readline()).strip(), 16)) > 0:
                await self.reader.readexactly(size + 2)
            await self.reader.readline()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclasses.dataclass(frozen=True)
class OpenLoopResult:
    latencies_ms: list[float]  # from each request's due time to its whole answer read
    connections: int  # connections used: the ones opened ahead and any opened because all were busy
    late_ms: float  # how late the client sent its latest request (its own lag, included in the latencies)


async def open_loop(
    port: int, path: str, body: Callable[[int], dict[str, Any]], rate: float, seconds: float,
    connections: int = 64, max_connections: int = 512, timeout: float = 300,
) -> OpenLoopResult:
    """POST `body(i)` to `path` at `rate` requests per second for `seconds`: request i is due at start + i / rate,
    whatever happened to the ones before it. It goes out on an idle keep-alive connection; when every connection
    is busy a new one is opened (its connect is then part of its latency), up to `max_connections`. Beyond that the
    server is far behind (half a second at 1,000/s) and the request waits for a connection, also timed: without
    the cap the backlog would become connections, and uvicorn answers 503 above its connection limit."""
    opened = [KeepAliveClient(port) for _ in range(connections)]
    await asyncio.gather(*(client.connect() for client in opened))
    idle: asyncio.LifoQueue[KeepAliveClient] = asyncio.LifoQueue()  # the most recently used first: warm
    for client in opened:
        idle.put_nowait(client)
    latencies: list[float] = []
    late = 0.0

    async def one(i: int, due: float) -> None:
        if idle.empty() and len(opened) < max_connections:
            client = KeepAliveClient(port)
            opened.append(client)
        else:
            client = await idle.get()
        status = await client.post(path, body(i))
        latencies.append((time.perf_counter() - due) * 1000)
        idle.put_nowait(client)
        if status not in (200, 202):  # 200: the same range posted again (a duplicate)
            raise RuntimeError(f"bench: POST answered {status}")

    tasks: list[asyncio.Task[None]] = []
    try:
        # perf_counter, not loop.time(): uvloop's clock counts whole milliseconds and is read once per loop turn.
        start = time.perf_counter() + 0.05
        for i in range(round(rate * seconds)):
            due = start + i / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            late = max(late, time.perf_counter() - due)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    finally:
        for task in tasks:
            task.cancel()
        for client in opened:
            client.close()
    return OpenLoopResult(latencies, len(opened), late * 1000)


# The backends of this database that are running a statement, and which of them wait for a heavyweight lock
# (wait_event_type 'Lock': a row, a transaction id, a relation, an advisory lock), by wait event and the start of
# the waiting statement (which of the engine's calls waits).
WAITS = """
SELECT wait_event_type = 'Lock' AS lock,
       CASE WHEN wait_event_type = 'Lock'
            THEN wait_event || ': ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 48) ELSE '' END AS event,
       count(*) AS n
FROM pg_stat_activity
WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
GROUP BY 1, 2
"""


@dataclasses.dataclass
class WaitSamples:
    active: int = 0  # active backends summed over the samples
    # by wait_event and statement
    lock_waits: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    @property
    def lock_share(self) -> float:
        return sum(self.lock_waits.values()) / self.active if self.active else 0.0


async def sample_waits(
    conn: asyncpg.Connection, done: Callable[[], Any], interval: float = 0.01, check_every: int = 10
) -> WaitSamples:
    """Sample pg_stat_activity on `conn` every `interval` seconds until `done()` (awaited every `check_every`
    samples, on the same connection: a second probe connection would be one more active backend in the samples)."""
    loop = asyncio.get_running_loop()
    samples = WaitSamples()
    tick = loop.time()
    n = 0
    while True:
        for row in await conn.fetch(WAITS):
            samples.active += row["n"]
            if row["lock"]:
                samples.lock_waits[row["event"]] += row["n"]
        n += 1
        if n % check_every == 0 and await done():
            return samples
        # Fixed ticks, so the rate does not drift with the query's own time.
        tick += interval
        await asyncio.sleep(max(0.0, tick - loop.time()))
