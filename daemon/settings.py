"""One frozen, validated settings object built from the environment (DESIGN.md's contract table)."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from datetime import time
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from datesync.daemon import dependencies
from datesync.daemon.db.dsn import redact
from datesync.daemon.errors import SettingsError
from datesync.daemon.sources import SourceSpec, configured, parse_sources

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon and web need to know, read once at start."""

    database_url: str | None = None
    database_direct_url: str | None = None
    # Whether DATABASE_URL leads through a transaction pooler: "auto" (when it differs from DATABASE_DIRECT_URL,
    # or is Neon's -pooler host), "on" or "off".
    pooled: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    handler: str = "demo"
    concurrency: int = 4
    max_attempts: int = 3
    task_timeout: float = 900.0
    retry_delay: float = 10.0
    lease: float = 60.0
    max_range_days: int = 3660
    timezone: str = "UTC"
    schedule: time | None = None
    schedule_lookback: int = 0
    sources: tuple[SourceSpec, ...] = ()
    api_token: str | None = None
    cors_origins: tuple[str, ...] = ()
    poll_interval: float = 30.0
    keepawake: bool = False
    keepawake_url: str | None = None  # our public address (DATESYNC_KEEPAWAKE_URL, else RENDER_EXTERNAL_URL)
    data_dir: Path = Path(".datesync")
    log_format: str = "console"
    log_level: str = "info"
    startup_timeout: float = 60.0  # seconds start-up retries an unreachable database before giving up
    shutdown_grace: float = 20.0  # seconds running dates get on SIGTERM before they are handed back
    # The web's edges.
    allowed_hosts: tuple[str, ...] = ()  # DATESYNC_ALLOWED_HOSTS, on top of our own names (`served_hosts`)
    render_hostname: str | None = None  # RENDER_EXTERNAL_HOSTNAME: Render's public name for this service
    trusted_proxies: tuple[str, ...] = ()  # addresses whose X-Forwarded-Proto/-For are believed; "*" for any
    keepalive_timeout: int = 5  # seconds an idle kept-alive connection stays open after an answer
    read_timeout: float = 10.0  # seconds a client has to send a whole request from connecting or its first byte
    max_connections: int | None = None  # None: DATESYNC_SSE_MAX_CLIENTS plus room for ordinary requests
    sse_max_clients: int = 1000  # event-stream clients per web process; more get 503
    retention_days: int = 30  # finished batches older than this lose their tasks and events; 0 keeps everything
    # DATESYNC_<NAME>_AFTER of each source that has one: the dates of other sources its dates wait for.
    after: Mapping[str, tuple[dependencies.Upstream, ...]] = dataclasses.field(default_factory=dict)

    @property
    def lets_database_sleep(self) -> bool:
        """A poll interval of 5 minutes or more says: let an idle database suspend (Neon's scale to zero)."""
        return self.poll_interval >= 300

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def all_sources(self) -> dict[str, SourceSpec]:
        """Every source this process serves: `default` (DATESYNC_HANDLER) and those of DATESYNC_SOURCES."""
        return configured(self.handler, self.sources)

    @property
    def pool_size(self) -> int:
        """Connections for ordinary queries: one per concurrent date plus two for the loop and web."""
        return self.concurrency + 2

    @property
    def served_hosts(self) -> tuple[str, ...]:
        """Host names the web answers: the loopback names, the bound address unless it is a wildcard, Render's
        public name, and DATESYNC_ALLOWED_HOSTS. All but the last are our own names, which a DNS-rebinding page
        cannot make a browser send, so a list adds to them rather than replacing them (the CLI's --follow asks
        127.0.0.1; Render's health check sends the onrender.com name)."""
        hosts = list(LOOPBACK_HOSTS)
        if self.host not in WILDCARD_BINDS:
            with contextlib.suppress(ValueError):  # a bind address that is no name adds nothing
                hosts.append(_host_pattern(self.host))
        if self.render_hostname:
            hosts.append(self.render_hostname)
        hosts += self.allowed_hosts
        return tuple(dict.fromkeys(hosts))

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; raise SettingsError naming the bad variable."""
        env = os.environ if env is None else env
        r = _Reader(env)
        settings = cls(
            database_url=_database_url(r, "DATABASE_URL"),
            database_direct_url=_database_url(r, "DATABASE_DIRECT_URL"),
            pooled=r.parse("DATESYNC_POOLED", "auto", _pooled),
            host=r.text("HOST") or "127.0.0.1",
            port=r.parse("PORT", 8000, _int_between(1, 65535)),
            handler=r.text("DATESYNC_HANDLER") or "demo",
            concurrency=r.parse("DATESYNC_CONCURRENCY", 4, _int_between(1, 1000)),
            max_attempts=r.parse("DATESYNC_MAX_ATTEMPTS", 3, _int_between(1, 100)),
            task_timeout=r.parse("DATESYNC_TASK_TIMEOUT", 900.0, _positive_float),
            retry_delay=r.parse("DATESYNC_RETRY_DELAY", 10.0, _non_negative_float),
            lease=r.parse("DATESYNC_LEASE", 60.0, _lease),
            max_range_days=r.parse("DATESYNC_MAX_RANGE_DAYS", 3660, _int_between(1, 100_000)),
            timezone=r.parse("DATESYNC_TIMEZONE", "UTC", _timezone),
            schedule=r.parse("DATESYNC_SCHEDULE", None, _hh_mm),
            schedule_lookback=r.parse("DATESYNC_SCHEDULE_LOOKBACK", 0, _int_between(0, 3660)),
            sources=r.parse("DATESYNC_SOURCES", (), parse_sources),
            api_token=r.text("DATESYNC_API_TOKEN"),
            cors_origins=tuple(o.strip() for o in (r.text("DATESYNC_CORS_ORIGINS") or "").split(",") if o.strip()),
            poll_interval=r.parse("DATESYNC_POLL_INTERVAL", 30.0, _positive_float),
            keepawake=r.parse("DATESYNC_KEEPAWAKE", False, _bool),
            keepawake_url=r.text("DATESYNC_KEEPAWAKE_URL") or r.text("RENDER_EXTERNAL_URL"),
            data_dir=Path(r.text("DATESYNC_DATA_DIR") or ".datesync"),
            log_format=r.parse("LOG_FORMAT", "console" if sys.stderr.isatty() else "json", _log_format),
            log_level=r.parse("LOG_LEVEL", "info", _log_level),
            startup_timeout=r.parse("DATESYNC_STARTUP_TIMEOUT", 60.0, _positive_float),
            shutdown_grace=r.parse("DATESYNC_SHUTDOWN_GRACE", 20.0, _non_negative_float),
            allowed_hosts=r.parse("DATESYNC_ALLOWED_HOSTS", (), _hosts),
            render_hostname=r.parse("RENDER_EXTERNAL_HOSTNAME", None, _host_pattern),
            trusted_proxies=r.parse("DATESYNC_TRUSTED_PROXIES", (), _proxies),
            keepalive_timeout=r.parse("DATESYNC_KEEPALIVE_TIMEOUT", 5, _int_between(1, 3600)),
            read_timeout=r.parse("DATESYNC_READ_TIMEOUT", 10.0, _positive_float),
            max_connections=r.parse("DATESYNC_MAX_CONNECTIONS", None, _int_between(2, 1_000_000)),
            retention_days=r.parse("DATESYNC_RETENTION", 30, _retention),
            sse_max_clients=r.parse("DATESYNC_SSE_MAX_CLIENTS", 1000, _int_between(1, 100_000)),
        )
        # Event streams hold their connection for hours: a cap at or below theirs would turn them all away.
        if settings.max_connections is not None and settings.max_connections <= settings.sse_max_clients:
            raise SettingsError(
                f"DATESYNC_MAX_CONNECTIONS={settings.max_connections} is invalid: it must be above "
                f"DATESYNC_SSE_MAX_CLIENTS={settings.sse_max_clients}, or the event streams take every connection"
            )
        try:
            after = dependencies.read_graph(env, list(settings.all_sources), settings.max_range_days)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        settings = settings.replace(after=after)
        if settings.schedule_lookback >= settings.max_range_days:
            raise SettingsError(
                f"DATESYNC_SCHEDULE_LOOKBACK={settings.schedule_lookback} is invalid: the look-back and yesterday "
                f"must fit in one batch of at most DATESYNC_MAX_RANGE_DAYS={settings.max_range_days} days"
            )
        return settings


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def parse(self, name: str, default: T, convert: Callable[[str], T]) -> T:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            return convert(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}={raw!r} is invalid: {exc}") from None


def _database_url(r: _Reader, name: str) -> str | None:
    """A PostgreSQL URL whose scheme and port asyncpg can use. Checked here, not at connect time: a misspelt scheme
    would otherwise be retried as an unreachable server. The message masks the password, unlike other settings'."""
    raw = r.text(name)
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("postgresql", "postgres"):
        raise SettingsError(f"{name}={redact(raw)}: the scheme must be postgresql:// or postgres://, not "
                            f"{parts.scheme or '(none)'}://; correct the start of the URL")
    try:
        parts.port  # noqa: B018 - parsing is the check
    except ValueError:
        raise SettingsError(f"{name}={redact(raw)}: the port after the host is not a number from 0 to 65535; "
                            "correct it (or leave it out for 5432)") from None
    return raw


