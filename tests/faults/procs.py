"""Real datesync processes for the fault scenarios: daemons (alone or as a fleet that is killed and respawned),
the web process, and the CLI under a skewed or sped-up clock.

Every process runs in its own session (a signal reaches only it) with its log in a temporary file, and is always
waited for, so no zombie or ResourceWarning outlives a scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# libfaketime (Debian's `faketime` package), preloaded into the process itself: the `faketime` wrapper forks,
# which would hide the daemon's pid from us.
LIBFAKETIME = None if os.environ.get("FAULTS_NO_LIBFAKETIME") else next(
    iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)

# Fast retries and polls, short leases: what the scenarios expect unless they say otherwise.
DAEMON_ENV = {
    "LOG_FORMAT": "json",
    "DATESYNC_RETRY_DELAY": "0.05",
    "DATESYNC_POLL_INTERVAL": "2",
    "DATESYNC_LEASE": "3",
    "DATESYNC_SHUTDOWN_GRACE": "2",
}


@dataclasses.dataclass
class Proc:
    """One child process and its log file."""

    popen: subprocess.Popen[bytes]
    log: Path
    role: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    async def wait(self, timeout: float) -> int:
        """Wait for the exit without blocking the loop; SIGKILL and raise if it takes longer than `timeout`."""
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                self.signal(signal.SIGKILL)
                self.popen.wait(10)
                raise AssertionError(f"{self.role} {self.pid} did not exit within {timeout}s:\n"
                                     f"{self.log_text()[-3000:]}")
            await asyncio.sleep(0.02)
        return self.popen.returncode

    async def kill(self) -> datetime.datetime:
        """SIGKILL; returns the moment it was seen dead (every run it had ended by then)."""
        self.signal(signal.SIGKILL)
        await self.wait(10)
        return now()

    async def wait_log(self, needle: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log_text():
            if not self.alive():
                raise AssertionError(f"{self.role} {self.pid} exited ({self.popen.returncode}) before "
                                     f"logging {needle!r}:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.role} {self.pid} did not log {needle!r} within {timeout}s:\n"
                                     f"{self.log_text()[-3000:]}")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        """Kill if still running, reap, and remove the log."""
        if self.popen.poll() is None:
            self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        with contextlib.suppress(OSError):
            self.log.unlink()


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def spawn(args: Sequence[str], env: Mapping[str, str], role: str, prefix: Sequence[str] = ()) -> Proc:
    """Start `python -m <args>` from the repository root, with `prefix` (e.g. faketime) in front."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    log = tempfile.NamedTemporaryFile(prefix=f"datesync-{role}-", suffix=".log", delete=False)  # noqa: SIM115
    with log:
        popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", *args], env=full, cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Proc(popen, Path(log.name), role)


def spawn_daemon(dsn: str, env: Mapping[str, str] | None = None, prefix: Sequence[str] = (),
                 entry: str = "datesync.cli") -> Proc:
    """A `datesync daemon` process against `dsn`."""
    # Both URLs: an inherited DATABASE_DIRECT_URL would make it LISTEN on (and migrate) another database.
    return spawn([entry, "daemon"], {**DAEMON_ENV, "DATABASE_URL": dsn, "DATABASE_DIRECT_URL": dsn, **(env or {})},
                 "daemon", prefix)


def spawn_web(dsn: str, port: int, env: Mapping[str, str] | None = None) -> Proc:
    """A `datesync web` process against `dsn` on 127.0.0.1:`port`."""
    full = {"LOG_FORMAT": "json", "DATABASE_URL": dsn, "DATABASE_DIRECT_URL": dsn, "PORT": str(port),
            "HOST": "127.0.0.1", **(env or {})}
    return spawn(["datesync.cli", "web"], full, "web")


def skewed_prefix(offset_s: float) -> tuple[list[str], dict[str, str], str]:
    """How to run a process whose wall clock is `offset_s` seconds off: libfaketime when installed (every clock
    call of the process, C code included), else our own shim (Python's time module). Returns (command prefix,
    extra env, entry module)."""
    if LIBFAKETIME is not None:
        sign = "+" if offset_s >= 0 else "-"
        return [], {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"{sign}{abs(offset_s):g}s"}, "datesync.cli"
    return [], {"FAULTS_CLOCK_OFFSET": str(offset_s)}, "tests.faults.clockshim"


class Fleet:
    """Daemons against one database that are killed and respawned; remembers when each died."""

    def __init__(self, dsn: str, env: Mapping[str, str] | None = None) -> None:
        self.dsn = dsn
        self.env = dict(env or {})
        self.procs: list[Proc] = []
        self.deaths: dict[int, datetime.datetime] = {}  # pid -> when it was seen dead after a SIGKILL
        self.kills = 0
        self.sigterms = 0

    def spawn(self, env: Mapping[str, str] | None = None, prefix: Sequence[str] = (),
              entry: str = "datesync.cli") -> Proc:
        proc = spawn_daemon(self.dsn, {**self.env, **(env or {})}, prefix, entry)
        self.procs.append(proc)
        return proc

    def alive(self) -> list[Proc]:
        return [p for p in self.procs if p.alive()]

    async def sigkill(self, proc: Proc) -> None:
        self.deaths[proc.pid] = await proc.kill()
        self.kills += 1

    async def sigterm(self, proc: Proc, timeout: float = 30.0) -> int:
        proc.signal(signal.SIGTERM)
        code = await proc.wait(timeout)
        self.sigterms += 1
        return code

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every live daemon and wait for all."""
        live = self.alive()
        for proc in live:
            proc.signal(signal.SIGTERM)
        for proc in live:
            await proc.wait(timeout)

    def close(self) -> None:
        for proc in self.procs:
            proc.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.role} {p.pid} ---\n{p.log_text()[-4000:]}" for p in self.procs)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
