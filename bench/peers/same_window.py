"""`make bench-peers`: datesync's drain and PgQueuer's and Procrastinate's drains of the same no-op load, taken in
turn on one PostgreSQL server in the same minutes, and datesync's rate divided by each peer's.

    make bench-peers                                   # 3 rounds of 10,000 jobs
    make bench-peers PEERS_ARGS='--rounds 5 --jobs 5000'
    .venv/bin/python bench/peers/same_window.py --peers-python .venv-peers/bin/python

The server is the one `datesync bench` uses: DATABASE_URL's (DATABASE_DIRECT_URL's when set), else the embedded one
(joined when a datesync process runs it, else started for the run). Each round drains, in a rotated order:
  * datesync: `datesync bench`'s drain (`measure_drain`: one `datesync daemon` subprocess, concurrency 10, noop
    handler, from the batch's INSERT to its final state) on its scratch database;
  * PgQueuer with its own defaults (pgq_drain.py --concurrency 0: batches of 10, no concurrency limit);
  * PgQueuer capped at 10 jobs in flight (pgq_drain.py --concurrency 10);
  * Procrastinate at concurrency 10 (procrastinate_drain.py; its own default is 1).
Then, each round, the wake-up latency of both idle queues (insert commit to handler start, 200 samples): datesync's
`measure_wake` and PgQueuer's (pgq_wake.py, the same method), alternated; the summary gives datesync's p50 over
PgQueuer's (at or below 1: datesync wakes at least as fast).
Each peer script runs in the peers' venv (PgQueuer and Procrastinate pinned in requirements.txt beside this file,
apart from the project's dependencies) and makes and drops its own scratch database on the same server. Every
ratio is the median of the per-round ratios, so that the machine's drift between rounds divides out.
Prints one JSON line per drain, then one summary JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from datesync.bench import Sizes, measure_drain, measure_wake, scratch_database
from datesync.daemon.runtime import database
from datesync.daemon.settings import Settings

HERE = Path(__file__).resolve().parent
# name: the script and its options (beyond --dsn, --jobs and --repeats)
PEERS: dict[str, list[str]] = {
    "pgqueuer_defaults": ["pgq_drain.py", "--concurrency", "0"],
    "pgqueuer_c10": ["pgq_drain.py", "--concurrency", "10"],
    "procrastinate_c10": ["procrastinate_drain.py", "--concurrency", "10"],
}


async def peer_drain(python: str, argv: list[str], dsn: str, jobs: int) -> float:
    """One drain by a peer script in the peers' venv: its jobs per second (its summary line's median)."""
    script, *options = argv
    proc = await asyncio.create_subprocess_exec(
        python, str(HERE / script), "--dsn", dsn, "--jobs", str(jobs), "--repeats", "1", *options,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=HERE)
    out, err = await asyncio.wait_for(proc.communicate(), 900)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    summary = next((line for line in lines if line.get("summary")), None)
    if proc.returncode != 0 or summary is None or not summary["all_ok"]:
        raise RuntimeError(f"{script} {' '.join(options)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return float(summary["median_jobs_per_s"])


async def peer_wake(python: str, dsn: str) -> float:
    """PgQueuer's wake-up p50 in ms (pgq_wake.py in the peers' venv)."""
    proc = await asyncio.create_subprocess_exec(
        python, str(HERE / "pgq_wake.py"), "--dsn", dsn,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=HERE)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines or not lines[-1].get("ok"):
        raise RuntimeError(f"pgq_wake.py failed ({proc.returncode}): {err.decode()[-2000:]}")
    return float(lines[-1]["wake_p50_ms"])


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rates: dict[str, list[float]] = {name: [] for name in ("datesync_c10", *PEERS)}
    async with database(Settings.from_env(), own_embedded=False) as db, scratch_database(db) as scratch:
        names = list(rates)
        for round_ in range(args.rounds):
            # Rotated, so that no queue always follows the same one (a vacuum or checkpoint it left behind).
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                if name == "datesync_c10":
                    rate = (await measure_drain(scratch, args.jobs, 10, 1))["rate"]
                else:
                    rate = await peer_drain(args.peers_python, PEERS[name], db.direct_dsn, args.jobs)
                rates[name].append(rate)
                print(json.dumps({"round": round_ + 1, "queue": name, "per_s": round(rate, 1)}), flush=True)
        wakes: dict[str, list[float]] = {"datesync": [], "pgqueuer": []}
        for round_ in range(args.rounds):
            for name in (["datesync", "pgqueuer"] if round_ % 2 == 0 else ["pgqueuer", "datesync"]):
                if name == "datesync":
                    p50 = (await measure_wake(scratch, Sizes()))["wake_p50_ms"]
                else:
                    p50 = await peer_wake(args.peers_python, db.direct_dsn)
                wakes[name].append(p50)
                print(json.dumps({"round": round_ + 1, "queue": name, "wake_p50_ms": round(p50, 3)}), flush=True)
    ours = rates["datesync_c10"]
    return {
        "summary": True, "rounds": args.rounds, "jobs": args.jobs,
        "median_per_s": {name: round(statistics.median(values), 1) for name, values in rates.items()},
        "datesync_over": {name: round(statistics.median(a / b for a, b in zip(ours, rates[name], strict=True)), 2)
                          for name in PEERS},
        "wake_p50_ms": {name: round(statistics.median(values), 3) for name, values in wakes.items()},
        "wake_datesync_over_pgqueuer": round(statistics.median(
            a / b for a, b in zip(wakes["datesync"], wakes["pgqueuer"], strict=True)), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers-python", default=str(HERE.parent.parent / ".venv-peers" / "bin" / "python"),
                        help="the Python of the peers' venv (make bench-peers builds it)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs (dates) in each drain")
    args = parser.parse_args()
    # Absolute (the scripts run in their own folder) but not resolved: a venv's python is a symlink to the base
    # interpreter, which knows nothing of the venv.
    args.peers_python = os.path.abspath(args.peers_python)
    summary = asyncio.run(main_async(args))
    print(json.dumps(summary), flush=True)
    for name, ratio in summary["datesync_over"].items():
        print(f"datesync / {name}: {ratio:.2f}x  ({summary['median_per_s']['datesync_c10']:,.0f} against "
              f"{summary['median_per_s'][name]:,.0f} per s, median of {args.rounds})")
    print(f"wake p50, datesync / pgqueuer: {summary['wake_datesync_over_pgqueuer']:.2f}x  "
          f"({summary['wake_p50_ms']['datesync']:.2f} against {summary['wake_p50_ms']['pgqueuer']:.2f} ms, "
          f"median of {args.rounds}; at or below 1 is the aim)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
