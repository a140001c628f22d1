"""GET /metrics: Prometheus text format.

Counters and histograms (daemon/metrics.py) count what this process did. Queue depth, running dates and
unfinished batches are read from the database at scrape time, so every replica reports the same truth: one
query over the unfinished batches' live counters, bounded by a timeout. `datesync_tasks{state="queued"}`
counts the dates waiting, those of batches not yet expanded into tasks included. A database that does not
answer never breaks the scrape: `datesync_database_up` says 0 and the database-read gauges are left out
rather than reported stale.

`datesync_table_bytes{table=…}` is each datesync table's size on disk with its indexes, from the same connection:
pg_total_relation_size stats the files of a dozen relations, it reads no rows. It shows what retention
(DATESYNC_RETENTION) keeps in check.

On Neon every scrape is a query, and a compute stays awake while it is queried: scrape less often than every
5 minutes, or accept that the compute never scales to zero.
"""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import REGISTRY, Gauge
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from datesync.daemon import metrics
from datesync.daemon.db.connect import DB_ERRORS
from datesync.daemon.db.queries import q
from datesync.daemon.states import UNFINISHED_BATCH
from datesync.web.events import hub_for
from datesync.web.state import AppState

log = structlog.get_logger("datesync.web.metrics")

DATABASE_UP = Gauge("datesync_database_up", "1 if the database answered this scrape's queries, else 0.")

READ_TIMEOUT = 3.0  # seconds; a scrape must answer even while the database is away

_READ_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, TimeoutError)

_failing = False  # the last scrape's read failed: say so once, not on every scrape


async def _read_database(state: AppState) -> None:
    global _failing
    try:
        async with asyncio.timeout(READ_TIMEOUT), state.pool.acquire() as conn:
            rows = await conn.fetch(q("batch_count_unfinished"))
            sizes = await conn.fetch(q("table_size_list"))
    except _READ_ERRORS as exc:
        DATABASE_UP.set(0)
        metrics.QUEUE.clear()
        metrics.BATCHES.clear()
        metrics.TABLE_BYTES.clear()
        if not _failing:
            log.warning("metrics_database_read_failed", error=f"{type(exc).__name__}: {exc}")
        _failing = True
        return
    if _failing:
        log.info("metrics_database_read_recovered")
    _failing = False
    DATABASE_UP.set(1)
    batches = {r["state"]: r["batches"] for r in rows}
    for name in UNFINISHED_BATCH:
        metrics.BATCHES.labels(name).set(batches.get(name, 0))
        metrics.QUEUE.labels(name).set(sum(r[name] for r in rows))
    for size in sizes:
        metrics.TABLE_BYTES.labels(size["name"]).set(size["bytes"])


def _count_sse_clients(state: AppState) -> None:
    # Read from this process's event hub at scrape time (the hub does not maintain the gauge itself).
    try:
        metrics.SSE_CLIENTS.set(len(hub_for(state).clients))
    except KeyError:  # the app is not serving (no lifespan): no hub, no clients
        metrics.SSE_CLIENTS.set(0)


async def metrics_text(request: Request) -> Response:
    """Every datesync metric, in Prometheus' text format (or OpenMetrics, when the scraper asks for it)."""
    state: AppState = request.app.state.datesync
    await _read_database(state)
    _count_sse_clients(state)
    # Negotiated as prometheus_client's own exporters do: a scraper that does not ask for a newer format gets
    # text format 0.0.4, which every Prometheus version reads.
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(REGISTRY), headers={"Content-Type": content_type})


routes: list[BaseRoute] = [Route("/metrics", metrics_text, methods=["GET"], name="metrics")]
