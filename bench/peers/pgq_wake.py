#!/usr/bin/env python3
"""Wake-up latency of PgQueuer (enqueue commit to handler start, the worker idle between samples), for
side-by-side runs with `datesync bench`'s wake probe.

Method, the same as datesync's `measure_wake`:
  * A scratch database is created from --dsn (admin DSN), PgQueuer's schema installed with its installer API
    (Queries.install()), and the database dropped at the end.
  * One QueueManager runs in continuous mode (LISTEN on PgQueuer's channel, its defaults otherwise) with a no-op
    entrypoint that stamps time.time() when it starts. It runs in a process of its own (this script starts itself
    with --worker), as datesync's daemon does, so the prober's event loop is not the worker's.
  * Each sample: 10 ms idle, then one job enqueued on the prober's own connection (one committed statement); the
    clock starts when that call returns (the commit), and stops at the handler's stamp, read from a table the
    handler writes. Latency = stamp - commit.
Prints one JSON line with p50 and p99 in ms (and "ok").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time

import asyncpg
from common import run, scratch_database
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries


async def worker(db_dsn: str) -> int:
    conn = await asyncpg.connect(db_dsn)
    stamps = await asyncpg.connect(db_dsn)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("stamp")
    async def stamp(job: Job) -> None:
        started = time.time()
        await stamps.execute("INSERT INTO wake (job_id, started) VALUES ($1, $2)", int(job.id), started)

    await qm.run()
    return 0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


async def probe(args: argparse.Namespace) -> int:
    async with scratch_database(args.dsn, args.db_prefix) as (_dbname, db_dsn):
        conn = await asyncpg.connect(db_dsn)
        try:
            await Queries(AsyncpgDriver(conn)).install()
            await conn.execute("CREATE TABLE wake (job_id bigint PRIMARY KEY, started float8)")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--worker", db_dsn, "--loop", args.loop)
            try:
                queries = Queries(AsyncpgDriver(conn))
                await asyncio.sleep(2)  # the worker connects and LISTENs
                latencies: list[float] = []
                for _ in range(args.samples):
                    await asyncio.sleep(0.01)
                    ids = await queries.enqueue(["stamp"], [None], [0])
                    committed = time.time()
                    await asyncio.sleep(0.02)
                    deadline = time.monotonic() + 30
                    while (started := await conn.fetchval("SELECT started FROM wake WHERE job_id = $1",
                                                          int(ids[0]))) is None:
                        if time.monotonic() > deadline:
                            raise TimeoutError("PgQueuer did not start a job within 30 s")
                        await asyncio.sleep(0.005)
                    latencies.append((started - committed) * 1000)
            finally:
                proc.terminate()
                await proc.wait()
        finally:
            await conn.close()
    print(json.dumps({"queue": "pgqueuer", "samples": len(latencies),
                      "wake_p50_ms": round(percentile(latencies, 50), 3),
                      "wake_p99_ms": round(percentile(latencies, 99), 3),
                      "wake_mean_ms": round(statistics.mean(latencies), 3), "ok": True}), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="admin DSN (a scratch database is created and dropped)")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--db-prefix", default="peers_pgq_wake")
    p.add_argument("--worker", metavar="DB_DSN", help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.worker:
        return run(worker(args.worker), args.loop)
    return run(probe(args), args.loop)


if __name__ == "__main__":
    sys.exit(main())
