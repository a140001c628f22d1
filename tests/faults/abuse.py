"""Scenarios against the web process and the SQL interface: the hostile-input corpora, the load of concurrent
POSTs and SSE clients over two daemons, and the security checks (token, CORS, cross-site requests, the SSE cap,
secrets in answers and logs). Shared by the suite and the soak, like scenarios.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import random
import time
from collections.abc import AsyncIterator, Sequence

import asyncpg
import httpx
import psutil

from tests.faults import corpus, invariants
from tests.faults.common import Figures, Scale, day, insert_batch, open_conn, wait_all_final
from tests.faults.dbs import DedicatedServer
from tests.faults.harness import daemon_fleet, settle
from tests.faults.procs import Fleet, Proc, free_port, spawn_web

API = corpus.PREFIX


@contextlib.asynccontextmanager
async def web_process(dsn: str, env: dict[str, str] | None = None) -> AsyncIterator[tuple[Proc, str]]:
    """`datesync web` on a free port; yields the process and its base URL once /healthz answers."""
    port = free_port()
    proc = spawn_web(dsn, port, env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while True:
                if not proc.alive():
                    raise AssertionError(f"the web process exited: {proc.log_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(base + "/healthz", timeout=2)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"the web process did not answer: {proc.log_text()[-3000:]}")
                await asyncio.sleep(0.1)
        yield proc, base
    finally:
        proc.signal(15)
        with contextlib.suppress(AssertionError):
            await proc.wait(15)
        proc.close()


# -- hostile HTTP input ---------------------------------------------------------------------------------


async def hostile_http(dsn: str, seed: int, scale: Scale) -> Figures:
    """The hand-written corpus (and, on later rounds, fuzzed bodies) against a real web process: every answer a
    clear 4xx naming the field where there is one, no 5xx, no internals leaked, nothing written, the server up."""
    started = time.monotonic()
    rng = random.Random(seed)
    fig = Figures("hostile_http", seed)
    conn = await open_conn(dsn)
    try:
        before = await corpus.row_counts(conn)
        async with web_process(dsn) as (proc, base):
            port = int(base.rsplit(":", 1)[1])
            cases = list(corpus.http_cases()) + list(corpus.fuzz_cases(rng, 40))
            for _ in range(scale.corpus_rounds - 1):
                cases += list(corpus.fuzz_cases(rng, 200))
            gate = asyncio.Semaphore(8)

            async def one(case: corpus.Case) -> None:
                async with gate:
                    try:
                        answer = await corpus.send("127.0.0.1", port, case.raw)
                    except (OSError, TimeoutError) as exc:
                        fig.problems.append(f"{case.name}: no answer ({type(exc).__name__}: {exc})")
                        return
                fig.requests += 1
                if answer.status >= 500:
                    fig.http_5xx += 1
                fig.problems.extend(corpus.judge(case, answer))

            await asyncio.gather(*(one(c) for c in cases))
            fig.bad_inputs = len(cases)
            async with httpx.AsyncClient() as client:
                health = await client.get(base + "/healthz")
            if health.status_code != 200 or not proc.alive():
                fig.problems.append("the web process is not serving after the corpus")
            errors = [line for line in proc.log_text().splitlines() if "api_unhandled_error" in line]
            if errors:
                fig.problems.append(f"the web process logged {len(errors)} unhandled errors")
                fig.details = "\n".join(errors)[-6000:]
        after = await corpus.row_counts(conn)
        if after != before:
            fig.problems.append(f"refused requests left rows behind: {before} -> {after}")
    finally:
        await conn.close()
    fig.seconds = time.monotonic() - started
    return fig


# -- hostile SQL input ----------------------------------------------------------------------------------


async def _finished_batches(dsn: str, conn: asyncpg.Connection) -> tuple[int, int, int, int]:
    """Batches run to their end by a real daemon: (a succeeded batch, a failed batch, a succeeded task, a failed
    task)."""
    env = {"DATESYNC_DEMO_DELAY_MS": "5", "DATESYNC_MAX_ATTEMPTS": "1", "DATESYNC_DEMO_FAIL_DATES": str(day(11))}
    async with daemon_fleet(dsn, env) as fleet:
        fleet.spawn()
        good = await insert_batch(conn, day(0), day(2))
        bad = await insert_batch(conn, day(10), day(12))
        await wait_all_final(dsn, 30)
    ok_task = await conn.fetchval("SELECT id FROM datesync.task WHERE batch_id = $1 LIMIT 1", good)
    bad_task = await conn.fetchval("SELECT id FROM datesync.task WHERE batch_id = $1 AND state = 'failed'", bad)
    return good, bad, ok_task, bad_task


def sql_refusals(batch: int, ok: int, bad: int) -> list[tuple[str, str]]:
    """Operator statements the database must refuse, each with a piece of the message it must give."""
    future = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()
    ins = "INSERT INTO datesync.batch"
    return [
        (f"{ins} (start_date, end_date) VALUES (NULL, '2024-01-02')", "start_date is required"),
        (f"{ins} (start_date, end_date) VALUES ('2024-01-01', NULL)", "end_date is required"),
        (f"{ins} (end_date) VALUES ('2024-01-02')", "start_date is required"),
        (f"{ins} (start_date, end_date) VALUES ('2024-02-01', '2024-01-01')", "must not be after end_date"),
        (f"{ins} (start_date, end_date) VALUES ('1900-01-01', '2024-01-01')", "the limit is 3660 days"),
        (f"{ins} (start_date, end_date) VALUES ('4714-11-24 BC', '2024-01-01')",
         "start_date must not be before 1000-01-01"),
        (f"{ins} (start_date, end_date) VALUES ('2024-01-01', '{future}')", "is in the future"),
        (f"{ins} (start_date, end_date) VALUES ('-infinity', '2024-01-01')",
         "start_date must not be before 1000-01-01"),
        (f"{ins} (start_date, end_date) VALUES ('2024-01-01', 'infinity')",
         "end_date must be a date written YYYY-MM-DD"),
        (f"{ins} (start_date, end_date, source) VALUES ('2024-01-01', '2024-01-02', 'nope')", 'unknown source "nope"'),
        (f"{ins} (start_date, end_date, source) VALUES ('2024-01-01', '2024-01-02', NULL)", "unknown source"),
        (f"{ins} (start_date, end_date, source) VALUES ('2024-01-01', '2024-01-02', "
         "'default''; DROP TABLE datesync.task; --')", "unknown source"),
        (f"{ins} (start_date, end_date, force) VALUES ('2024-01-01', '2024-01-02', NULL)", '"force"'),
        (f"{ins} (start_date, end_date, cancel_requested) VALUES ('2024-01-01', '2024-01-02', NULL)",
         '"cancel_requested"'),
        (f"{ins} (id, start_date, end_date) VALUES (99999, '2024-01-01', '2024-01-02')", 'column "id"'),
        (f"{ins} (days, start_date, end_date) VALUES (5, '2024-01-01', '2024-01-02')", 'column "days"'),
        (f"{ins} (start_date, end_date, state) VALUES ('2024-01-01', '2024-01-02', 'succeeded')",
         "a new batch starts queued"),
        (f"{ins} (start_date, end_date, state) VALUES ('2024-01-01', '2024-01-02', 'bogus')", "batch_state"),
        (f"{ins} (start_date, end_date) VALUES ('2024-13-01', '2024-01-02')", "out of range"),
        (f"UPDATE datesync.batch SET end_date = '2024-03-01' WHERE id = {batch}", "cannot change"),
        (f"UPDATE datesync.batch SET force = true WHERE id = {batch}", "cannot change"),
        (f"UPDATE datesync.batch SET state = 'queued' WHERE id = {batch}", "cannot become"),
        (f"UPDATE datesync.batch SET state = 'running', started_at = now(), finished_at = NULL WHERE id = {batch} "
         "AND state = 'succeeded'", "cannot become"),
        (f"UPDATE datesync.batch SET cancel_requested = true WHERE id = {batch}", "has already ended"),
        (f"UPDATE datesync.batch SET days = 99 WHERE id = {batch}", 'column "days"'),
        (f"UPDATE datesync.task SET state = 'running', lease_owner = 'op', lease_expires_at = now() WHERE id = {ok}",
         "cannot move from succeeded to running"),
        (f"UPDATE datesync.task SET state = 'queued', finished_at = NULL WHERE id = {ok}",
         "cannot move from succeeded to queued"),
        (f"UPDATE datesync.task SET state = 'succeeded' WHERE id = {bad}", "cannot move from failed to succeeded"),
        (f"UPDATE datesync.task SET state = 'skipped' WHERE id = {bad}", "cannot move from failed to skipped"),
        (f"UPDATE datesync.task SET state = 'queued' WHERE id = {bad}", "task_finished_when_final"),
        (f"UPDATE datesync.task SET attempt = -1 WHERE id = {ok}", "attempt"),
        (f"UPDATE datesync.task SET max_attempts = 0 WHERE id = {ok}", "max_attempts"),
        (f"UPDATE datesync.task SET state = 'bogus' WHERE id = {ok}", "task_state"),
        ("UPDATE datesync.day SET status = 'success', synced_at = NULL", "day_synced_at_when_success"),
        ("UPDATE datesync.day SET status = 'bogus'", "day_status"),
        ("UPDATE datesync.day SET day = '-infinity' WHERE day = (SELECT min(day) FROM datesync.day)",
         "day must not be before 1000-01-01"),
        ("INSERT INTO datesync.day (source, day, status) VALUES ('default', 'infinity', 'failed')",
         "day must be a date written YYYY-MM-DD"),
        (f"UPDATE datesync.task SET day = '4713-01-01 BC' WHERE id = {ok}", "day must not be before 1000-01-01"),
        ("INSERT INTO datesync.source (name) VALUES ('Bad Name; DROP')", "source_name_check"),
        ("INSERT INTO datesync.source (name) VALUES (NULL)", '"name"'),
    ]


def sql_forgeries(batch: int) -> list[tuple[str, str]]:
    """Hand edits that would fake a batch's progress: accepted, each makes a batch end wrongly or never."""
    ins = "INSERT INTO datesync.batch"
    return [
        (f"{ins} (start_date, end_date, state, started_at) VALUES ('2024-03-01', '2024-03-03', 'running', now())",
         "a batch inserted as running is never expanded into dates, yet ends 'succeeded' with none run"),
        (f"{ins} (start_date, end_date, state, started_at, finished_at) VALUES ('2024-03-01', '2024-03-03', "
         "'succeeded', now(), now())", "a batch inserted as succeeded: none of its dates ever runs"),
        (f"{ins} (start_date, end_date, queued) VALUES ('2024-03-01', '2024-03-03', 5)",
         "forged counts: the batch's counts never match its tasks, and it never ends"),
        (f"UPDATE datesync.batch SET succeeded = succeeded + 7 WHERE id = {batch}",
         "forged counts: the batch's counts no longer match its tasks"),
    ]


