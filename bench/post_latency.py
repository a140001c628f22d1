"""Latency of POST /api/v1/sync-status/sync/batch under N concurrent clients.

    .venv/bin/python bench/post_latency.py                 # own embedded PostgreSQL and web server, 3 runs
    .venv/bin/python bench/post_latency.py --url http://127.0.0.1:8080 --runs 1

Without --url it starts an embedded PostgreSQL in a temporary folder and `datesync web`'s app (no daemon, the
default pool of DATESYNC_CONCURRENCY + 2 connections) in a separate process on a free port, so the clients do
not share an event loop with the server. Every request names a different range, so each one inserts a batch
(the full path: validation, advisory lock, duplicate check, INSERT, trigger, event, NOTIFY, commit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve(dsn: str, port: int) -> None:
    """The web app alone, as `datesync web` runs it (in a child process)."""
    import uvicorn

    from datesync.daemon.db.connect import create_pool
    from datesync.daemon.logs import configure
    from datesync.daemon.settings import Settings
    from datesync.web.app import create_app
    from datesync.web.state import AppState

    configure("console", level=logging.WARNING)
    settings = Settings(database_url=dsn, port=port)

    async def main() -> None:
        pool = await create_pool(dsn, settings.pool_size, "datesync-bench")
        app = create_app(AppState(settings=settings, pool=pool, direct_dsn=dsn))
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
        await uvicorn.Server(config).serve()

    asyncio.run(main())


@contextlib.contextmanager
def own_server() -> Iterator[str]:
    """An embedded PostgreSQL, migrated, and the web app in a child process; yields its base URL."""
    from datesync.daemon.db.connect import connect
    from datesync.daemon.embedded import EmbeddedPostgres
    from datesync.daemon.runtime import migrate_and_register
    from datesync.daemon.settings import Settings

    folder = Path(tempfile.mkdtemp(prefix="dsbench-"))
    server = EmbeddedPostgres(folder)
    dsn = server.start()

    async def migrate() -> None:
        conn = await connect(dsn, "datesync-bench")
        try:
            await migrate_and_register(conn, Settings(), {"default": "demo"})
        finally:
            await conn.close()

    asyncio.run(migrate())
    port = _free_port()
    child = multiprocessing.get_context("spawn").Process(target=_serve, args=(dsn, port), daemon=True)
    child.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or not child.is_alive():
                raise SystemExit("the bench server did not start")
            time.sleep(0.1)
        yield base
    finally:
        child.terminate()
        child.join(10)
        server.stop()


class Ranges:
    """Distinct (start, end) pairs in the past, so no request is deduplicated."""

    def __init__(self, salt: int) -> None:
        self.next = 0
        self.anchor = datetime.date(2020, 1, 1) - datetime.timedelta(days=salt * 100_000 % 300_000)

    def take(self) -> dict[str, str]:
        n = self.next
        self.next += 1
        start = self.anchor - datetime.timedelta(days=n // 7)
        return {"start_date": start.isoformat(), "end_date": (start + datetime.timedelta(days=n % 7)).isoformat()}


async def one_run(base: str, clients: int, requests: int, salt: int) -> dict[str, float]:
    from datesync.bench import KeepAliveClient

    url = urlsplit(base)
    if url.scheme != "http" or url.hostname is None:
        raise SystemExit("--url: a plain http:// address")
    path = url.path.rstrip("/") + "/api/v1/sync-status/sync/batch"
    ranges = Ranges(salt)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    pool = [KeepAliveClient(url.port or 80, url.hostname) for _ in range(clients)]
    try:
        for http in pool:  # warm up the connections and the server's statement cache
            await http.post(path, ranges.take())
        remaining = requests

        async def client(http: KeepAliveClient) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                body = ranges.take()
                began = time.perf_counter()
                status = await http.post(path, body)
                latencies.append(time.perf_counter() - began)
                statuses[status] = statuses.get(status, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(client(http) for http in pool))
        elapsed = time.perf_counter() - began
    finally:
        for http in pool:
            http.close()
    if set(statuses) != {202}:
        raise SystemExit(f"unexpected answers: {statuses}")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000, "mean_ms": statistics.fmean(latencies) * 1000,
            "requests_per_s": len(latencies) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", help="a running server's base URL (default: start one)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000, help="requests per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        base = args.url or stack.enter_context(own_server())
        runs = [asyncio.run(one_run(base, args.clients, args.requests, salt)) for salt in range(args.runs)]
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    if args.json:
        print(json.dumps({"clients": args.clients, "requests": args.requests, "runs": runs, "median": median}))
        return
    for i, r in enumerate(runs, 1):
        print(f"run {i}: p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  mean {r['mean_ms']:.1f} ms  "
              f"{r['requests_per_s']:.0f} req/s")
    print(f"median of {len(runs)} runs ({args.clients} clients, {args.requests} POSTs each): "
          f"p50 {median['p50_ms']:.1f} ms  p99 {median['p99_ms']:.1f} ms  {median['requests_per_s']:.0f} req/s")


if __name__ == "__main__":
    main()