def _number(raw: str, convert: Callable[[str], T], expected: str) -> T:
    """`convert(raw)`, its ValueError replaced by one that says what was expected (not Python's wording)."""
    try:
        return convert(raw)
    except ValueError:
        raise ValueError(expected) from None


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        value = _number(raw, int, "expected a whole number")
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return convert


def _retention(raw: str) -> int:
    value = _number(raw, int, "expected a whole number of days (0 keeps everything)")
    if not 0 <= value <= 36_600:
        raise ValueError("expected a whole number of days from 0 (keep everything) to 36600")
    return value


def _float(raw: str) -> float:
    value = _number(raw, float, "expected a number of seconds")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number of seconds")
    return value


def _positive_float(raw: str) -> float:
    value = _float(raw)
    if value <= 0:
        raise ValueError("expected a number of seconds above 0")
    return value


def _non_negative_float(raw: str) -> float:
    value = _float(raw)
    if value < 0:
        raise ValueError("expected a number of seconds, 0 or more")
    return value


def _lease(raw: str) -> float:
    value = _float(raw)
    # Heartbeats run at a third of the lease; below 1 s they would hammer the database.
    if value < 1:
        raise ValueError("expected at least 1 second")
    return value


def _timezone(raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("expected an IANA time zone such as UTC or Asia/Shanghai") from None
    return raw


def _hh_mm(raw: str) -> time:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", raw)
    if not match:
        raise ValueError("expected HH:MM, 24-hour, such as 02:30")
    return time(int(match.group(1)), int(match.group(2)))


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1 or 0")


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", "[::]", ""})
_HOST_NAME = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _host_pattern(raw: str) -> str:
    """One entry of DATESYNC_ALLOWED_HOSTS: a name or address (IPv6 in brackets or not), `.suffix`, or `*`."""
    value = raw.strip().lower().rstrip(".")
    if value == "*":
        return value
    body = value[1:] if value.startswith(".") else value
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(body.strip("[]")).version == 6 and not value.startswith("."):
            return f"[{body.strip('[]')}]"
    if not _HOST_NAME.fullmatch(body):
        raise ValueError(f"{raw.strip()!r} is not a host name, an address, .suffix or * (no scheme, no port)")
    return value


def _hosts(raw: str) -> tuple[str, ...]:
    hosts = tuple(_host_pattern(item) for item in raw.split(",") if item.strip())
    if not hosts:
        raise ValueError("expected a comma list of host names")
    return hosts


def _proxies(raw: str) -> tuple[str, ...]:
    """Addresses or networks (CIDR) of trusted proxies, or `*`: the forms uvicorn's forwarded_allow_ips takes."""
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    if "*" in items:
        return ("*",)  # uvicorn trusts everyone only for exactly "*"; in a longer list it would be a literal
    for item in items:
        if item != "*":
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address, a network such as 10.0.0.0/8, or *") from None
    return items


def _log_level(raw: str) -> str:
    lowered = raw.lower()
    if lowered not in ("debug", "info", "warning", "error"):
        raise ValueError("expected debug, info, warning or error")
    return lowered


def _pooled(raw: str) -> str:
    lowered = raw.lower()
    if lowered not in ("auto", "on", "off"):
        raise ValueError("expected auto, on or off")
    return lowered


def _log_format(raw: str) -> str:
    if raw not in ("console", "json"):
        raise ValueError("expected console or json")
    return raw
