"""`datesync batch --follow` and `datesync watch` as real subprocesses: exit codes, the failures summary, resuming
through a dropped stream, and the fall-back to the database's event log when no web server answers."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from datesync.daemon.settings import Settings
from datesync.web.events import hub_for
from tests.support.daemons import running_daemon
from tests.support.server import free_port, live_server
from tests.support.waiting import wait_for

DATESYNC = str(Path(sys.executable).with_name("datesync"))
FAST = Settings(retry_delay=0.05, poll_interval=60, max_attempts=2, concurrency=2)


@pytest.fixture(autouse=True)
def demo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATESYNC_DEMO_DELAY_MS", "20")
    monkeypatch.setenv("DATESYNC_DEMO_FAIL_DATES", "2024-02-02")


async def spawn(dsn: str, url: str, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "DATABASE_URL": dsn, "DATESYNC_URL": url, "LOG_FORMAT": "json", "COLUMNS": "200"}
    return await asyncio.create_subprocess_exec(DATESYNC, *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_batch_follow_resumes_through_a_dropped_stream_and_exits_0(dsn: str) -> None:
    async with live_server(dsn, FAST) as live:  # no daemon yet: the batch waits, queued, while we cut the stream
        hub = hub_for(live.state)
        proc = await spawn(dsn, live.base_url, "batch", "2024-01-01", "2024-01-05", "--follow")
        await wait_for(lambda: asyncio.sleep(0, result=any(c.live for c in hub.clients)), timeout=30)
        hub.disconnect_all()
        await wait_for(lambda: asyncio.sleep(0, result=hub.connections_total >= 2 and any(
            c.live for c in hub.clients)), timeout=15)
        async with running_daemon(dsn, FAST):
            code, out, err = await finish(proc)
    assert code == 0, err
    batch_id = out.splitlines()[0]
    assert f"batch {batch_id} succeeded: 5 succeeded, 0 failed, 0 skipped, 0 cancelled, of 5 dates" in out
    assert "failed dates" not in out


async def test_watch_falls_back_to_the_database_and_exits_1_listing_failures(
    dsn: str, db: asyncpg.Connection
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    async with running_daemon(dsn, FAST):
        batch_id = await db.fetchval("INSERT INTO datesync.batch (start_date, end_date) "
                                     "VALUES ('2024-02-01', '2024-02-04') RETURNING id")
        code, out, err = await finish(await spawn(dsn, nobody, "watch", str(batch_id)))
    assert code == 1, err
    assert "following the database's event log" in err
    assert f"batch {batch_id} failed: 3 succeeded, 1 failed" in out
    assert "2024-02-02" in out and "demo upstream has no data for 2024-02-02" in out
    assert "2024-02-01" not in out.split("failed dates")[1]


async def test_watch_of_an_unknown_batch_exits_2(dsn: str) -> None:
    async with live_server(dsn, FAST) as live:
        code, _out, err = await finish(await spawn(dsn, live.base_url, "watch", "4242"))
    assert code == 2 and "batch 4242 not found" in err


def test_the_tracker_follows_a_retried_batch_to_its_last_outcome() -> None:
    """Replaying a batch from its first event: a date that failed and then succeeded on a retry is no failure."""
    from datesync.follow import Tracker

    def ev(i: int, kind: str, state: str, day: str | None = None, **data: object) -> dict[str, object]:
        return {"id": i, "at": f"2024-03-01T00:00:{i:02d}+00:00", "kind": kind, "state": state, "day": day,
                "attempt": 1, "error": "boom" if state == "failed" else None, "data": data}

    counts = {"queued": 0, "running": 0, "succeeded": 1, "failed": 1, "skipped": 0, "cancelled": 0, "days": 2}
    t = Tracker(1)
    t.snapshot({"days": 2, "state": "succeeded"})
    for e in [ev(1, "batch", "queued", days=2), ev(2, "batch", "running", days=2),
              ev(3, "task", "succeeded", "2024-01-01", counts={**counts, "failed": 0}),
              ev(4, "task", "failed", "2024-01-02", counts=counts),
              ev(5, "batch", "failed", final=True, succeeded=1, failed=1)]:
        t.event(e)
    assert t.final and t.exit_code() == 1 and [d for d, _ in t.failures()] == ["2024-01-02"]
    t.event(ev(6, "batch", "running", retry=1))
    assert not t.final
    t.event(ev(7, "task", "succeeded", "2024-01-02", counts={**counts, "succeeded": 2, "failed": 0}))
    t.event(ev(8, "batch", "succeeded", final=True, succeeded=2, failed=0))
    assert t.final and t.done == 2 and t.failures() == [] and t.exit_code() == 0
    assert t.rate is not None and t.rate > 0


async def _installation_with_batch_1_done(dsn: str) -> None:
    """Batch 1 of `dsn` succeeded with 3 dates: what a follower of the wrong installation would report."""
    async with running_daemon(dsn, FAST):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("INSERT INTO datesync.batch (start_date, end_date) VALUES ('2024-05-01', '2024-05-03')")
            await wait_for(lambda: conn.fetchval("SELECT state = 'succeeded' FROM datesync.batch WHERE id = 1"),
                           timeout=30)
        finally:
            await conn.close()


async def test_batch_follow_never_assumes_the_server_on_the_default_port(dsn: str, other_dsn: str) -> None:
    """A server for another database listens on PORT: the CLI follows the batch in the database it wrote to."""
    await _installation_with_batch_1_done(other_dsn)
    async with live_server(other_dsn, FAST) as live, running_daemon(dsn, FAST):
        env = {**os.environ, "DATABASE_URL": dsn, "PORT": live.base_url.rsplit(":", 1)[1], "LOG_FORMAT": "json",
               "COLUMNS": "200"}
        env.pop("DATESYNC_URL", None)
        proc = await asyncio.create_subprocess_exec(
            DATESYNC, "batch", "2024-03-01", "2024-03-05", "--follow", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        code, out, err = await finish(proc)
    assert code == 0, err
    assert "batch 1 succeeded: 5 succeeded, 0 failed, 0 skipped, 0 cancelled, of 5 dates" in out


async def test_a_url_that_serves_another_database_is_not_followed(dsn: str, other_dsn: str) -> None:
    await _installation_with_batch_1_done(other_dsn)
    async with live_server(other_dsn, FAST) as live, running_daemon(dsn, FAST):
        code, out, err = await finish(await spawn(dsn, live.base_url, "batch", "2024-03-01", "2024-03-05",
                                                  "--follow"))
    assert "serves another database" in err
    assert code == 0, err
    assert "batch 1 succeeded: 5 succeeded, 0 failed, 0 skipped, 0 cancelled, of 5 dates" in out
