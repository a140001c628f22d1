"""`make soak` (python -m tests.faults.soak): the fault scenarios of tests/faults, with bigger numbers, in a
seeded random order, again and again for SOAK_SECONDS (default 300), then a summary table.

Each scenario gets a fresh database on one embedded PostgreSQL of the soak's own (which the database-fault
scenarios stop and start). A scenario that breaks an invariant prints its seed: `FAULTS_SEED=<seed> pytest
tests/faults -k <test>` or `--only <name> --seed <seed>` here replays it. Exit status 1 when any rule broke.

The targeted reproductions of reported engine bugs (KNOWN_BUGS) fail every time until those are fixed; they run
in the suite, and here only with --with-known-bugs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import traceback
from collections.abc import Awaitable, Callable

from tests.faults import abuse, dependency_scenarios, edge_scenarios, scenarios
from tests.faults.common import SOAK, Figures, Scale
from tests.faults.dbs import DedicatedServer, dedicated_server, fresh_database

DbScenario = Callable[[str, int, Scale], Awaitable[Figures]]
ServerScenario = Callable[[DedicatedServer, int, Scale], Awaitable[Figures]]

DB_SCENARIOS: dict[str, DbScenario] = {
    **scenarios.PROCESS_SCENARIOS,
    "handler_edges": edge_scenarios.handler_edges,
    "dependent_sources": dependency_scenarios.dependent_sources,
    "kill_after_upstream_success": dependency_scenarios.kill_after_upstream_success,
    "hostile_http": abuse.hostile_http,
    "hostile_sql": abuse.hostile_sql,
    "forged_sql": abuse.forged_sql,
    "idempotent_retry": abuse.idempotent_retry,
    "load": abuse.load,
    "security": abuse.security,
}
SERVER_SCENARIOS: dict[str, ServerScenario] = {
    **scenarios.SERVER_SCENARIOS,
    "restart_under_running_dates": edge_scenarios.restart_under_running_dates,
    "web_database_down": abuse.web_database_down,
}
KNOWN_BUGS = {"stalled_heartbeat", "lone_daemon_leases", "forged_sql", "cancel_mid_batch", "takeover_latency",
              "idempotent_retry"}
CATEGORIES = {  # the table's rows
    "process": ("random_kills", "kill_during_finish", "sigterm_mid_batch", "pipelined_kills", "overlapping_daemons",
                "skewed_clock", "paused_daemon", "cancel_mid_batch", "takeover_latency", "lone_daemon_leases",
                "stalled_heartbeat"),
    "database": ("database_restart", "restart_under_running_dates", "outage_longer_than_lease",
                 "backends_terminated", "listener_terminated",
                 "startup_waits_for_database", "startup_gives_up"),
    "handler": ("handler_faults", "handler_edges"),
    "dependencies": ("dependent_sources", "kill_after_upstream_success"),
    "hostile input": ("hostile_http", "hostile_sql", "forged_sql"),
    "load": ("load", "idempotent_retry"),
    "security": ("security", "web_database_down"),
}

COLUMNS = [("runs", "runs"), ("kills", "SIGKILL"), ("sigterms", "SIGTERM"), ("db_restarts", "pg restarts"),
           ("backend_kills", "conns cut"), ("dates", "dates"), ("runs_", "handler runs"),
           ("failed_by_faults", "out of tries"), ("failed_by_upstream", "upstream failed"), ("overlaps", "overlaps"),
           ("bad_inputs", "bad inputs"),
           ("requests", "requests"), ("http_5xx", "5xx"), ("problems", "broken"), ("seconds", "s")]


def category(name: str) -> str:
    return next((c for c, names in CATEGORIES.items() if name in names), name)


async def run_one(name: str, server: DedicatedServer, seed: int, scale: Scale, giveup_rate: float) -> Figures:
    started = time.monotonic()
    try:
        if name == "startup_gives_up":
            return await scenarios.startup_gives_up(rate=giveup_rate)
        if name in SERVER_SCENARIOS:
            return await SERVER_SCENARIOS[name](server, seed, scale)
        async with fresh_database(server.admin_dsn) as dsn:
            return await DB_SCENARIOS[name](dsn, seed, scale)
    except Exception as exc:  # a scenario that cannot even finish (a batch that never ends) broke a rule too
        fig = Figures(name, seed)
        fig.problems.append(f"{type(exc).__name__}: {exc}".strip()[:3000])
        fig.details = traceback.format_exc()[-3000:]
        fig.seconds = time.monotonic() - started
        return fig


def table(results: list[Figures], by_scenario: bool = False) -> str:
    """The summary: one row per kind of fault (or per scenario), a total row."""
    rows: dict[str, dict[str, float]] = {}
    for fig in results:
        name = fig.scenario if by_scenario else category(fig.scenario)
        row = rows.setdefault(name, {key: 0.0 for key, _ in COLUMNS})
        row["runs"] += 1
        row["runs_"] += fig.runs
        row["problems"] += len(fig.problems)
        for key, _ in COLUMNS:
            if key not in ("runs", "runs_", "problems"):
                row[key] += float(getattr(fig, key))
    total = {key: sum(r[key] for r in rows.values()) for key, _ in COLUMNS}
    header = ["scenario" if by_scenario else "faults", *(label for _, label in COLUMNS)]
    lines = [[name, *(_cell(row[key]) for key, _ in COLUMNS)] for name, row in sorted(rows.items())]
    lines.append(["TOTAL", *(_cell(total[key]) for key, _ in COLUMNS)])
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    rule = "-+-".join("-" * w for w in widths)

    def fmt(line: list[str]) -> str:
        return " | ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths,
                                                                                                      strict=True)))

    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines[:-1]), rule, fmt(lines[-1])])


def _cell(value: float) -> str:
    return f"{value:.0f}"


def headline(results: list[Figures], seconds: float) -> str:
    def total(key: str) -> int:
        return int(sum(getattr(f, key) for f in results))

    broken = sum(len(f.problems) for f in results)
    return (f"soak: {seconds:.0f} s, {len(results)} scenario runs | kills survived: {total('kills')} (+ SIGTERMs: "
            f"{total('sigterms')}) | restarts survived: {total('db_restarts')} (+ backends cut: "
            f"{total('backend_kills')}) | dates run: {total('dates')} ({total('runs')} handler runs) | overlaps "
            f"found: {total('overlaps')} | bad inputs tried: {total('bad_inputs')} | requests: {total('requests')}"
            f" | 5xx: {total('http_5xx')} | broken rules: {broken}")


async def soak(seconds: float, seed: int, only: list[str], with_known_bugs: bool, scale: Scale) -> int:
    rng = random.Random(seed)
    names = only or [n for n in [*DB_SCENARIOS, *SERVER_SCENARIOS, "startup_gives_up"]
                     if with_known_bugs or n not in KNOWN_BUGS]
    # The start-up window is 60 s of real time; in a long soak let it run for real, else on a faster clock.
    giveup_rate = 1.0 if seconds >= 900 else 6.0
    results: list[Figures] = []
    started = time.monotonic()
    print(f"soak: seed {seed}, {seconds:.0f} s, scenarios: {', '.join(names)}", flush=True)
    async with dedicated_server() as server:
        while time.monotonic() - started < seconds:
            order = list(names)
            rng.shuffle(order)
            for name in order:
                if time.monotonic() - started >= seconds:
                    break
                run_seed = rng.randrange(1_000_000)
                fig = await run_one(name, server, run_seed, scale, giveup_rate)
                results.append(fig)
                mark = "ok" if not fig.problems else f"BROKE {len(fig.problems)} rule(s)"
                print(f"  {time.monotonic() - started:6.0f}s  {name:<28} seed {run_seed:<7} {fig.seconds:5.1f}s  "
                      f"{mark}", flush=True)
                for problem in fig.problems[:5]:
                    print(f"      - {problem[:300]}", flush=True)
        elapsed = time.monotonic() - started
    print()
    print(table(results, by_scenario=True))
    print()
    print(table(results))
    print()
    print(headline(results, elapsed))
    return 1 if any(f.problems for f in results) else 0


def main() -> None:
    import logging

    import structlog

    # The soak's own output is its progress lines and the tables; the daemons' logs stay in their files.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(prog="make soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "300")),
                        help="how long to keep starting scenarios [env: SOAK_SECONDS, default 300]")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "0")) or None,
                        help="seed of the scenario order and of each run [env: SOAK_SEED, default random]")
    parser.add_argument("--only", action="append", default=[], help="run only this scenario (repeatable)")
    parser.add_argument("--replay", metavar="SCENARIO:SEED",
                        help="run one scenario once with the run seed a soak printed, and stop")
    parser.add_argument("--with-known-bugs", action="store_true",
                        help=f"also run the reproductions of reported bugs ({', '.join(sorted(KNOWN_BUGS))})")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    known = {*DB_SCENARIOS, *SERVER_SCENARIOS, "startup_gives_up"}
    unknown = [n for n in [*args.only, *([args.replay.partition(":")[0]] if args.replay else [])] if n not in known]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if args.replay:
        sys.exit(asyncio.run(replay(args.replay.partition(":")[0], int(args.replay.partition(":")[2]), SOAK)))
    sys.exit(asyncio.run(soak(args.seconds, seed, args.only, args.with_known_bugs, SOAK)))


async def replay(name: str, seed: int, scale: Scale) -> int:
    async with dedicated_server() as server:
        fig = await run_one(name, server, seed, scale, 6.0)
    print(fig.failure() if fig.problems else f"{name} seed {seed}: ok ({fig.seconds:.1f}s)")
    return 1 if fig.problems else 0


if __name__ == "__main__":
    main()
