"""GET /metrics: present, moving after a batch, reading the queue from the database, and never broken by it."""

from __future__ import annotations

import time
from collections.abc import Iterable

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from datesync.daemon.db.connect import create_pool
from datesync.daemon.settings import Settings
from datesync.web.app import create_app
from datesync.web.state import AppState
from tests.support.daemons import running_daemon, wait_batch_final
from tests.support.server import live_server

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def names(samples: Samples) -> Iterable[str]:
    return {name for name, _ in samples}


async def scrape(client: httpx.AsyncClient) -> Samples:
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(answer.text)


async def test_metrics_move_after_a_batch_and_the_queue_is_read_from_the_database(
    dsn: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATESYNC_DEMO_DELAY_MS", "20")
    monkeypatch.setenv("DATESYNC_DEMO_FAIL_DATES", "2025-04-03")
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.base_url) as client:
        before = await scrape(client)
        # No daemon yet: the batch waits, and the scrape sees it in the database.
        batch_id = await db.fetchval(
            "INSERT INTO datesync.batch (start_date, end_date) VALUES ('2025-04-01', '2025-04-06') RETURNING id")
        waiting = await scrape(client)
        assert value(waiting, "datesync_database_up") == 1
        assert value(waiting, "datesync_batches", state="queued") == 1
        assert value(waiting, "datesync_tasks", state="queued") == 6  # its days, before any task exists
        assert value(waiting, "datesync_tasks", state="running") == 0

        async with client.stream("GET", live.api + "/events") as stream, \
                running_daemon(dsn, Settings(retry_delay=0.05, poll_interval=2, lease=3, max_attempts=2)):
            final = await wait_batch_final(db, batch_id)
            during = await scrape(client)
            assert stream.status_code == 200
        after = await scrape(client)

    assert (final["succeeded"], final["failed"]) == (5, 1)
    assert value(during, "datesync_sse_clients") >= 1

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("datesync_tasks_finished_total", source="default", state="succeeded") == 5
    assert moved("datesync_tasks_finished_total", source="default", state="failed") == 1
    assert moved("datesync_attempts_failed_total", source="default") == 2
    assert moved("datesync_retries_total", source="default") == 1
    assert moved("datesync_task_duration_seconds_count", source="default") >= 5
    assert moved("datesync_wake_latency_seconds_count") == 1
    assert value(after, "datesync_batches", state="queued") == value(after, "datesync_batches", state="running") == 0
    assert value(after, "datesync_tasks", state="queued") == value(after, "datesync_tasks", state="running") == 0
    assert value(after, "datesync_sse_clients") == 0
    assert {"datesync_daemon_running_dates", "datesync_database_up"} <= set(names(after))
    # Table sizes, read at scrape time: one gauge per datesync table, growing with the rows a batch leaves.
    tables = {dict(labels)["table"] for name, labels in after if name == "datesync_table_bytes"}
    assert {"batch", "task", "event", "day", "request_key", "retention"} <= tables
    assert value(after, "datesync_table_bytes", table="task") > value(before, "datesync_table_bytes", table="task")
    assert value(after, "datesync_table_bytes", table="event") > 0


async def test_a_scrape_is_cheap(dsn: str) -> None:
    async with live_server(dsn) as live, httpx.AsyncClient(base_url=live.base_url) as client:
        await scrape(client)
        started = time.perf_counter()
        for _ in range(20):
            await scrape(client)
        per_scrape = (time.perf_counter() - started) / 20
    assert per_scrape < 0.05, f"{per_scrape * 1000:.1f} ms per scrape"


async def test_a_database_that_does_not_answer_does_not_break_the_scrape(dsn: str) -> None:
    pool = await create_pool(dsn, 2, "datesync-test")
    await pool.close()  # every acquire now fails, as with a database that is away
    state = AppState(settings=Settings(database_url=dsn), pool=pool, direct_dsn=dsn)
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        samples = await scrape(client)
    assert value(samples, "datesync_database_up") == 0
    # Left out rather than reported stale.
    assert not any(name in ("datesync_tasks", "datesync_table_bytes") for name, _ in samples)
    assert {"datesync_daemon_running_dates", "datesync_sse_clients"} <= set(names(samples))
