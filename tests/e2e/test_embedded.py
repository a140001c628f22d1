"""The embedded PostgreSQL: `datesync run` with no DATABASE_URL, restarts, signals, and the traps of stale files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from datesync.daemon.embedded import EmbeddedPostgres
from datesync.daemon.errors import EmbeddedDatabaseError
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def postgres_pids(data_dir: Path) -> list[int]:
    """Live postmasters serving this folder."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        live = proc.info["name"] == "postgres" and proc.info["status"] != psutil.STATUS_ZOMBIE
        if live and str(data_dir.resolve() / "pg") in " ".join(proc.info["cmdline"] or []):
            found.append(proc.pid)
    return found


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: another pytest session starting meanwhile resets its parent to mode 0700, which
    # locks the server's system user out (a real, if local-only, hazard when suites run side by side).
    parent = Path(tempfile.mkdtemp(prefix="dsemb-"))
    folder = parent / "data"
    yield folder
    server = EmbeddedPostgres(folder)
    if server.running_pid() is not None:  # never leave a server behind, whatever the test did
        server._take_lock = lambda: None  # type: ignore[method-assign]
        server.stop()
    shutil.rmtree(parent, ignore_errors=True)


def start_run(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_DIRECT_URL")}
    env.update({"DATESYNC_DATA_DIR": str(data_dir), "PORT": str(port), "PYTHONPATH": str(ROOT),
                "LOG_FORMAT": "json", "DATESYNC_DEMO_DELAY_MS": "10"})
    return subprocess.Popen([sys.executable, "-m", "datesync.cli", "run"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"datesync run exited early with {proc.returncode}"
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("datesync run did not become ready")


def post_batch_sql(server_dsn: str, start: str, end: str) -> None:
    import asyncio

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(server_dsn)
        await conn.execute("INSERT INTO datesync.batch (start_date, end_date) VALUES ($1::text::date, $2::text::date)",
                           start, end)
        await conn.close()

    asyncio.run(go())


def test_run_keeps_data_across_restarts_and_leaves_no_postgres_behind(data_dir: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_run(data_dir, port)
    try:
        wait_healthy(base, proc)
        assert httpx.get(base + "/healthz").json()["data"]["alive"] is True
        post_batch_sql(EmbeddedPostgres(data_dir).dsn(), "2025-01-01", "2025-01-03")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert postgres_pids(data_dir) == [], "SIGTERM must stop the embedded server"

    proc = start_run(data_dir, port)
    try:
        wait_healthy(base, proc)
        # The batch from the first run is still there (and the restarted daemon finishes it).
        import asyncio

        import asyncpg

        async def state() -> str:
            conn = await asyncpg.connect(EmbeddedPostgres(data_dir).dsn())
            try:
                deadline = time.monotonic() + 20
                while True:
                    s = await conn.fetchval("SELECT state::text FROM datesync.batch WHERE id = 1")
                    if s == "succeeded" or time.monotonic() > deadline:
                        return str(s)
                    await asyncio.sleep(0.1)
            finally:
                await conn.close()

        assert asyncio.run(state()) == "succeeded"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert postgres_pids(data_dir) == []


def test_a_server_orphaned_by_sigkill_is_adopted_and_then_stopped(data_dir: Path) -> None:
    port = free_port()
    proc = start_run(data_dir, port)
    wait_healthy(f"http://127.0.0.1:{port}", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    orphans = postgres_pids(data_dir)
    assert len(orphans) == 1, "the postmaster outlives a SIGKILLed owner"

    proc = start_run(data_dir, port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert postgres_pids(data_dir) == orphans, "the orphan is reused, not duplicated"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert postgres_pids(data_dir) == []


def test_a_stale_pidfile_naming_an_unrelated_process_is_not_trusted(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir)
    server.start()
    server.stop()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (data_dir / "pg" / "postmaster.pid").write_text(f"{bystander.pid}\n{data_dir / 'pg'}\n0\n5432\n\n\n\nready\n")
        assert server.running_pid() is None
        dsn = server.start()
        try:
            assert server.running_pid() not in (None, bystander.pid)
            assert dsn.startswith("postgresql://")
        finally:
            server.stop()
        assert bystander.poll() is None, "the unrelated process must never be signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_zombie_or_dead_pid_does_not_count_as_running(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir)
    server.start()
    server.stop()
    pidfile = data_dir / "pg" / "postmaster.pid"
    # A zombie whose name is "postgres": a copy of `true` that exits and is never reaped.
    fake = data_dir.parent / "postgres"
    shutil.copy("/bin/true", fake)
    zombie = subprocess.Popen([str(fake), str(data_dir / "pg")])
    deadline = time.monotonic() + 5
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pidfile.write_text(f"{zombie.pid}\n")
    assert server.running_pid() is None
    zombie.wait()
    pidfile.write_text("999999\n")  # a PID that does not exist
    assert server.running_pid() is None
    server.start()
    server.stop()


def test_a_second_owner_gets_a_clear_error(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir)
    first.start()
    try:
        with pytest.raises(EmbeddedDatabaseError, match="in use by pid"):
            EmbeddedPostgres(data_dir).start()
    finally:
        first.stop()


def test_sighup_stops_run_like_sigterm_embedded_server_included(data_dir: Path) -> None:
    """Closing the terminal sends SIGHUP: datesync shuts down gracefully and stops the server it started."""
    port = free_port()
    proc = start_run(data_dir, port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert len(postgres_pids(data_dir)) == 1
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert postgres_pids(data_dir) == [], "SIGHUP must stop the embedded server"
