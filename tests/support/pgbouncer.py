"""A real PgBouncer in transaction mode in front of the test server: the shape of a self-hosted PgBouncer,
Supabase's pooler on 6543 or RDS Proxy, where every transaction may land on another server connection.

Debian's `pgbouncer` package (`make test` installs it under CI=true). A missing binary fails the tests that need
it, with the install hint: a skip would hide the missing dependency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest

from tests.support.server import free_port

INSTALL_HINT = "apt-get install pgbouncer (`make test` installs it when CI=true)"


def binary() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if found is None:
        pytest.fail(f"pgbouncer is missing, and the pooled-endpoint tests need a real one: {INSTALL_HINT}")
    return found


@dataclasses.dataclass(frozen=True)
class PgBouncer:
    """A running PgBouncer; `pooled(dsn)` is the URL of `dsn`'s database through it."""

    host: str
    port: int
    user: str
    password: str | None
    log: Path

    def pooled(self, dsn: str) -> str:
        database = urlsplit(dsn).path.lstrip("/") or "postgres"
        auth = self.user + (f":{self.password}" if self.password else "")
        return urlunsplit(("postgresql", f"{auth}@{self.host}:{self.port}", f"/{database}", "", ""))


def _server_address(dsn: str) -> tuple[str, int, str, str | None]:
    """host (a socket folder or a name), port, user and password of a test-server DSN."""
    parts = urlsplit(dsn)
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    host = unquote(query.get("host") or parts.hostname or "127.0.0.1")
    port = int(query.get("port") or parts.port or 5432)
    user = unquote(parts.username or "postgres")
    return host, port, user, unquote(parts.password) if parts.password else None


def _run_as() -> str | None:
    """PgBouncer refuses to run as root: drop to the embedded server's user (it can reach that server's socket
    folder), else nobody."""
    if os.geteuid() != 0:
        return None
    for name in ("datesync-pg", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return None


@contextlib.contextmanager
def pgbouncer(server_dsn: str, pool_size: int = 4) -> Iterator[PgBouncer]:
    """Start PgBouncer (transaction mode, trust auth, every database of the server) on a free port; stop it
    after. A small server pool makes consecutive transactions of one client land on different server
    connections, as they do under load."""
    exe = binary()
    host, port, user, password = _server_address(server_dsn)
    listen = free_port()
    folder = Path(tempfile.mkdtemp(prefix="dspgb-"))
    users = folder / "users.txt"
    users.write_text(f'"{user}" "{password or ""}"\n')
    ini = folder / "pgbouncer.ini"
    log = folder / "pgbouncer.log"
    ini.write_text(f"""\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
server_lifetime = 3600
server_check_delay = 0
logfile = {log}
pidfile = {folder / "pgbouncer.pid"}
""")
    run_as = _run_as()
    if run_as is not None:
        record = pwd.getpwnam(run_as)
        for path in (folder, users, ini):
            os.chown(path, record.pw_uid, record.pw_gid)
    command = [exe, *(["-u", run_as] if run_as else []), str(ini)]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", listen), timeout=0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace") if log.exists() else ""
                pytest.fail(f"pgbouncer did not start (exit {proc.poll()}): {text[-2000:]}")
            time.sleep(0.05)
        yield PgBouncer("127.0.0.1", listen, user, password, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