async def hostile_sql(dsn: str, seed: int, scale: Scale) -> Figures:
    """Bad operator INSERTs and UPDATEs (NULLs, reversed, huge and infinite ranges, unknown sources, SQL in
    strings, invalid state changes such as a succeeded task set back to running): each refused with a message that
    names the rule, in one statement that leaves nothing behind."""
    started = time.monotonic()
    fig = Figures("hostile_sql", seed)
    conn = await open_conn(dsn)
    try:
        batch, _failed, ok, bad = await _finished_batches(dsn, conn)
        for statement, message in sql_refusals(batch, ok, bad) * scale.corpus_rounds:
            fig.bad_inputs += 1
            before = await corpus.row_counts(conn)
            try:
                status = await conn.execute(statement)
            except asyncpg.PostgresError as exc:
                text = f"{exc} {exc.detail or ''} {getattr(exc, 'constraint_name', '') or ''}"
                if message not in text:
                    fig.problems.append(f"refused without naming {message!r}: {statement}\n  -> {text.strip()}")
            else:
                fig.problems.append(f"accepted ({status}): {statement}")
            if await corpus.row_counts(conn) != before:
                fig.problems.append(f"left rows behind: {statement}")
        fig.problems += [f"batch {r['id']} counts differ from its tasks"
                         for r in await invariants.counts_mismatch(conn)]
    finally:
        await conn.close()
    fig.seconds = time.monotonic() - started
    return fig


