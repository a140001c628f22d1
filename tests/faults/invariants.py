"""The invariants every fault scenario ends with, read from the tables (and the run file) after the fact.

`check()` returns every problem it finds as a readable line, so one failing scenario reports all that went
wrong at once, and the soak can count them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import asyncpg

from tests.support.daemons import counts_mismatch

# A worker id is "<host>-<pid>-<4 hex>" (daemon.sync.worker.new_worker_id).
WORKER_PID = r"-([0-9]+)-[0-9a-f]{4}$"


@dataclasses.dataclass(frozen=True)
class Rules:
    """What the final state of each date must be."""

    max_attempts: int = 3
    fail_dates: frozenset[datetime.date] = frozenset()
    # Errors that may fail a good date once it ran out of attempts because of the faults themselves (each
    # interrupted attempt counts): a lease that expired under a killed daemon, a connection that was cut.
    fault_errors: tuple[str, ...] = ("lease expired",)
    demo_rows: bool = True  # the handler writes datesync_demo.daily for each date it syncs


@dataclasses.dataclass
class Report:
    problems: list[str] = dataclasses.field(default_factory=list)
    dates: int = 0  # tasks
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0
    failed_by_faults: int = 0  # good dates that ran out of attempts because of the faults (allowed by the rules)
    runs: int = 0  # handler invocations
    overlaps: int = 0

    def __str__(self) -> str:
        return "\n".join(self.problems) or "no problems"


async def check(
    conn: asyncpg.Connection,
    rules: Rules,
    deaths: Mapping[int, datetime.datetime] | None = None,
    run_file: Path | None = None,
    logs: Iterable[tuple[int, str]] = (),
) -> Report:
    """Every invariant of issue 9 after a scenario has settled (no daemon working any more)."""
    report = Report()
    p = report.problems
    for row in await conn.fetch("SELECT id, state::text FROM datesync.batch WHERE state IN ('queued', 'running')"):
        p.append(f"batch {row['id']} is still {row['state']}")
    for row in await conn.fetch(
            "SELECT id, batch_id, day, state::text, lease_owner FROM datesync.task "
            "WHERE state IN ('queued', 'running')"):
        p.append(f"task {row['id']} (batch {row['batch_id']}, {row['day']}) left {row['state']} "
                 f"(lease {row['lease_owner']})")
    for row in await counts_mismatch(conn):
        p.append(f"batch {row['id']} counts differ from its tasks: {dict(row)}")
    for row in await conn.fetch(
        """
        SELECT b.id, b.state::text AS state, b.days, b.cancel_requested, count(t.id) AS tasks,
               count(t.id) FILTER (WHERE t.state = 'failed') AS failed
        FROM datesync.batch b LEFT JOIN datesync.task t ON t.batch_id = b.id
        GROUP BY b.id
        """
    ):
        expected = "cancelled" if row["cancel_requested"] else "failed" if row["failed"] else "succeeded"
        if row["state"] in ("succeeded", "failed", "cancelled") and row["state"] != expected:
            p.append(f"batch {row['id']} ended {row['state']}, expected {expected}: {dict(row)}")
        if row["tasks"] not in (0, row["days"]) or (row["tasks"] == 0 and row["state"] != "cancelled"):
            p.append(f"batch {row['id']} has {row['tasks']} tasks for {row['days']} days ({row['state']})")
    await _task_rules(conn, rules, report)
    await _skip_rules(conn, p)
    for row in await conn.fetch(
            "SELECT d.source, d.day FROM datesync.day d WHERE d.status = 'running' AND NOT EXISTS "
            "(SELECT 1 FROM datesync.task t WHERE t.source = d.source AND t.day = d.day AND t.state = 'running')"):
        p.append(f"day {row['source']} {row['day']} says running, but no task of it runs")
    for row in await conn.fetch(
            "SELECT d.source, d.day FROM datesync.day d WHERE d.status = 'success' AND NOT EXISTS "
            "(SELECT 1 FROM datesync.task t WHERE t.source = d.source AND t.day = d.day AND t.state = 'succeeded')"):
        p.append(f"day {row['source']} {row['day']} says success, but no task of it succeeded")
    if rules.demo_rows:
        for row in await conn.fetch(
                "SELECT DISTINCT t.day FROM datesync.task t WHERE t.state = 'succeeded' AND NOT EXISTS "
                "(SELECT 1 FROM datesync_demo.daily d WHERE d.day = t.day)"):
            p.append(f"{row['day']} succeeded but the handler's row is missing")
    report.runs = int(await conn.fetchval("SELECT count(*) FROM datesync_demo.run_log"))
    if run_file is not None:
        pairs = file_overlaps(run_file, deaths)
    else:
        pairs = await log_overlaps(conn, deaths or {}, run_ends(logs))
    report.overlaps = len(pairs)
    p.extend(f"runs overlapped: {pair}" for pair in pairs[:20])
    return report


async def _task_rules(conn: asyncpg.Connection, rules: Rules, report: Report) -> None:
    p = report.problems
    rows = await conn.fetch(
        """
        SELECT t.id, t.batch_id, t.source, t.day, t.state::text AS state, t.attempt, t.max_attempts, t.error,
               t.finished_at, b.force, b.cancel_requested,
               EXISTS (SELECT 1 FROM datesync.task s
                       WHERE s.source = t.source AND s.day = t.day AND s.state = 'succeeded'
                         AND s.finished_at <= t.finished_at) AS synced_before
        FROM datesync.task t JOIN datesync.batch b ON b.id = t.batch_id
        """
    )
    report.dates = len(rows)
    for t in rows:
        where = f"task {t['id']} (batch {t['batch_id']}, {t['day']}, attempt {t['attempt']})"
        state = t["state"]
        failing = t["day"] in rules.fail_dates
        if state == "succeeded":
            report.succeeded += 1
            if failing:
                p.append(f"{where} succeeded although its date always fails")
        elif state == "failed":
            report.failed += 1
            if t["attempt"] != t["max_attempts"]:
                p.append(f"{where} failed after {t['attempt']} of {t['max_attempts']} attempts")
            if not failing:
                if any((t["error"] or "").startswith(e) for e in rules.fault_errors):
                    report.failed_by_faults += 1
                else:
                    p.append(f"{where} failed although its date is good: {t['error']}")
        elif state == "skipped":
            report.skipped += 1
            if t["force"]:
                p.append(f"{where} was skipped in a forced batch")
            if not t["synced_before"]:
                p.append(f"{where} was skipped but its date had not been synced")
        elif state == "cancelled":
            report.cancelled += 1
            if not t["cancel_requested"]:
                p.append(f"{where} was cancelled but its batch was not")
        if t["max_attempts"] != rules.max_attempts:
            p.append(f"{where} has max_attempts {t['max_attempts']}, expected {rules.max_attempts}")


async def _skip_rules(conn: asyncpg.Connection, p: list[str]) -> None:
    """From the event log (in commit order): a date's status leaves `success` only through a claim, so a claim
    whose previous claim-or-outcome event for that date was a success (or a skip) met a synced date, and a
    non-forced claim then must skip. (Events of one transaction are ordered by batch and date, not causally, so
    the converse, that each skip met a success, is checked from the tasks' finish times in _task_rules.)"""
    rows = await conn.fetch(
        """
        WITH ev AS (
            SELECT e.id, e.task_id, e.day, b.source, b.force, e.state, e.attempt
            FROM datesync.event e JOIN datesync.batch b ON b.id = e.batch_id
            WHERE e.kind = 'task' AND NOT (e.data ? 'progress') AND e.state IN ('running', 'succeeded', 'skipped')
        ), judged AS (
            SELECT ev.*, lag(ev.state) OVER (PARTITION BY ev.source, ev.day ORDER BY ev.id) AS before FROM ev
        )
        SELECT task_id, day, attempt, before FROM judged
        WHERE NOT force AND state = 'running' AND before IN ('succeeded', 'skipped')
        ORDER BY day
        """
    )
    for r in rows:
        p.append(f"task {r['task_id']} ({r['day']}) ran (attempt {r['attempt']}) although its date was synced "
                 "and its batch not forced")


RunKey = tuple[int, int, str, int]  # pid, batch id, day (ISO), attempt

RUN_END_EVENTS = ("date_sync_succeeded", "date_sync_failed", "date_sync_failed_will_retry", "date_sync_interrupted")


def run_ends(logs: Iterable[tuple[int, str]]) -> dict[RunKey, datetime.datetime]:
    """When each run ended, from the JSON logs of daemons ((pid, log text) pairs): the daemon logs the end of
    every attempt, however it ended, once the handler has returned or unwound."""
    ends: dict[RunKey, datetime.datetime] = {}
    for pid, text in logs:
        for line in text.splitlines():
            if not line.startswith("{") or '"date_sync_' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") not in RUN_END_EVENTS:
                continue
            key = (pid, int(entry["batch_id"]), str(entry["day"]), int(entry["attempt"]))
            at = datetime.datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
            ends[key] = max(at, ends.get(key, at))
    return ends


async def log_overlaps(conn: asyncpg.Connection, deaths: Mapping[int, datetime.datetime],
                       ends: Mapping[RunKey, datetime.datetime] | None = None) -> list[str]:
    """Runs of one (source, day) in datesync_demo.run_log whose spans overlap. A run with no recorded end was cut
    short: it ended when its daemon logged its end (`ends`), or when its process was seen dead (`deaths`, by
    pid), or, if neither, never."""
    ends = ends or {}
    rows = await conn.fetch(
        f"""
        WITH d(pid, died) AS (SELECT * FROM unnest($1::int[], $2::timestamptz[])),
        e(pid, batch_id, day, attempt, ended) AS (
            SELECT * FROM unnest($3::int[], $4::bigint[], $5::date[], $6::int[], $7::timestamptz[])),
        l AS (SELECT *, (regexp_match(worker, '{WORKER_PID}'))[1]::int AS pid FROM datesync_demo.run_log),
        r AS (
            SELECT l.id, l.source, l.day, l.worker, l.attempt, l.started_at,
                   coalesce(l.finished_at, e.ended, d.died, 'infinity') AS ended
            FROM l
            LEFT JOIN d ON d.pid = l.pid
            LEFT JOIN e ON e.pid = l.pid AND e.batch_id = l.batch_id AND e.day = l.day AND e.attempt = l.attempt
        )
        SELECT a.day, a.id AS a, a.worker AS a_worker, a.attempt AS a_attempt, a.started_at AS a_start,
               a.ended AS a_end, b.id AS b, b.worker AS b_worker, b.attempt AS b_attempt, b.started_at AS b_start,
               b.ended AS b_end
        FROM r a JOIN r b ON a.source = b.source AND a.day = b.day AND a.id < b.id
        WHERE tstzrange(a.started_at, a.ended) && tstzrange(b.started_at, b.ended)
        ORDER BY a.day
        """,
        list(deaths), list(deaths.values()),
        [k[0] for k in ends], [k[1] for k in ends], [datetime.date.fromisoformat(k[2]) for k in ends],
        [k[3] for k in ends], list(ends.values()),
    )
    return [f"{r['day']}: run {r['a']} ({r['a_worker']} attempt {r['a_attempt']}, {r['a_start']}..{r['a_end']}) "
            f"and run {r['b']} ({r['b_worker']} attempt {r['b_attempt']}, {r['b_start']}..{r['b_end']})"
            for r in rows]


def file_overlaps(path: Path, deaths: Mapping[int, datetime.datetime] | None = None) -> list[str]:
    """The same from the run file that tests.faults.handlers writes (wall-clock times, independent of the
    database): a run with no end line ended when its process was seen dead, else never."""
    died = {pid: when.timestamp() for pid, when in (deaths or {}).items()}
    runs: dict[str, dict[str, object]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            run = runs.setdefault(entry["run"], dict(entry))
            run[entry["ev"]] = entry["t"]
    spans: dict[tuple[str, str], list[tuple[float, float, dict[str, object]]]] = {}
    for run in runs.values():
        start = float(run.get("start", 0.0))  # type: ignore[arg-type]
        end = float(run.get("end", died.get(int(run["pid"]), math.inf)))  # type: ignore[call-overload, arg-type]
        spans.setdefault((str(run["source"]), str(run["day"])), []).append((start, end, run))
    found = []
    for (source, day), items in spans.items():
        items.sort(key=lambda s: s[0])
        for i, (a_start, a_end, a) in enumerate(items):
            for b_start, b_end, b in items[i + 1:]:
                if b_start < a_end and a_start < b_end:
                    found.append(f"{source} {day}: pid {a['pid']} attempt {a['attempt']} [{a_start:.3f}, {a_end:.3f}] "
                                 f"and pid {b['pid']} attempt {b['attempt']} [{b_start:.3f}, {b_end:.3f}]")
    return found
