"""Connection strings: pooled and direct endpoints (any vendor's, Neon's derived), and parameters asyncpg cannot
take."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

log = structlog.get_logger("datesync.db")

# libpq parameters that asyncpg rejects as server settings ("unrecognized configuration parameter").
_UNSUPPORTED = ("channel_binding",)

# clean() runs on every (re)connect; the drop is worth saying once per process and parameter set.
_reported: set[tuple[str, ...]] = set()


def clean(dsn: str) -> str:
    """Drop the query parameters asyncpg cannot use (Neon adds channel_binding=require); keep the rest
    (sslmode=require included) as given."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k not in _UNSUPPORTED]
    if len(kept) == len(query):
        return dsn
    dropped = tuple(sorted({k for k, _ in query} - {k for k, _ in kept}))
    if dropped not in _reported:
        _reported.add(dropped)
        log.info("dsn_parameter_dropped", parameters=list(dropped), host=parts.hostname,
                 reason="asyncpg does not support it; TLS still follows sslmode")
    return urlunsplit(parts._replace(query=urlencode(kept, safe="/")))


# DSNs that lead through a transaction pooler, as decided once at start (daemon.runtime.database): every
# connection later opened to one of them, by any command or pool, gets the pooler-safe options.
_pooled: set[str] = set()


def mark_pooled(dsn: str) -> None:
    """Record that `dsn` leads through a transaction pooler (DATESYNC_POOLED)."""
    _pooled.add(dsn)


def is_pooled(dsn: str) -> bool:
    """True when `dsn` was recorded as a transaction pooler at start, or is Neon's `-pooler` host."""
    return dsn in _pooled or is_pooler(dsn)


def decide_pooled(mode: str, dsn: str, direct: str) -> bool:
    """Whether DATABASE_URL (`dsn`) is a transaction pooler under DATESYNC_POOLED=`mode`. With `auto`: when it
    differs from the direct URL (a self-hosted PgBouncer, Supabase's 6543, RDS Proxy, Neon's -pooler), since the
    only reason to give two URLs is a pooler in front of one of them."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    return is_pooler(dsn) or dsn != direct


def is_pooler(dsn: str) -> bool:
    """True for a Neon transaction-pooler endpoint (host `…-pooler.…`), which cannot LISTEN."""
    host = urlsplit(dsn).hostname or ""
    return "-pooler" in host.split(".")[0]


def direct_from(dsn: str) -> str:
    """The direct endpoint of a Neon pooled DSN: `-pooler` removed from the host's first label."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    first, _, rest = host.partition(".")
    if "-pooler" not in first:
        return dsn
    direct_host = first.replace("-pooler", "") + ("." + rest if rest else "")
    netloc = parts.netloc.replace(host, direct_host, 1)
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(dsn: str, name: str) -> str:
    """The same server and credentials, another database."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def redact(dsn: str) -> str:
    """The DSN with its password replaced, for logs and error messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
