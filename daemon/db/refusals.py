"""What a failed connection attempt means, in words a user can act on: a wrong URL that no retry can fix (a
missing database, an unknown role, a wrong password, SSL), or a server that is not there (yet), worth retrying.

Classified by exception class and SQLSTATE. Two cases need the text as well: SQLSTATE 28000 covers both an unknown
role and a pg_hba.conf refusal, and asyncpg reports a server without SSL as a plain ConnectionError."""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import ssl
from urllib.parse import parse_qs, urlsplit

import asyncpg

from datesync.daemon.db import dsn as dsns


def label(variable: str | None, dsn: str) -> str:
    """How a message names the URL: `DATABASE_URL=postgresql://user:***@host/db`, password masked."""
    return f"{variable or 'the embedded database'}={dsns.redact(dsn)}"


def refused(exc: BaseException, dsn: str) -> str | None:
    """The cause and hint for an error no retry can fix, or None when the server may yet answer."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    user = parts.username or query.get("user", [""])[0] or "postgres"
    database = parts.path.lstrip("/") or query.get("dbname", [""])[0] or user
    sslmode = query.get("sslmode", ["prefer"])[0]
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        name = database if re.fullmatch(r"[a-z_][a-z0-9_]*", database) else f'"{database}"'
        return (f'the server has no database "{database}"; create it (CREATE DATABASE {name}) or correct the '
                "database name at the end of the URL")
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return (f'the server refused the password of user "{user}" ({exc}); correct the password or the user name '
                "in the URL (percent-encode @ : / ? # in a password)")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        text = str(exc)
        if text.endswith("no encryption"):  # pg_hba.conf admits this user over SSL only
            hint = "use sslmode=require in the URL, not sslmode=disable" if sslmode == "disable" else \
                "use sslmode=require in the URL"
            return f"the server requires SSL for this connection ({text}); {hint}"
        if "pg_hba.conf" in text:
            return (f"the server's pg_hba.conf refuses this connection ({text}); correct the user or database name, "
                    "or ask the server's administrator to admit this host")
        if text == f'role "{user}" does not exist':
            return (f'the server has no role "{user}"; correct the user name (before the @ in the URL) or create '
                    "that role")
        return f'the server refused user "{user}" ({text}); correct the user name in the URL'
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return f"asyncpg cannot use this URL ({exc}); correct it"
    if type(exc) is ConnectionError and str(exc).endswith("rejected SSL upgrade"):
        return (f"the server does not support SSL, which sslmode={sslmode} in the URL demands; remove "
                f"sslmode={sslmode}, or enable SSL on the server")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the server's certificate does not verify ({exc.verify_message}); with sslmode=verify-ca or "
                "verify-full, name its CA bundle in sslrootcert=, or use sslmode=require")
    return None


def unreachable(exc: BaseException, dsn: str) -> str:
    """Why the server did not answer, for the retry lines and the final error."""
    parts = urlsplit(dsn)
    host = parts.hostname or parse_qs(parts.query).get("host", ["localhost"])[0]
    where = f"{host}:{parts.port or parse_qs(parts.query).get('port', ['5432'])[0]}"
    if isinstance(exc, ConnectionRefusedError) or (isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED):
        return f"connection refused: nothing listens on {where}"
    if isinstance(exc, socket.gaierror):
        return f"the host name {host} does not resolve ({exc.strerror})"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"no answer from {where} in time"
    if isinstance(exc, FileNotFoundError):  # a Unix socket that is not there
        return f"no server socket in {host} for port {where.rsplit(':', 1)[1]}"
    if isinstance(exc, asyncpg.PostgresError):
        return f"the server answered {type(exc).__name__}: {exc}"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{type(exc).__name__}: {text}"
