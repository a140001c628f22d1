"""Start-up errors as a user meets them: a wrong DATABASE_URL or DATABASE_DIRECT_URL, a taken PORT, a bad LOG_LEVEL.
Each ends a real `datesync` process with one line on stderr naming the variable, no traceback, and exit 2.

The database cases run against a server of their own: an embedded PostgreSQL that also listens on 127.0.0.1,
with a role that has a SCRAM password and a role that pg_hba.conf refuses without encryption (the embedded build
has no SSL, so a client asking for SSL meets a server without it)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import asyncpg
import pytest

from datesync.daemon.embedded import DATABASE, EmbeddedPostgres
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("datesync")
PASSWORD = "right-horse-battery"
NEON_POOLER = "ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech"


class TcpServer(EmbeddedPostgres):
    """The embedded server, listening on 127.0.0.1:`port` too, with TLS and password authentication."""

    def __init__(self, data_dir: Path, port: int) -> None:
        super().__init__(data_dir)
        self.port = port

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def _server_options(self) -> str:
        return f"-c listen_addresses='127.0.0.1' -k {self.socket_dir} -p {self.port}"

    def _initdb(self) -> None:
        super()._initdb()
        # `tls_only` is refused without encryption, as a server that requires SSL refuses it (this build of
        # PostgreSQL has no SSL itself, so `hostnossl ... reject` is how it can say so).
        (self.pgdata / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostnossl all tls_only 127.0.0.1/32 reject\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")


@pytest.fixture(scope="module")
def server() -> Iterator[TcpServer]:
    folder = Path(tempfile.mkdtemp(prefix="dsstartup-pg-"))
    pg = TcpServer(folder / "data", free_port())

    async def roles() -> None:
        conn = await asyncpg.connect(pg.dsn())
        try:
            for role in ("app", "tls_only"):
                await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
            await conn.execute(f"GRANT ALL ON DATABASE {DATABASE} TO app, tls_only")
        finally:
            await conn.close()

    try:  # a failed start leaves a folder (and maybe a server) to remove too
        pg.start()
        asyncio.run(roles())
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """An embedded database folder; any server a test left running there is stopped."""
    parent = Path(tempfile.mkdtemp(prefix="dsstartup-"))
    yield parent / "data"
    leftover = EmbeddedPostgres(parent / "data")
    if leftover.running_pid() is not None:
        leftover._take_lock = lambda: None  # type: ignore[method-assign]
        leftover.stop()
    shutil.rmtree(parent, ignore_errors=True)


@dataclasses.dataclass
class Ran:
    code: int
    stderr: str
    seconds: float


def datesync(*args: str, env: Mapping[str, str], timeout: float = 60) -> Ran:
    """The installed `datesync` command, as a user at a terminal runs it (console log format, 80 columns)."""
    full = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_DIRECT_URL")}
    full.update({"LOG_FORMAT": "console", "COLUMNS": "80", "PORT": str(free_port()), **env})
    started = time.monotonic()
    proc = subprocess.run([str(CLI), *args], env=full, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    return Ran(proc.returncode, proc.stderr, time.monotonic() - started)


def one_line(ran: Ran) -> str:
    """The single line the failed command printed, after checking there is nothing else."""
    assert "Traceback" not in ran.stderr, ran.stderr
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{ran.stderr}"
    assert ran.code == 2, (ran.code, ran.stderr)
    return lines[0]


def tcp(server: TcpServer, user: str = "app", password: str = PASSWORD, database: str = DATABASE,
        query: str = "") -> str:
    return f"postgresql://{user}:{password}@127.0.0.1:{server.port}/{database}{query}"


def shown(url: str) -> str:
    """`url` as datesync shows it: the password masked."""
    return url.replace(f":{PASSWORD}@", ":***@").replace(":wrong-password@", ":***@")


@pytest.mark.parametrize("command", ["run", "daemon", "web", "migrate", "status"])
def test_a_missing_database(server: TcpServer, command: str) -> None:
    url = tcp(server, database="nosuchdb")
    line = one_line(datesync(command, env={"DATABASE_URL": url}))
    assert line == (f'error: DATABASE_URL={shown(url)}: the server has no database "nosuchdb"; create it '
                    "(CREATE DATABASE nosuchdb) or correct the database name at the end of the URL")
    assert PASSWORD not in line


def test_a_refused_url_is_one_json_line_when_logs_are_json(server: TcpServer) -> None:
    url = tcp(server, database="nosuchdb")
    line = json.loads(one_line(datesync("run", env={"DATABASE_URL": url, "LOG_FORMAT": "json"})))
    assert (line["event"], line["level"]) == ("command_failed", "error")
    assert line["error"].startswith(f'DATABASE_URL={shown(url)}: the server has no database "nosuchdb"')


def test_an_unknown_role(server: TcpServer) -> None:
    url = f"postgresql://ghost@/{DATABASE}?host={server.socket_dir}&port={server.port}"
    line = one_line(datesync("run", env={"DATABASE_URL": url}))
    assert line == (f'error: DATABASE_URL={url}: the server has no role "ghost"; correct the user name '
                    "(before the @ in the URL) or create that role")


def test_a_wrong_password(server: TcpServer) -> None:
    url = tcp(server, password="wrong-password")
    line = one_line(datesync("run", env={"DATABASE_URL": url}))
    assert line == (f'error: DATABASE_URL={shown(url)}: the server refused the password of user "app" '
                    '(password authentication failed for user "app"); correct the password or the user name '
                    "in the URL (percent-encode @ : / ? # in a password)")
    assert "wrong-password" not in line


def test_a_server_that_requires_ssl(server: TcpServer) -> None:
    url = tcp(server, user="tls_only", query="?sslmode=disable")
    line = one_line(datesync("run", env={"DATABASE_URL": url}))
    assert line == (
        f"error: DATABASE_URL={shown(url)}: the server requires SSL for this connection (pg_hba.conf rejects "
        'connection for host "127.0.0.1", user "tls_only", database "datesync", no encryption); use '
        "sslmode=require in the URL, not sslmode=disable")


def test_sslmode_require_against_a_server_without_ssl(server: TcpServer) -> None:
    url = tcp(server, query="?sslmode=require")
    line = one_line(datesync("run", env={"DATABASE_URL": url}))
    assert line == (f"error: DATABASE_URL={shown(url)}: the server does not support SSL, which sslmode=require "
                    "in the URL demands; remove sslmode=require, or enable SSL on the server")


def test_a_misspelt_scheme(server: TcpServer) -> None:
    url = tcp(server).replace("postgresql://", "postgressql://")
    ran = datesync("run", env={"DATABASE_URL": url}, timeout=20)
    line = one_line(ran)
    assert line == (f"error: DATABASE_URL={shown(url)}: the scheme must be postgresql:// or postgres://, "
                    "not postgressql://; correct the start of the URL")
    assert ran.seconds < 10, "a misspelt scheme is not worth retrying"


def test_a_wrong_direct_url_is_named_as_such(server: TcpServer) -> None:
    direct = tcp(server, database="nosuchdb")
    line = one_line(datesync("migrate", env={"DATABASE_URL": tcp(server), "DATABASE_DIRECT_URL": direct}))
    assert line.startswith(f'error: DATABASE_DIRECT_URL={shown(direct)}: the server has no database "nosuchdb"')


def test_a_wrong_url_beside_a_right_direct_url_is_found_before_migrating(server: TcpServer) -> None:
    url = tcp(server, database="nosuchdb")
    line = one_line(datesync("run", env={"DATABASE_URL": url, "DATABASE_DIRECT_URL": tcp(server)}))
    assert line.startswith(f'error: DATABASE_URL={shown(url)}: the server has no database "nosuchdb"')


def test_a_pooler_as_the_direct_url() -> None:
    """(A -pooler DATABASE_URL alone is fine: its direct endpoint is derived.) No network is needed: refused before
    connecting."""
    url = f"postgresql://app:{PASSWORD}@{NEON_POOLER}/neondb?sslmode=require"
    line = one_line(datesync("run", env={"DATABASE_URL": url, "DATABASE_DIRECT_URL": url}, timeout=20))
    assert line == (
        f"error: DATABASE_DIRECT_URL points at a Neon -pooler endpoint ({NEON_POOLER}), which runs PgBouncer in "
        "transaction mode and cannot LISTEN or hold the migrations' lock; set DATABASE_DIRECT_URL to the direct "
        "endpoint (the same URL without -pooler in the host), or leave it unset to derive it from DATABASE_URL")


def test_a_port_typo_is_retried_until_the_startup_timeout_then_one_line() -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/datesync"
    ran = datesync("daemon", env={"DATABASE_URL": url, "DATESYNC_STARTUP_TIMEOUT": "12"}, timeout=40)
    assert "Traceback" not in ran.stderr and ran.code == 2, ran.stderr
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert 12 <= ran.seconds < 30, ran.seconds
    waits = [line for line in lines[:-1] if "database_unreachable" in line or "database_still_unreachable" in line]
    assert len(waits) == len(lines) - 1 and len(waits) >= 2, ran.stderr  # a line every few seconds, nothing else
    assert all("DATABASE_URL" in line and f"127.0.0.1:{port}" in line for line in waits), ran.stderr
    assert lines[-1].startswith(f"error: DATABASE_URL={shown(url)}: cannot reach the database after "), lines[-1]
    assert lines[-1].endswith(
        f"in 12 s (connection refused: nothing listens on 127.0.0.1:{port}); check the host and port and that the "
        "server is running, or give it longer with DATESYNC_STARTUP_TIMEOUT"), lines[-1]
    assert PASSWORD not in ran.stderr


@pytest.mark.parametrize("command", ["run", "web"])
def test_a_taken_port_is_one_line_before_any_database_work(data_dir: Path, command: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(datesync(command, env={"PORT": str(port), "DATESYNC_DATA_DIR": str(data_dir)}))
    assert line == f"error: PORT={port}: 127.0.0.1:{port} is already in use; set PORT to a free port"
    assert not (data_dir / "pg").exists(), "the embedded server was set up before the port was checked"


def test_a_bad_log_level(server: TcpServer) -> None:
    line = one_line(datesync("migrate", env={"DATABASE_URL": server.dsn(), "LOG_LEVEL": "verbose"}))
    assert line == "error: LOG_LEVEL='verbose' is invalid: expected debug, info, warning or error"


def test_sources_waiting_for_each_other_in_a_cycle(server: TcpServer) -> None:
    line = one_line(datesync("daemon", env={"DATABASE_URL": server.dsn(), "DATESYNC_SOURCES": "orders=noop,rollup=noop",
                                            "DATESYNC_ROLLUP_AFTER": "orders", "DATESYNC_ORDERS_AFTER": "rollup"}))
    assert line == ("error: DATESYNC_ORDERS_AFTER is invalid: the sources wait for each other in a cycle "
                    "(orders → rollup → orders: each waits for the next)")


def test_a_right_url_still_starts(server: TcpServer) -> None:
    """The classification lets a good URL through: migrate succeeds and says so on stdout."""
    ran = datesync("migrate", env={"DATABASE_URL": tcp(server)})
    assert ran.code == 0 and "Traceback" not in ran.stderr, ran.stderr


def signal_while_waiting(command: str, sig: signal.Signals) -> tuple[int, float, str]:
    """Start `command` against a port nothing listens on, signal it once it says it waits, and return its exit
    code, the seconds it took to exit and its log."""
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/datesync"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_DIRECT_URL")}
    env.update({"DATABASE_URL": url, "LOG_FORMAT": "console", "PORT": str(free_port())})
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([str(CLI), command], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while "database_unreachable_retrying" not in (log.seek(0) or log.read()):
                assert proc.poll() is None and time.monotonic() < deadline, log.read()
                time.sleep(0.1)
            signalled = time.monotonic()
            proc.send_signal(sig)
            code = proc.wait(20)
            took = time.monotonic() - signalled
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        return code, took, log.read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_waiting_for_the_database_stops_at_once(sig: signal.Signals) -> None:
    """`run`: the wait for an unreachable database (a minute by default) is cancelled by SIGTERM or SIGHUP, not
    waited out, and the process exits 0 as after any requested stop."""
    code, took, output = signal_while_waiting("run", sig)
    assert code == 0 and took < 5, (code, took, output)
    assert "Traceback" not in output and "stopped_during_startup" in output, output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_a_short_command_through_its_cleanup(sig: signal.Signals) -> None:
    """`migrate` (like status, watch, batch --follow): SIGTERM or SIGHUP cancels the command, so its clean-up runs
    (an embedded server it started is stopped), and it exits 128 + the signal's number, quietly."""
    code, took, output = signal_while_waiting("migrate", sig)
    assert code == 128 + sig and took < 5, (code, took, output)
    assert "Traceback" not in output, output
