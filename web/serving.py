"""How uvicorn serves the app: timeouts for idle and slow connections, a connection cap, trusted proxies.

uvicorn (0.54, h11) arms its keep-alive timer only after an answer: a connection that never sends a byte, or
that trickles its request head a byte at a time (slowloris), stays open for ever, and enough of them use up the
process's file descriptors, and with them /healthz and the API. uvicorn has no setting for a header timeout, and
ASGI middleware cannot help: it runs only once a request has been parsed. `ReadDeadlineH11Protocol` adds the
missing deadline at the protocol level, as Go's http.Server ReadTimeout does.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import h11
import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from datesync.daemon.settings import WILDCARD_BINDS, Settings

log = structlog.get_logger("datesync.web")

# Connections beyond the event streams' own cap: the page, API calls and health checks while every stream is
# taken, kept-alive ones included (a burst of a few hundred concurrent POSTs must not see 503s).
CONNECTION_HEADROOM = 1000
# Descriptors the process needs besides its connections: the database pool, the listener, logs, the loop.
OTHER_FDS = 64


class ReadDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for receiving each request (head and body).

    The clock starts when the connection opens and when the first byte of a later request arrives, and stops
    once h11 has the whole request; trickling bytes does not restart it. So a long answer (an event stream) is
    never cut, and between requests only uvicorn's keep-alive timer counts: behind a proxy that reuses
    connections (Render's), a kept-alive connection must outlive the proxy's idle timeout, not this one.
    The class attribute is set per server by `uvicorn_config`.
    """

    read_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._receiving():
            self._disarm_read_deadline()
        elif self._read_deadline is None and not self.transport.is_closing():
            self._arm_read_deadline()  # a new request has begun

    def _receiving(self) -> bool:
        """Whether the client still owes us (part of) a request: nothing yet, or the head or body under way."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def _arm_read_deadline(self) -> None:
        self._disarm_read_deadline()
        self._read_deadline = self.loop.call_later(self.read_timeout, self._read_deadline_passed)

    def _disarm_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_deadline_passed(self) -> None:
        self._read_deadline = None
        if self._receiving() and not self.transport.is_closing():
            # Closing is the answer: a request that never arrived has nobody waiting for a 408. An app still
            # reading a slow body sees a disconnect.
            self.transport.close()


def connection_cap(settings: Settings) -> int:
    """DATESYNC_MAX_CONNECTIONS, by default room for every event stream plus ordinary requests."""
    if settings.max_connections is not None:
        return settings.max_connections
    return settings.sse_max_clients + CONNECTION_HEADROOM


def _raise_fd_limit(wanted: int) -> None:
    """Lift the soft descriptor limit towards `wanted` (Python does not, and the usual soft 1024 is below the
    default cap); warn when the hard limit is lower, since then the cap cannot be reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("web_fd_limit_low", fd_limit=soft, wanted=wanted,
                    hint="lower DATESYNC_MAX_CONNECTIONS or raise the limit (ulimit -n)")


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn.Config of the web server: bind, timeouts, connection cap and proxy trust from `settings`."""
    if not settings.allowed_hosts and settings.host in WILDCARD_BINDS and not settings.render_hostname:
        # Bound to every interface, we cannot know the names clients will use: only loopback ones are answered.
        log.warning("web_hosts_loopback_only", hosts=list(settings.served_hosts),
                    hint="set DATESYNC_ALLOWED_HOSTS to the public name(s) of this server")
    cap = connection_cap(settings)
    _raise_fd_limit(cap + OTHER_FDS)
    protocol = type("ReadDeadlineH11", (ReadDeadlineH11Protocol,), {"read_timeout": settings.read_timeout})
    trusted = list(settings.trusted_proxies)
    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_config": None, "lifespan": "on",
        "http": protocol,
        "ws": "none",  # no WebSocket routes; an upgrade would also leave the read deadline on the old protocol
        "timeout_keep_alive": settings.keepalive_timeout,
        # uvicorn answers 503 to a request that arrives while this many connections are open.
        "limit_concurrency": cap,
        # X-Forwarded-Proto/-For only from the proxies we were told about; with none, from nobody (uvicorn's
        # default would trust 127.0.0.1, which is every local client).
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
        **overrides,
    }
    return uvicorn.Config(app, **options)
