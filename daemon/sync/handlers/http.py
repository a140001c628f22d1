"""`http`: fetch each date from a JSON HTTP API and make a table's rows for that date match it exactly.

Environment (a named source reads `DATESYNC_<SOURCE>_HTTP_…` first, see daemon.sources):

- `DATESYNC_HTTP_URL` (required): `https://api.example.com/orders?day={date}`; `{date}` is YYYY-MM-DD, and
  takes a strftime format too: `{date:%Y%m%d}`.
- `DATESYNC_HTTP_HEADERS`: a JSON object of header names to values, e.g. `{"Authorization": "Bearer …"}`.
  Never logged, never put in an error message. An Authorization header here and a user:password in the URL
  are refused together at start (the URL's would replace the header).
- `DATESYNC_HTTP_TABLE` (required): `table` or `schema.table`, created when missing as
  `(day date, key text, payload jsonb, synced_at timestamptz, PRIMARY KEY (day, key))`. The name is quoted,
  so it is case-sensitive.
- `DATESYNC_HTTP_KEY`: the field of each item that identifies it within a date (default `id`).
- `DATESYNC_HTTP_RATE`: requests per second for this source, shared by all its dates in one daemon.
- `DATESYNC_HTTP_TIMEOUT`: seconds to wait for the upstream (default 30).

A response is a JSON list of objects, or an object whose `data` is one. Further pages are followed from a
`Link: <…>; rel="next"` header or a `next` URL in the object, on the same origin only (the headers carry the
API key). 429, 502, 503, 504 and connection errors are retried within the attempt, honouring `Retry-After`
up to 30 s; any other failure, a 4xx or a body of another shape fails the attempt with a clear message, and
the daemon retries the date with its own backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import email.utils
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import structlog

from datesync.daemon.backoff import Backoff
from datesync.daemon.errors import HandlerError, SettingsError
from datesync.daemon.sources import SourceEnv
from datesync.daemon.sync.context import SyncContext
from datesync.daemon.sync.handlers.base import Handler

log = structlog.get_logger("datesync.http")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_TRIES = 3  # per request, within one attempt; the daemon's own retries come on top
MAX_RETRY_WAIT = 30.0  # longer Retry-After: give the attempt up and let the daemon's backoff wait
MAX_PAGES = 10_000
DDL_LOCK = (7355608, 3)  # two daemons creating the same table at start

_IDENT = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"
_TABLE = re.compile(rf"({_IDENT})(?:\.({_IDENT}))?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SECRET_PARAM = re.compile(r"key|token|secret|pass|auth|sig|credential", re.IGNORECASE)

_CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    day       date NOT NULL,
    key       text NOT NULL,
    payload   jsonb NOT NULL,
    synced_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, key)
)"""
# Payloads travel as text and are cast here, so the connection's json codec plays no part.
_UPSERT = """
INSERT INTO {table} AS t (day, key, payload, synced_at)
SELECT $1::date, u.key, u.payload::jsonb, now() FROM unnest($2::text[], $3::text[]) AS u(key, payload)
ON CONFLICT (day, key) DO UPDATE SET payload = EXCLUDED.payload, synced_at = EXCLUDED.synced_at"""
# The upstream is the truth for its date: rows it no longer returns go.
_DELETE = "DELETE FROM {table} WHERE day = $1::date AND key <> ALL($2::text[])"


class UpstreamError(RuntimeError):
    """The upstream API answered something the http handler cannot use."""


