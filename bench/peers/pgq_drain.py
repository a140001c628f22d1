#!/usr/bin/env python3
"""Drain benchmark for PgQueuer (no-op jobs), for side-by-side runs with other queues.

Method (modelled on PgQueuer's own tools/benchmark.py "drain" strategy):
  * A scratch database is created from --dsn (admin DSN), PgQueuer's schema is
    installed with its own installer API (Queries.install(), what `pgq install`
    calls), and the database is dropped at the end.
  * Each repeat: the queue/log/statistics tables are cleared (TRUNCATE), then N
    jobs are enqueued in ONE bulk Queries.enqueue([...]) call (one INSERT
    statement, committed) BEFORE the clock starts.  Timing therefore starts after
    the enqueue commit, when consumption starts.
  * --workers QueueManager instances (each with its own asyncpg connection, like
    the tool's `--dequeue`) run QueueManager.run(mode=drain, batch_size=B).  B is
    PgQueuer's default (10) with --batch, or 1 with --single.
  * The single no-op async entrypoint is registered with
    concurrency_limit=--concurrency (default 10): the documented per-entrypoint
    cap, enforced in SQL across all workers, so at most 10 jobs are in flight.
  * The clock stops when every QueueManager.run() has returned: in drain mode
    that is after the queue is empty, all tasks have finished and the
    completion buffer has been flushed (jobs deleted from the queue table and
    written to pgqueuer_log).  jobs/s = N / elapsed.  Correctness is checked
    (handler call count == N, queue empty, N rows in the log).
  * Event loop: uvloop by default (as PgQueuer's tool), --loop asyncio to switch.
  * Logging: root and "pgqueuer" loggers at WARNING.
Prints one JSON line per repeat and a final JSON summary with the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

import asyncpg
import pgqueuer
from common import db_counters, per_job, run, scratch_database, summarize
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode

PGQ_DEFAULT_BATCH = 10  # default of QueueManager.run(batch_size=...)


async def one_repeat(args, admin_dsn: str, dbname: str, db_dsn: str, batch_size: int) -> dict:
    util = await asyncpg.connect(db_dsn)
    try:
        q = Queries(AsyncpgDriver(util))
        await q.clear_queue()  # TRUNCATE queue
        await q.clear_queue_log()
        await q.clear_statistics_log()
        await util.execute("VACUUM ANALYZE")
        # Bulk enqueue: one statement, committed before the clock starts.
        t0 = time.perf_counter()
        await q.enqueue(["noop"] * args.jobs, [None] * args.jobs, [0] * args.jobs)
        enqueue_s = time.perf_counter() - t0
    finally:
        await util.close()

    done = 0
    last_exec = 0.0

    conns = [await asyncpg.connect(db_dsn) for _ in range(args.workers)]
    qms = [QueueManager(Queries(AsyncpgDriver(c))) for c in conns]
    for qm in qms:

        @qm.entrypoint("noop", concurrency_limit=args.concurrency)
        async def noop(job: Job) -> None:
            nonlocal done, last_exec
            done += 1
            last_exec = time.perf_counter()

    before = await db_counters(admin_dsn, dbname)
    start = time.perf_counter()
    await asyncio.gather(
        *(
            qm.run(batch_size=batch_size, mode=QueueExecutionMode.drain)
            for qm in qms
        )
    )
    elapsed = time.perf_counter() - start
    for c in conns:
        if not c.is_closed():
            await c.close()
    after = await db_counters(admin_dsn, dbname)

    util = await asyncpg.connect(db_dsn)
    try:
        left = await util.fetchval("SELECT count(*) FROM pgqueuer")
        logged = await util.fetchval(
            "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
        )
    finally:
        await util.close()
    ok = done == args.jobs and left == 0 and logged == args.jobs
    return {
        "queue": "pgqueuer",
        "mode": "single" if batch_size == 1 else "batch",
        "batch_size": batch_size,
        "jobs": args.jobs,
        "elapsed_s": round(elapsed, 4),
        "jobs_per_s": round(args.jobs / elapsed, 1),
        "last_handler_s": round(last_exec - start, 4),
        "enqueue_s": round(enqueue_s, 4),
        "handler_calls": done,
        "left_in_queue": left,
        "logged_successful": logged,
        "ok": ok,
        # server-side work during the timed drain (pg_stat_database deltas; the
        # worker connections are opened before `before` and closed before `after`)
        **per_job(before, after, args.jobs),
    }


async def main_async(args) -> int:
    batch_size = 1 if args.single else PGQ_DEFAULT_BATCH
    results = []
    async with scratch_database(args.dsn, args.db_prefix) as (dbname, db_dsn):
        c = await asyncpg.connect(db_dsn)
        try:
            await Queries(AsyncpgDriver(c)).install()  # PgQueuer's installer API
        finally:
            await c.close()
        for i in range(args.repeats):
            r = await one_repeat(args, args.dsn, dbname, db_dsn, batch_size)
            r["repeat"] = i + 1
            print(json.dumps(r), flush=True)
            results.append(r)
    return summarize(results, queue="pgqueuer", version=pgqueuer.__version__, asyncpg=asyncpg.__version__,
                     loop=args.loop, mode="single" if args.single else "batch", batch_size=batch_size,
                     workers=args.workers, concurrency=args.concurrency, jobs=args.jobs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="admin DSN (a scratch database is created and dropped)")
    p.add_argument("--jobs", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=10,
                   help="max jobs in flight (entrypoint concurrency_limit; 0: no limit, PgQueuer's default)")
    p.add_argument("--workers", type=int, default=1,
                   help="QueueManager instances / connections (PgQueuer tool's --dequeue)")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--batch", action="store_true", help=f"batch_size={PGQ_DEFAULT_BATCH} (default)")
    m.add_argument("--single", action="store_true", help="batch_size=1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--db-prefix", default="peers_pgq")
    args = p.parse_args()

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pgqueuer").setLevel(logging.WARNING)

    return run(main_async(args), args.loop)


if __name__ == "__main__":
    sys.exit(main())
