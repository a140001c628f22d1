"""What pooled mode (DATESYNC_POOLED) costs: DATABASE_URL through a transaction pooler against straight to PostgreSQL.

    DATABASE_URL=<pooler> DATABASE_DIRECT_URL=<server> .venv/bin/python bench/pooled.py [--rounds 6] [--statements 1500]

Two measurements on one scratch database (made as `datesync bench` makes it):

- statements: one client, the same statements through the pooler (no statement cache) and straight (cache on),
  alternating every iteration so that the machine's background load hits both alike; median latency of each.
- load: `datesync bench`'s drain (5,000 dates, concurrency 10) and POST probes (50 clients), with the daemon and web
  subprocesses given the pooled URL, the direct URL under another host name (pooled mode without a pooler: the cost
  of the missing cache alone), or the direct URL (cache on); the three are rotated in every round.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import time
from urllib.parse import urlsplit, urlunsplit

from datesync import bench
from datesync.daemon.db import dsn as dsns
from datesync.daemon.db.connect import create_pool
from datesync.daemon.db.queries import q
from datesync.daemon.runtime import database
from datesync.daemon.settings import Settings


async def statements(scratch: bench.Scratch, n: int) -> dict[str, dict[str, float]]:
    dsns.mark_pooled(scratch.dsn)
    pools = {"pooled": await create_pool(scratch.dsn, 2, "datesync-bench"),
             "direct": await create_pool(scratch.direct, 2, "datesync-bench")}
    day = datetime.date(2020, 1, 1)
    times: dict[str, dict[str, list[float]]] = {k: {"select": [], "batch_insert": [], "claim": []} for k in pools}
    try:
        for i in range(n):
            for name in ("pooled", "direct") if i % 2 == 0 else ("direct", "pooled"):
                async with pools[name].acquire() as conn:
                    started = time.perf_counter()
                    await conn.fetchval("SELECT $1::int", i)
                    times[name]["select"].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    async with conn.transaction():
                        await conn.fetchval(q("batch_insert"), "default", day, day, True, None, "bench")
                    times[name]["batch_insert"].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    async with conn.transaction():
                        await conn.fetch(q("task_claim"), "bench", 1, 60.0, ["default"])
                    times[name]["claim"].append(time.perf_counter() - started)
    finally:
        for pool in pools.values():
            await pool.close()
    return {name: {k: round(statistics.median(v) * 1000, 3) for k, v in figs.items()} for name, figs in times.items()}


def _other_host_name(dsn: str) -> str:
    """The same server under another name, so that the two URLs differ and pooled mode turns on without a pooler."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    other = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}.get(host)
    if other is None:
        raise SystemExit(f"bench/pooled.py: the direct host {host!r} has no second name here; use 127.0.0.1")
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(host, other, 1)))


async def load(scratch: bench.Scratch, rounds: int) -> dict[str, dict[str, list[float]]]:
    variants = {"pooler": scratch, "no_cache": bench.Scratch(_other_host_name(scratch.direct), scratch.direct),
                "direct": bench.Scratch(scratch.direct, scratch.direct)}
    names = list(variants)
    sizes = bench.Sizes(post_requests=1500)
    out: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for r in range(rounds):
        for name in names[r % 3:] + names[:r % 3]:
            drain = await bench.measure_drain(variants[name], 5000, 10, 1)
            post = await bench.measure_post(variants[name], sizes)
            row = {"drain_dates_per_s": drain["rate"], **post}
            for key, value in row.items():
                out[name].setdefault(key, []).append(round(value, 2))
            print(r, name, json.dumps(row), flush=True)
    return out


async def main(rounds: int, n: int) -> None:
    settings = Settings.from_env()
    async with database(settings, own_embedded=False) as db, bench.scratch_database(db) as scratch:
        if scratch.dsn == scratch.direct:
            raise SystemExit("bench/pooled.py: set DATABASE_URL to the pooler and DATABASE_DIRECT_URL to the server")
        print("statements, median ms:", json.dumps(await statements(scratch, n)), flush=True)
        figures = await load(scratch, rounds)
        print("load, every round:", json.dumps(figures))
        print("load, medians:", json.dumps({name: {k: statistics.median(v) for k, v in figs.items()}
                                            for name, figs in figures.items()}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--statements", type=int, default=1500)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.statements))