def safe_url(url: str | httpx.URL) -> str:
    """The URL for messages and logs: no user:password, and secret-looking query values masked."""
    parts = urlsplit(str(url))
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = urlencode(
        [(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*:,",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def quote_table(raw: str) -> str:
    """`schema.table` validated and quoted; raise ValueError otherwise."""
    match = _TABLE.fullmatch(raw)
    if not match:
        raise ValueError("expected a table name such as daily_orders or raw.daily_orders (letters, digits, _)")
    return ".".join(f'"{part}"' for part in match.groups() if part is not None)


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    """The http handler's settings for one source, validated."""

    url: str
    table: str  # quoted
    key: str = "id"
    rate: float | None = None
    timeout: float = 30.0
    schema: str | None = None  # quoted, when the table is schema-qualified
    # Kept out of repr so that no traceback or log line can show the API key.
    headers: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)
    table_var: str = "DATESYNC_HTTP_TABLE"

    @classmethod
    def from_env(cls, env: SourceEnv) -> HttpConfig:
        url_var, table_var = env.name("DATESYNC_HTTP_URL"), env.name("DATESYNC_HTTP_TABLE")
        url = env.get("DATESYNC_HTTP_URL")
        if url is None:
            raise SettingsError(f"{url_var} is required for the http handler (a URL with {{date}})")
        _check_url(url, url_var)
        table_raw = env.get("DATESYNC_HTTP_TABLE")
        if table_raw is None:
            raise SettingsError(f"{table_var} is required for the http handler (the table to write)")
        try:
            table = quote_table(table_raw)
        except ValueError as exc:
            raise SettingsError(f"{table_var}={table_raw!r} is invalid: {exc}") from None
        key = env.get("DATESYNC_HTTP_KEY") or "id"
        headers = _headers(env)
        _check_credentials(url, headers, url_var, env.name("DATESYNC_HTTP_HEADERS"))
        return cls(
            url=url,
            table=table,
            key=key,
            rate=_number(env, "DATESYNC_HTTP_RATE", None),
            timeout=_number(env, "DATESYNC_HTTP_TIMEOUT", 30.0) or 30.0,
            schema=table.split(".")[0] if "." in table else None,
            headers=headers,
            table_var=table_var,
        )

    def url_for(self, day: datetime.date) -> str:
        return self.url.format(date=day)


def _check_url(url: str, var: str) -> None:
    try:
        formatted = url.format(date=datetime.date(2025, 1, 31))
    except (KeyError, IndexError, ValueError) as exc:
        raise SettingsError(
            f"{var} is invalid: only {{date}} (or {{date:%Y%m%d}}) may appear in braces ({exc})"
        ) from None
    if formatted == url:
        raise SettingsError(f"{var} must contain {{date}}, where the date goes")
    parts = urlsplit(formatted)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{var} must be an http:// or https:// URL, got {safe_url(formatted)!r}")


def _check_credentials(url: str, headers: tuple[tuple[str, str], ...], url_var: str, headers_var: str) -> None:
    """Refuse a user:password in the URL next to an Authorization header: httpx would send Basic auth from the
    URL in place of the header, silently. Neither value is shown: both are secrets."""
    parts = urlsplit(url.format(date=datetime.date(2025, 1, 31)))  # _check_url made sure this works
    has_userinfo = parts.username is not None or parts.password is not None
    if has_userinfo and any(name.lower() == "authorization" for name, _ in headers):
        raise SettingsError(
            f"{url_var} carries a user:password and {headers_var} sets Authorization; the URL's credentials "
            "would replace that header, so keep only one of them"
        )


def _number(env: SourceEnv, var: str, default: float | None) -> float | None:
    raw = env.get(var)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise SettingsError(f"{env.name(var)}={raw!r} is invalid: expected a number above 0")
    return value


def _headers(env: SourceEnv) -> tuple[tuple[str, str], ...]:
    raw = env.get("DATESYNC_HTTP_HEADERS")
    if raw is None:
        return ()
    var = env.name("DATESYNC_HTTP_HEADERS")
    # Messages name the variable but never echo the value: it holds the API key.
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise SettingsError(f'{var} is not valid JSON; expected an object such as {{"X-Api-Key": "…"}}') from None
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise SettingsError(f"{var} must be a JSON object of header names to string values")
    for name, value in parsed.items():
        if not _HEADER_NAME.fullmatch(name) or "\n" in value or "\r" in value:
            raise SettingsError(f"{var}: header {name!r} has an invalid name or a line break in its value")
    return tuple(parsed.items())


class RateLimiter:
    """Spaces requests at least 1/rate seconds apart across every caller (no bursts)."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.clock = clock
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = self.clock()
        # Reserve a slot without awaiting first: asyncio runs this block atomically, so callers queue up.
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


def retry_after_seconds(value: str | None, now: datetime.datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    with contextlib.suppress(ValueError):
        seconds = float(value)
        return max(seconds, 0.0) if seconds == seconds else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    now = now or datetime.datetime.now(datetime.UTC)
    return max((when - now).total_seconds(), 0.0)


class HttpHandler:
    """One shared httpx client and rate limiter for every date of one source."""

    def __init__(self, config: HttpConfig, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.config = config
        self.limiter = RateLimiter(config.rate)
        self.client: httpx.AsyncClient | None = None
        self._sleep = sleep
        table = config.table
        self.create_sql = _CREATE.format(table=table)
        self.upsert_sql = _UPSERT.format(table=table)
        self.delete_sql = _DELETE.format(table=table)

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(
                headers=dict(self.config.headers),
                timeout=httpx.Timeout(self.config.timeout, connect=min(10.0, self.config.timeout)),
                limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
                # A redirect could carry the API key to another host; ask for the final URL instead.
                follow_redirects=False,
            )
        return self.client

    async def setup(self, pool: asyncpg.Pool) -> None:
        """Create the table when missing and check that ours can be written; open the HTTP client."""
        var = self.config.table_var
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", *DDL_LOCK)
                if self.config.schema:
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.config.schema}")
                await conn.execute(self.create_sql)
                # An existing table of another shape fails here, at start, not at the first date.
                await conn.prepare(self.upsert_sql)
                await conn.prepare(self.delete_sql)
        except asyncpg.PostgresError as exc:
            raise HandlerError(f"{var}: table {self.config.table} cannot be used: {exc}") from None
        self._client()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def sync(self, day: datetime.date, ctx: SyncContext) -> int:
        items = await self.fetch(day, ctx.log)
        keys, payloads = list(items), [json.dumps(v, ensure_ascii=False) for v in items.values()]
        async with ctx.db.transaction():
            await ctx.db.execute(self.upsert_sql, day, keys, payloads)
            deleted = await ctx.db.execute(self.delete_sql, day, keys)
        ctx.log.info("http_day_written", rows=len(keys), deleted=int(deleted.split()[-1]))
        return len(keys)

    async def fetch(self, day: datetime.date, logger: Any = log) -> dict[str, Any]:
        """Every item of the date, all pages, by key (a key seen twice keeps its last item)."""
        items: dict[str, Any] = {}
        url: httpx.URL | None = httpx.URL(self.config.url_for(day))
        origin = _origin(url) if url else None
        seen: set[str] = set()
        pages = duplicates = 0
        while url is not None:
            if str(url) in seen or pages >= MAX_PAGES:
                raise UpstreamError(f"pagination of {safe_url(url)} does not end (page {pages + 1})")
            seen.add(str(url))
            pages += 1
            response = await self.get(url)
            page, next_url = self._parse(response)
            for item in page:
                key = self._key(item, response)
                duplicates += key in items
                items[key] = item
            url = response.url.join(next_url) if next_url else None
            if url is not None and _origin(url) != origin:
                raise UpstreamError(
                    f"{safe_url(response.url)} points its next page to another origin ({safe_url(url)}); "
                    "not followed, the request headers would go with it"
                )
        if duplicates:
            logger.warning("http_duplicate_keys", duplicates=duplicates, key=self.config.key)
        logger.info("http_day_fetched", pages=pages, items=len(items))
        return items

    async def get(self, url: httpx.URL) -> httpx.Response:
        """One GET under the rate limit, retrying throttling, gateway errors and lost connections."""
        client = self._client()
        shown = safe_url(url)
        for attempt in range(1, MAX_TRIES + 1):
            await self.limiter.wait()
            try:
                response = await client.get(url)
            except httpx.TransportError as exc:
                # Re-raised without the httpx chain: its frames' locals would show the request headers.
                problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                if attempt == MAX_TRIES:
                    raise UpstreamError(f"GET {shown} failed after {MAX_TRIES} tries: {problem}") from None
                await self._sleep(PAGE_RETRY.delay(attempt))
                continue
            if response.status_code in RETRY_STATUSES:
                wait = retry_after_seconds(response.headers.get("retry-after"))
                status = f"HTTP {response.status_code}"
                if wait is not None and wait > MAX_RETRY_WAIT:
                    raise UpstreamError(f"GET {shown} answered {status} asking to retry after {wait:g} s; "
                                        "the date will be retried later")
                if attempt == MAX_TRIES:
                    raise UpstreamError(f"GET {shown} answered {status} {MAX_TRIES} times")
                await self._sleep(PAGE_RETRY.delay(attempt) if wait is None else wait)
                continue
            if response.is_redirect:
                location = safe_url(response.url.join(response.headers.get("location", "")))
                raise UpstreamError(f"GET {shown} redirects (HTTP {response.status_code}) to {location}; "
                                    "set the URL to the final address")
            if response.status_code >= 400:
                raise UpstreamError(f"GET {shown} answered HTTP {response.status_code}: {_snippet(response)}")
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _parse(self, response: httpx.Response) -> tuple[list[Any], str | None]:
        shown = safe_url(response.url)
        try:
            body = response.json()
        except ValueError:
            raise UpstreamError(f"GET {shown} returned a body that is not JSON: {_snippet(response)}") from None
        next_link: str | None = response.links.get("next", {}).get("url")
        if isinstance(body, dict) and isinstance(body.get("data"), list):
            nxt = body.get("next")
            if nxt is not None and not isinstance(nxt, str):
                raise UpstreamError(f"GET {shown} returned a 'next' that is not a URL")
            return body["data"], nxt or next_link
        if isinstance(body, list):
            return body, next_link
        raise UpstreamError(
            f"GET {shown} returned JSON {type(body).__name__}; expected a list of objects or {{\"data\": [...]}}"
        )

    def _key(self, item: Any, response: httpx.Response) -> str:
        key = self.config.key
        if not isinstance(item, dict):
            raise UpstreamError(f"GET {safe_url(response.url)} returned an item that is not an object: "
                                f"{json.dumps(item)[:100]}")
        value = item.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise UpstreamError(f"GET {safe_url(response.url)} returned an item without a string or integer "
                            f"{key!r} field (DATESYNC_HTTP_KEY): {json.dumps(item)[:100]}")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


# Waits between tries of one page within an attempt (429 without Retry-After, 5xx, a dropped connection).
PAGE_RETRY = Backoff(0.5, cap=5.0)


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    text = " ".join(response.text.split())
    return (text[:limit] + "…" if len(text) > limit else text) or "(empty body)"


def handler(env: SourceEnv | None = None) -> Handler:
    made = HttpHandler(HttpConfig.from_env(env or SourceEnv()))
    return Handler(name="http", sync=made.sync, setup=made.setup, close=made.close, session_safe=True)
