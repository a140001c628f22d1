"""SSE benchmark: commit-to-client latency and how many concurrent streams one web process holds, at what memory.

    .venv/bin/python bench/sse_latency.py [--clients 1000] [--events 500] [--rate 100] [--repeat 3]

A scratch database (TEST_DATABASE_URL / DATABASE_URL's server, else an embedded PostgreSQL in a temp folder) and a
real `datesync web` subprocess. `--clients` connections open GET /events; ten of them parse every message and
time it, the rest only drain their sockets (so that this process's own parsing does not pollute the figures).
A writer commits `--events` events, one transaction each, at `--rate` per second, through the same trigger
path as a task transition (event_serialize lock, NOTIFY); latency is the time from the writer's COMMIT returning
to the message reaching a client. The web process's RSS is read before and after the clients connect, and the
time it takes to exit on SIGTERM with every stream open.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datesync.daemon.embedded import EmbeddedPostgres  # noqa: E402
from datesync.daemon.runtime import migrate_and_register  # noqa: E402
from datesync.daemon.settings import Settings  # noqa: E402

PROBES = 10
REQUEST = b"GET /api/v1/sync-status/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    server_dsn = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    embedded = None
    if not server_dsn:
        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="ssebench-")))
        server_dsn = await asyncio.to_thread(embedded.start)
    name = f"ssebench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urlunsplit(urlsplit(server_dsn)._replace(path=f"/{name}"))
    try:
        conn = await asyncpg.connect(dsn)
        await migrate_and_register(conn, Settings(), {"default": "noop"})
        await conn.close()
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


@contextlib.asynccontextmanager
async def web_server(dsn: str, max_clients: int) -> AsyncIterator[tuple[int, psutil.Process, list[float]]]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": dsn, "PORT": str(port), "LOG_FORMAT": "json", "LOG_LEVEL": "warning",
           "DATESYNC_HANDLER": "noop", "DATESYNC_SSE_MAX_CLIENTS": str(max_clients)}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("datesync")), "web", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("datesync web did not start")
    exit_seconds: list[float] = []
    try:
        yield port, psutil.Process(proc.pid), exit_seconds
    finally:
        started = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        exit_seconds.append(time.perf_counter() - started)


class Probe:
    """A client that parses every message and notes when each event id arrived."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}

    async def run(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            if line.startswith(b"id: "):
                self.arrived[int(line[4:])] = time.perf_counter()


async def sink(reader: asyncio.StreamReader, received: list[int]) -> None:
    while chunk := await reader.read(65536):
        received[0] += len(chunk)


async def open_stream(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"stream refused: {status!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    return reader, writer


async def one_run(dsn: str, clients: int, events: int, rate: float) -> dict[str, float]:
    async with web_server(dsn, clients + 10) as (port, server, exit_seconds):
        await asyncio.sleep(0.5)
        rss_before = server.memory_info().rss
        probes = [Probe() for _ in range(min(PROBES, clients))]
        received = [0]
        tasks: list[asyncio.Task[None]] = []
        writers: list[asyncio.StreamWriter] = []
        connect_started = time.perf_counter()
        for i in range(clients):
            reader, writer = await open_stream(port)
            writers.append(writer)
            tasks.append(asyncio.create_task(probes[i].run(reader) if i < len(probes) else sink(reader, received)))
        connect_seconds = time.perf_counter() - connect_started
        await asyncio.sleep(1.0)
        rss_held = server.memory_info().rss

        committed: dict[int, float] = {}
        cpu_before = sum(server.cpu_times()[:2])
        write_started = time.perf_counter()
        conn = await asyncpg.connect(dsn)
        gap = 1 / rate
        next_at = time.perf_counter()
        for _ in range(events):
            event_id = await conn.fetchval(
                "INSERT INTO datesync.event (batch_id, kind, state, attempt, data) "
                "VALUES (1, 'task', 'succeeded', 1, '{\"counts\": {\"succeeded\": 1}}') RETURNING id")
            committed[event_id] = time.perf_counter()
            next_at += gap
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await conn.close()
        last = max(committed)
        for _ in range(600):  # up to 30 s for the last event to reach every probe
            if all(last in p.arrived for p in probes):
                break
            await asyncio.sleep(0.05)
        rss_after = server.memory_info().rss
        server_cpu = (sum(server.cpu_times()[:2]) - cpu_before) / (time.perf_counter() - write_started)
        latencies = [(p.arrived[i] - t) * 1000 for p in probes for i, t in committed.items() if i in p.arrived]
        missing = sum(1 for p in probes for i in committed if i not in p.arrived)
        held = sum(1 for t in tasks if not t.done())
    for task in tasks:
        task.cancel()
    for writer in writers:
        writer.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "clients": clients, "held": held, "events": events, "missing": missing,
        "latency_p50_ms": round(percentile(latencies, 50), 2), "latency_p99_ms": round(percentile(latencies, 99), 2),
        "latency_max_ms": round(max(latencies), 2),
        "rss_before_mb": round(rss_before / 2**20, 1), "rss_held_mb": round(rss_held / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1),
        "kb_per_client": round((rss_held - rss_before) / 1024 / clients, 1),
        "connect_s": round(connect_seconds, 2), "sigterm_exit_s": round(exit_seconds[0], 2),
        "sink_mb": round(received[0] / 2**20, 1), "server_cpu_share": round(server_cpu, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0, help="events committed per second")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = []
    async with scratch_database() as dsn:
        for _ in range(args.repeat):
            runs.append(await one_run(dsn, args.clients, args.events, args.rate))
            print(json.dumps(runs[-1]), flush=True)
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(json.dumps({"median_of": len(runs), **medians}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
