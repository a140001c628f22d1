"""structlog set-up: JSON lines or a readable console, with stdlib loggers (uvicorn, asyncpg) routed through
the same pipeline, and secrets scrubbed from every event: its message, its fields and its traceback.

Two nets catch a secret. Known values (the API token, the database passwords, the http handler's header
values, any variable named like a password or token) are read from the environment at start and replaced
wherever they appear. Patterns catch the rest: a password in a URL, `password=…`, `Bearer …`, a key in a query
string, a value under a secret-looking key, `Basic` credentials.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog

REDACTED = "***"
_SECRET_KEYS = re.compile(r"(password|passwd|token|secret|authorization|api[_-]?key|headers|cookie)", re.IGNORECASE)
# Environment variables whose whole value is a secret.
_SECRET_VARS = re.compile(r"(^|_|PG)(PASSWORD|PASSWD|TOKEN|SECRET|API_?KEY)$")
_HEADER_VARS = re.compile(r"^DATESYNC_(\w+_)?HTTP_HEADERS$")
_MIN_LITERAL = 4  # shorter values would garble every line they occur in; the patterns still catch them


def _basic(match: re.Match[str]) -> str:
    """Scrub `Basic <token>` when the token is base64 of `user:password`; "basic settings" is prose."""
    token = match.group(2)
    try:
        decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return match.group(0)
    return f"{match.group(1)}{REDACTED}" if b":" in decoded else match.group(0)


_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # scheme://user:password@host (any scheme: postgresql, https, redis)
    # (Every repeat is bounded: an unbounded one backtracked quadratically over a long run of letters, and a
    # 200 KB handler message took 20 s to scrub.)
    (re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^:/@\s]{0,256}:)[^@\s]{1,256}@"), rf"\1{REDACTED}@"),
    # libpq key/value strings and query strings: password=…, ?token=…, &api_key=…
    (re.compile(r"(\b(?:password|passwd|pwd|token|access_token|api[_-]?key|apikey|secret|sig|signature)\s*=\s*)"
                r"('[^']*'|[^\s&#,;)'\"]+)", re.IGNORECASE), rf"\1{REDACTED}"),
    (re.compile(r"([?&]key=)[^\s&#]+", re.IGNORECASE), rf"\1{REDACTED}"),
    # Authorization: Bearer …
    (re.compile(r"(\bbearer\s+)[A-Za-z0-9._~+/=-]{4,}", re.IGNORECASE), rf"\1{REDACTED}"),
    # Authorization: Basic <base64 of user:password>, as an upstream echoing our request headers shows it
    (re.compile(r"(\bbasic\s+)([A-Za-z0-9+/]{4,}={0,2})", re.IGNORECASE), _basic),
    # a repr'd or JSON mapping: 'password': '…', "Authorization": "…"
    (re.compile(r"""((['"])(?:[\w-]{0,64}(?:password|token|secret|authorization|api[_-]?key|cookie)[\w-]{0,64})\2\s*:\s*)"""
                r"""(['"])(?:(?!\3).)*\3""", re.IGNORECASE), rf"\1'{REDACTED}'"),
)



_known: set[str] = set()
_known_re: re.Pattern[str] | None = None


def add_secrets(values: Iterable[str | None]) -> None:
    """Scrub these exact values (and their URL-decoded forms) from every log line from now on."""
    global _known_re
    for value in values:
        if not value:
            continue
        for form in {value, unquote(value)}:
            if len(form) >= _MIN_LITERAL:
                _known.add(form)
    if _known:
        # Longest first, so that a secret containing another is replaced whole.
        _known_re = re.compile("|".join(re.escape(s) for s in sorted(_known, key=len, reverse=True)))


def secrets_in_env(env: Mapping[str, str]) -> list[str]:
    """The secret values a datesync process may be given: URL passwords, tokens, the http handler's headers."""
    found: list[str] = []
    for name, value in env.items():
        if not value:
            continue
        if _SECRET_VARS.search(name.upper()):
            found.append(value)
        if _HEADER_VARS.match(name.upper()):
            found.extend(_header_values(value))
        if "://" in value:
            found.extend(_url_passwords(value))
    return found


def _header_values(raw: str) -> list[str]:
    try:
        headers = json.loads(raw)
    except ValueError:
        return [raw]  # unreadable: the handler refuses it, but never log it
    if not isinstance(headers, dict):
        return [raw]
    values = [str(v) for v in headers.values()]
    # "Bearer abc…": the credential alone too, should it be logged apart from its scheme.
    return values + [v.split(None, 1)[1] for v in values if len(v.split(None, 1)) == 2]


def _url_passwords(value: str) -> list[str]:
    found = []
    for word in value.split():
        try:
            password = urlsplit(word).password
        except ValueError:
            continue
        if password:
            found.append(password)
    return found


# What every pattern above needs somewhere in a text before it can match: "://", "=", "bearer", "basic" or a quote
# followed by a colon. Most log values (event names, dates, sources, numbers as text) hold none, and skip the six
# substitutions, which cost a daemon a fifth of its CPU at two lines per date.
_MAY_HOLD_SECRET = re.compile(r"://|=|bearer|basic|['\"]\s*:", re.IGNORECASE)


def scrub_text(text: str) -> str:
    """`text` with every known secret and every secret-looking pattern replaced by ***."""
    if _known_re is not None:
        text = _known_re.sub(REDACTED, text)
    if _MAY_HOLD_SECRET.search(text) is None:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    """Whether a field of this name holds a secret whatever its value. Field names repeat on every line."""
    return _SECRET_KEYS.search(key) is not None


def _clean(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if value is None or isinstance(value, bool | int | float) or depth > 5:
        return value
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _secret_key(k) else _clean(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_clean(v, depth + 1) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, set | frozenset):
        return [_clean(v, depth + 1) for v in value]
    # Anything else is rendered with repr() (JSON) or str(): an exception's text may hold a DSN.
    text = repr(value)
    cleaned = scrub_text(text)
    return value if cleaned == text else cleaned


def _scrub(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replace secrets in every field, the event text and the formatted traceback included."""
    for key, value in list(event.items()):
        if key.startswith("_"):  # structlog's own bookkeeping (_record, _from_structlog)
            continue
        if key not in ("event", "exception", "stack") and _secret_key(key):
            event[key] = REDACTED
        else:
            event[key] = _clean(value)
    return event


# uvicorn writes its general lines (started, shutting down) under "uvicorn.error", a name kept for history.
_LOGGER_NAMES = {"uvicorn.error": "uvicorn"}


def _rename_logger(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    name = event.get("logger")
    if name in _LOGGER_NAMES:
        event["logger"] = _LOGGER_NAMES[name]
    return event


def configure(log_format: str = "console", level: int = logging.INFO, env: Mapping[str, str] | None = None) -> None:
    """Configure structlog and the stdlib root logger once, at the edge of the program."""
    add_secrets(secrets_in_env(os.environ if env is None else env))
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _rename_logger,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become plain text *before* scrubbing, in both formats: the console's rich tracebacks
        # would print local variables (a DSN, a header dict) past the scrubber.
        structlog.processors.format_exc_info,
        _scrub,
    ]
    renderer: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncpg"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Requests are logged by our own access middleware (web/access.py: info for answers that are not 2xx, debug
    # for the rest); uvicorn's would log every SSE reconnect at INFO. httpx logs each request's URL at INFO, and
    # an upstream URL may carry a key in its query string.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # A crash outside any handler is logged through the same pipeline: one scrubbed line, not a raw traceback.
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    structlog.get_logger("datesync").critical("uncaught_exception", exc_info=(kind, exc, tb))