async def forged_sql(dsn: str, seed: int, scale: Scale) -> Figures:
    """Hand edits that fake a batch's state or counts must be refused like the invalid transitions above."""
    started = time.monotonic()
    fig = Figures("forged_sql", seed)
    conn = await open_conn(dsn)
    try:
        batch, _failed, _ok, _bad = await _finished_batches(dsn, conn)
        for statement, harm in sql_forgeries(batch):
            fig.bad_inputs += 1
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute(statement)
            except asyncpg.PostgresError:
                pass
            else:
                fig.problems.append(f"accepted ({harm}): {statement}")
            finally:
                await tx.rollback()
    finally:
        await conn.close()
    fig.seconds = time.monotonic() - started
    return fig


# -- load -----------------------------------------------------------------------------------------------


class SseClient:
    """One event-stream reader: its status, whether it got the snapshot, and the batches it saw end."""

    def __init__(self) -> None:
        self.status = 0
        self.snapshot = asyncio.Event()
        self.finals: set[int] = set()
        self.ended = False
        self.error: str | None = None

    async def run(self, client: httpx.AsyncClient, url: str) -> None:
        try:
            async with client.stream("GET", url, timeout=httpx.Timeout(10, read=None)) as answer:
                self.status = answer.status_code
                if answer.status_code != 200:
                    await answer.aread()
                    return
                event = ""
                async for line in answer.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                        if event == "snapshot":
                            self.snapshot.set()
                    elif line.startswith("data: ") and event == "batch":
                        data = json.loads(line[6:])
                        if data.get("data", {}).get("final"):
                            self.finals.add(int(data["batch_id"]))
            self.ended = True
        except httpx.HTTPError as exc:
            self.error = f"{type(exc).__name__}: {exc}"


