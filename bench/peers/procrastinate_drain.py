#!/usr/bin/env python3
"""Drain benchmark for Procrastinate (no-op jobs), for side-by-side runs with other queues.

Method (same shape as pgq_drain.py):
  * A scratch database is created from --dsn (admin DSN), Procrastinate's schema
    is applied with its documented API (app.schema_manager.apply_schema_async(),
    what `procrastinate schema --apply` does), and the database is dropped at
    the end.
  * Each repeat: procrastinate_jobs (+ events, workers) are truncated, then N
    jobs of a no-op async task are deferred in ONE bulk call
    (Task.batch_defer_async: one INSERT ... statement, committed) BEFORE the
    clock starts.  Timing therefore starts after the enqueue commit.
  * One worker: app.run_worker_async(concurrency=--concurrency (10), wait=False,
    install_signal_handlers=False); other worker options are library defaults
    (listen_notify=True, delete_jobs="never" -> finished jobs stay as
    'succeeded' rows).  wait=False makes the worker stop once it finds the queue
    empty; it then waits for the in-flight jobs and unregisters itself.
  * Procrastinate has no batch fetch: each job is fetched with its own
    procrastinate_fetch_job_v2() call and completed with its own
    procrastinate_finish_job() call (separate autocommit statements), so there
    is only one mode ("single").
  * The clock stops when run_worker_async() returns.  jobs/s = N / elapsed.
    Correctness is checked (handler calls == N, N rows 'succeeded', none left).
  * Connection pool: PsycopgConnector's psycopg_pool.AsyncConnectionPool with
    library defaults (min_size=4, max_size=min_size) unless --pool-size is given.
  * Event loop: asyncio by default (Procrastinate's CLI uses asyncio);
    --loop uvloop to match pgq_drain.py's default.
  * Logging: root and "procrastinate" loggers at WARNING.
Prints one JSON line per repeat and a final JSON summary with the median.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from importlib.metadata import version as pkg_version

import procrastinate
import psycopg
from common import db_counters, per_job, run, scratch_database, summarize


def make_app(db_dsn: str, pool_size: int | None) -> tuple[procrastinate.App, dict]:
    kwargs = {}
    if pool_size:
        kwargs = {"min_size": pool_size, "max_size": pool_size}
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=db_dsn, **kwargs)
    )
    counter = {"done": 0, "last": 0.0}

    @app.task(name="noop")
    async def noop() -> None:
        counter["done"] += 1
        counter["last"] = time.perf_counter()

    return app, counter


async def one_repeat(args, admin_dsn: str, dbname: str, db_dsn: str) -> dict:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as c:
        await c.execute(
            "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers "
            "RESTART IDENTITY CASCADE"
        )
        await c.execute("VACUUM ANALYZE")

    app, counter = make_app(db_dsn, args.pool_size)
    async with app.open_async():
        noop = app.tasks["noop"]
        t0 = time.perf_counter()
        await noop.batch_defer_async(*({} for _ in range(args.jobs)))
        enqueue_s = time.perf_counter() - t0

        before = await db_counters(admin_dsn, dbname)
        start = time.perf_counter()
        await app.run_worker_async(
            concurrency=args.concurrency,
            wait=False,
            install_signal_handlers=False,
        )
        elapsed = time.perf_counter() - start
    after = await db_counters(admin_dsn, dbname)

    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as c:
        cur = await c.execute(
            "SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1"
        )
        by_status = {k: v for k, v in await cur.fetchall()}
    succeeded = by_status.get("succeeded", 0)
    ok = counter["done"] == args.jobs and succeeded == args.jobs
    return {
        "queue": "procrastinate",
        "mode": "single",
        "jobs": args.jobs,
        "elapsed_s": round(elapsed, 4),
        "jobs_per_s": round(args.jobs / elapsed, 1),
        "last_handler_s": round(counter["last"] - start, 4),
        "enqueue_s": round(enqueue_s, 4),
        "handler_calls": counter["done"],
        "status_counts": by_status,
        "ok": ok,
        # server-side work during the timed drain (pg_stat_database deltas; the
        # pool is open before `before` and closed before `after`)
        **per_job(before, after, args.jobs),
    }


async def main_async(args) -> int:
    results = []
    async with scratch_database(args.dsn, args.db_prefix) as (dbname, db_dsn):
        app, _ = make_app(db_dsn, None)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()  # documented schema API
        for i in range(args.repeats):
            r = await one_repeat(args, args.dsn, dbname, db_dsn)
            r["repeat"] = i + 1
            print(json.dumps(r), flush=True)
            results.append(r)
    return summarize(results, queue="procrastinate", version=pkg_version("procrastinate"),
                     psycopg=psycopg.__version__, psycopg_pool=pkg_version("psycopg-pool"), loop=args.loop,
                     mode="single", concurrency=args.concurrency, pool_size=args.pool_size or "default(4)",
                     jobs=args.jobs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="admin DSN (a scratch database is created and dropped)")
    p.add_argument("--jobs", type=int, default=10000)
    p.add_argument("--concurrency", "--workers", dest="concurrency", type=int, default=10,
                   help="worker concurrency (max jobs in flight)")
    p.add_argument("--pool-size", type=int, default=None,
                   help="psycopg pool min=max size (default: library default, 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="asyncio")
    p.add_argument("--db-prefix", default="peers_procrastinate")
    args = p.parse_args()

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    # silence the one-off "App is instantiated in the main module" notice (tasks are
    # named explicitly, so it does not apply)
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)

    return run(main_async(args), args.loop)


if __name__ == "__main__":
    sys.exit(main())