async def load(dsn: str, seed: int, scale: Scale) -> Figures:
    """`load_posts` concurrent POSTs of overlapping ranges (some identical, some forced, some with an
    Idempotency-Key) and `load_sse` SSE clients against one web process and two daemons: no 5xx, every created
    batch returned exactly once and none lost, identical requests de-duplicated while one is unfinished, every
    client sees every batch end, the web process's memory bounded; one client over the cap gets a 503."""
    started = time.monotonic()
    rng = random.Random(seed)
    fig = Figures("load", seed)
    identities = []
    for _ in range(max(8, scale.load_posts // 10)):
        first = rng.randrange(60)
        identities.append((day(first), day(first + rng.randint(0, 9)), rng.random() < 0.2))
    conn = await open_conn(dsn)
    env = {"DATESYNC_DEMO_DELAY_MS": "20", "DATESYNC_CONCURRENCY": "4"}
    try:
        async with daemon_fleet(dsn, env) as fleet, web_process(
                dsn, {"DATESYNC_SSE_MAX_CLIENTS": str(scale.load_sse)}) as (web, base):
            for proc in (fleet.spawn(), fleet.spawn()):
                await proc.wait_log("daemon_started")
            memory = psutil.Process(web.pid)
            rss_start = memory.memory_info().rss
            peak = rss_start
            limits = httpx.Limits(max_connections=scale.load_posts + scale.load_sse + 50, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
                readers = [SseClient() for _ in range(scale.load_sse)]
                streams = [asyncio.create_task(r.run(client, f"{API}/events")) for r in readers]
                try:
                    await asyncio.wait_for(asyncio.gather(*(r.snapshot.wait() for r in readers)), 60)
                except TimeoutError:
                    fig.problems.append(f"only {sum(r.snapshot.is_set() for r in readers)} of {len(readers)} SSE "
                                        f"clients got their snapshot: {[r.status for r in readers][:20]}")
                over = await client.get(f"{API}/events", timeout=10)
                if over.status_code != 503 or "retry-after" not in over.headers:
                    fig.problems.append(f"a client over the SSE cap got {over.status_code}, expected 503")
                peak = max(peak, memory.memory_info().rss)

                async def submit(i: int) -> tuple[int, dict[str, object], tuple[object, ...]]:
                    which = rng.randrange(len(identities))
                    start, end, force = identities[which]
                    # Some clients send a key, one per request body (a key names one request, retried).
                    headers = {"Idempotency-Key": f"load-{seed}-{which}"} if i % 5 == 0 else {}
                    answer = await client.post(f"{API}/sync/batch", headers=headers, json={
                        "start_date": start.isoformat(), "end_date": end.isoformat(), "force": force})
                    body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") \
                        else {}
                    return answer.status_code, body, (start, end, force, headers.get("Idempotency-Key"))

                results = await asyncio.gather(*(submit(i) for i in range(scale.load_posts)))
                peak = max(peak, memory.memory_info().rss)
                fig.requests = len(results) + len(readers) + 1
                fig.http_5xx = sum(1 for status, _, _ in results if status >= 500)
                await wait_all_final(dsn, 120)
                fig.problems += await _judge_posts(conn, results)
                created = {int(b["data"]["batch_id"]) for s, b, _ in results if s == 202}  # type: ignore[index]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and any(created - r.finals for r in readers):
                    peak = max(peak, memory.memory_info().rss)
                    await asyncio.sleep(0.2)
                missing = [r for r in readers if created - r.finals]
                if missing:
                    fig.problems.append(f"{len(missing)} SSE clients missed the end of some batches, e.g. "
                                        f"{sorted(created - missing[0].finals)[:5]} ({missing[0].error})")
                for task in streams:
                    task.cancel()
                await asyncio.gather(*streams, return_exceptions=True)
            growth = (peak - rss_start) / 2**20
            if growth > 150:
                fig.problems.append(f"the web process grew by {growth:.0f} MiB under load")
            fig.details = f"web RSS {rss_start / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB"
            await settle(fig, conn, fleet, invariants.Rules())
    finally:
        await conn.close()
    fig.seconds = time.monotonic() - started
    return fig


async def _judge_posts(conn: asyncpg.Connection,
                       results: Sequence[tuple[int, dict[str, object], tuple[object, ...]]]) -> list[str]:
    problems = []
    statuses: dict[int, int] = {}
    returned_created: dict[int, int] = {}
    for status, body, (start, end, force, _key) in results:
        statuses[status] = statuses.get(status, 0) + 1
        if status not in (200, 202):
            problems.append(f"POST answered {status}: {body}")
            continue
        data = body["data"]
        assert isinstance(data, dict)
        batch_id = int(data["batch_id"])
        if (status == 202) == bool(data["deduplicated"]):
            problems.append(f"POST {status} with deduplicated={data['deduplicated']}")
        if status == 202:
            returned_created[batch_id] = returned_created.get(batch_id, 0) + 1
        row = await conn.fetchrow("SELECT start_date, end_date, force FROM datesync.batch WHERE id = $1", batch_id)
        if row is None:
            problems.append(f"batch {batch_id} was answered but does not exist")
        elif _key is None and (row["start_date"], row["end_date"], row["force"]) != (start, end, force):
            problems.append(f"batch {batch_id} answered a request for {start}..{end} force={force}: {dict(row)}")
    by_key: dict[object, set[int]] = {}
    for status, body, (_s, _e, _f, key) in results:
        if key is not None and status in (200, 202):
            by_key.setdefault(key, set()).add(int(body["data"]["batch_id"]))  # type: ignore[index]
    problems += [f"Idempotency-Key {k} answered with batches {sorted(ids)}" for k, ids in by_key.items()
                 if len(ids) > 1]
    in_db = {r["id"] for r in await conn.fetch("SELECT id FROM datesync.batch")}
    if set(returned_created) != in_db:
        problems.append(f"batches created {sorted(in_db)[:10]}… but answered as created "
                        f"{sorted(returned_created)[:10]}… (lost: {sorted(in_db - set(returned_created))[:10]})")
    problems += [f"batch {b} answered as created {n} times" for b, n in returned_created.items() if n > 1]
    # Identical requests share one unfinished batch: two batches of one identity never lived at the same time.
    for row in await conn.fetch(
        """
        SELECT a.id AS a, b.id AS b FROM datesync.batch a JOIN datesync.batch b
          ON (a.source, a.start_date, a.end_date, a.force) = (b.source, b.start_date, b.end_date, b.force)
         AND a.id < b.id AND b.created_at < a.finished_at
        """
    ):
        problems.append(f"batches {row['a']} and {row['b']} are identical and were unfinished at the same time")
    return problems


# -- security -------------------------------------------------------------------------------------------

TOKEN = "tok-3xtr4-s3cr3t"
ORIGIN = "https://app.example"


async def security(dsn: str, seed: int, scale: Scale) -> Figures:
    """The token on every mutating endpoint (and nothing written without it), CORS for exactly the configured
    origin, browsers' cross-site POSTs refused, the SSE cap, and neither the token nor a wrong one in any answer or
    log line."""
    started = time.monotonic()
    fig = Figures("security", seed)
    conn = await open_conn(dsn)
    p = fig.problems
    try:
        existing = await insert_batch(conn, day(0), day(1))
        env = {"DATESYNC_API_TOKEN": TOKEN, "DATESYNC_CORS_ORIGINS": ORIGIN, "DATESYNC_SSE_MAX_CLIENTS": "3"}
        async with web_process(dsn, env) as (web, base), httpx.AsyncClient(base_url=base, timeout=20) as client:
            body = {"start_date": "2024-01-01", "end_date": "2024-01-03"}
            before = await corpus.row_counts(conn)
            denied = [
                ("no token", {}),
                ("wrong token", {"Authorization": "Bearer wrong-" + TOKEN}),
                ("token prefix", {"Authorization": "Bearer " + TOKEN[:-1]}),
                ("token with a suffix", {"Authorization": "Bearer " + TOKEN + "x"}),
                ("Basic scheme", {"Authorization": "Basic " + TOKEN}),
                ("scheme only", {"Authorization": "Bearer"}),
                ("token without scheme", {"Authorization": TOKEN}),
                ("other header", {"X-Api-Token": TOKEN}),
            ]
            for label, headers in denied:
                for method, path, payload in (("POST", "/sync/batch", body),
                                              ("POST", f"/batches/{existing}/cancel", None),
                                              ("POST", f"/batches/{existing}/retry", None),
                                              ("POST", "/sync/batch", {**body, "dry_run": True})):
                    answer = await client.request(method, API + path, json=payload, headers=headers)
                    fig.requests += 1
                    if answer.status_code != 401 or "bearer" not in answer.headers.get("www-authenticate", "").lower():
                        p.append(f"{label}: {method} {path} answered {answer.status_code}, expected 401")
                    if TOKEN in answer.text:
                        p.append(f"{label}: the answer contains the token")
            query = await client.post(f"{API}/sync/batch?token={TOKEN}", json=body)
            if query.status_code != 401:
                p.append(f"a token in the query string was accepted ({query.status_code})")
            if await corpus.row_counts(conn) != before:
                p.append("requests refused with 401 left rows behind")
            good = await client.post(f"{API}/sync/batch", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
            if good.status_code != 202:
                p.append(f"the right token got {good.status_code}")
            for path in ("/", "/batches", f"/batches/{existing}", "/sources"):
                if (await client.get(API + path)).status_code != 200:
                    p.append(f"GET {path} needs no token but was refused")
            p += await _cors(client)
            p += await _cross_site(client, body)
            p += await _sse_cap(client)
            log = web.log_text()
            if TOKEN in log or "wrong-" in log:
                p.append("the web log contains a token")
    finally:
        await conn.close()
    fig.seconds = time.monotonic() - started
    return fig


async def _cors(client: httpx.AsyncClient) -> list[str]:
    p = []
    url = f"{API}/sync/batch"
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = await client.options(url, headers={"Origin": ORIGIN, **preflight})
    if allowed.status_code != 200 or allowed.headers.get("access-control-allow-origin") != ORIGIN:
        p.append(f"the configured origin's preflight got {allowed.status_code} {dict(allowed.headers)}")
    if allowed.headers.get("access-control-allow-credentials"):
        p.append("CORS allows credentials")
    for origin in ("https://evil.example", "null", "https://app.example.evil.example", "http://app.example"):
        answer = await client.options(url, headers={"Origin": origin, **preflight})
        if answer.headers.get("access-control-allow-origin") not in (None, ""):
            p.append(f"origin {origin} was allowed: {answer.headers.get('access-control-allow-origin')}")
        simple = await client.get(f"{API}/batches", headers={"Origin": origin})
        if simple.headers.get("access-control-allow-origin"):
            p.append(f"a GET from {origin} carries Access-Control-Allow-Origin")
    return p


async def _cross_site(client: httpx.AsyncClient, body: dict[str, str]) -> list[str]:
    """A page on another site can make a browser send a "simple" POST (text/plain body, or none, no custom header,
    no preflight) from the visitor's network position, e.g. to a datesync on localhost without a token. The browser
    labels it (Sec-Fetch-Site, which no page can set, and Origin); the server must refuse it, whatever the token."""
    p = []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    forged = [
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
        {"Origin": "https://sub.app.example", "Sec-Fetch-Site": "same-site", "Content-Type": "text/plain"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
        {"Sec-Fetch-Site": "CROSS-SITE"},
        # Browsers without Sec-Fetch-* still send Origin.
        {"Origin": "https://evil.example", "Content-Type": "text/plain"},
        {"Origin": "null"},
    ]
    for headers in forged:
        for path, content in (("/sync/batch", json.dumps(body)), ("/batches/1/cancel", None)):
            answer = await client.post(API + path, content=content, headers={**headers, **auth})
            if answer.status_code != 403 or answer.json().get("errors", [{}])[0].get("field") != "Origin":
                p.append(f"a cross-site POST {path} {headers} answered {answer.status_code}, expected 403")
    # The page itself, the configured origin and clients that are not browsers are served as before.
    served = [
        ("same-origin", {"Sec-Fetch-Site": "same-origin", "Origin": str(client.base_url).rstrip("/")}),
        ("typed into the address bar", {"Sec-Fetch-Site": "none"}),
        ("configured origin", {"Origin": ORIGIN, "Sec-Fetch-Site": "cross-site"}),
        ("own origin, no Sec-Fetch-Site", {"Origin": str(client.base_url).rstrip("/")}),
        ("not a browser", {}),
    ]
    for label, headers in served:
        answer = await client.post(f"{API}/sync/batch", json=body, headers={**auth, **headers})
        if answer.status_code not in (200, 202):
            p.append(f"a {label} POST answered {answer.status_code}")
    return p


async def _sse_cap(client: httpx.AsyncClient) -> list[str]:
    readers = [SseClient() for _ in range(3)]
    tasks = [asyncio.create_task(r.run(client, f"{API}/events")) for r in readers]
    p = []
    try:
        await asyncio.wait_for(asyncio.gather(*(r.snapshot.wait() for r in readers)), 15)
        over = await client.get(f"{API}/events")
        if over.status_code != 503:
            p.append(f"the fourth SSE client (cap 3) got {over.status_code}")
    except TimeoutError:
        p.append(f"three SSE clients under a cap of 3 did not all connect: {[r.status for r in readers]}")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return p


__all__ = ["Fleet", "forged_sql", "hostile_http", "hostile_sql", "load", "security"]


async def web_database_down(server: DedicatedServer, seed: int, scale: Scale) -> Figures:
    """The web process while its database is down: every API answer a 503 envelope that names no host, socket,
    password or driver, /readyz says why without those either, no password in its log; it serves again as soon as
    the database is back."""
    from tests.faults.dbs import fresh_database
    from tests.faults.scenarios import SECRET

    started = time.monotonic()
    fig = Figures("web_database_down", seed)
    async with fresh_database(server.admin_dsn) as dsn:
        secret_dsn = dsn.replace("postgres@", f"postgres:{SECRET}@", 1)  # trust auth: any password is accepted
        async with web_process(secret_dsn) as (web, base), httpx.AsyncClient(base_url=base, timeout=30) as client:
            await server.stop()
            try:
                body = {"start_date": "2024-01-01", "end_date": "2024-01-02"}
                for method, path, payload in (("GET", f"{API}/", None), ("GET", f"{API}/batches", None),
                                              ("GET", f"{API}/batches/1", None), ("POST", f"{API}/sync/batch", body),
                                              ("GET", "/readyz", None), ("GET", f"{API}/events", None)):
                    answer = await client.request(method, path, json=payload)
                    fig.requests += 1
                    if answer.status_code != 503:
                        fig.problems.append(f"{method} {path} with the database down: {answer.status_code}")
                    for leak in (SECRET, "postgresql://", str(server.folder), "asyncpg", "Traceback", "/tmp/"):
                        if leak in answer.text:
                            fig.problems.append(f"{method} {path} with the database down leaks {leak!r}: "
                                                f"{answer.text[:300]}")
            finally:
                await server.start()
                fig.db_restarts += 1
            deadline = time.monotonic() + 20
            while (await client.get(f"{API}/batches")).status_code != 200:
                if time.monotonic() > deadline:
                    fig.problems.append("the web process did not serve again after the database came back")
                    break
                await asyncio.sleep(0.2)
            if SECRET in web.log_text():
                fig.problems.append("the web log contains the database password")
    fig.seconds = time.monotonic() - started
    return fig


async def idempotent_retry(dsn: str, seed: int, scale: Scale) -> Figures:
    """A client sends a request with an Idempotency-Key, gets an answer (the identical batch already running,
    de-duplicated), and later retries it with the same key, as a client does when it missed that answer: the
    retry must name the same batch, even though that batch has ended meanwhile, and create nothing."""
    started = time.monotonic()
    fig = Figures("idempotent_retry", seed)
    conn = await open_conn(dsn)
    try:
        async with daemon_fleet(dsn, {"DATESYNC_DEMO_DELAY_MS": "300"}) as fleet, web_process(dsn) as (_web, base), \
                httpx.AsyncClient(base_url=base, timeout=20) as client:
            await fleet.spawn().wait_log("daemon_started")
            body = {"start_date": day(0).isoformat(), "end_date": day(2).isoformat()}
            key = {"Idempotency-Key": f"retry-{seed}"}
            first = await client.post(f"{API}/sync/batch", json=body)
            keyed = await client.post(f"{API}/sync/batch", json=body, headers=key)
            await wait_all_final(dsn, 30)
            retry = await client.post(f"{API}/sync/batch", json=body, headers=key)
            fig.requests = 3
            answered = [r.json()["data"]["batch_id"] for r in (first, keyed, retry)]
            if len(set(answered)) != 1:
                fig.problems.append(
                    f"POST {first.status_code} -> batch {answered[0]}; the same with Idempotency-Key "
                    f"{keyed.status_code} -> batch {answered[1]} (de-duplicated); its retry with the same key after "
                    f"that batch ended {retry.status_code} -> batch {answered[2]}: the key was not remembered")
            batches = await conn.fetchval("SELECT count(*) FROM datesync.batch")
            if batches != 1:
                fig.problems.append(f"{batches} batches for one request and its retries")
    finally:
        await conn.close()
    fig.seconds = time.monotonic() - started
    return fig
