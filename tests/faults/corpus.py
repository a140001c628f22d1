"""Hostile input: a hand-written HTTP corpus (oversized bodies, deep JSON, invalid UTF-8, header abuse, path
traversal, SQL in every string field) sent as raw bytes to a real server, and bad operator INSERTs and UPDATEs
against the SQL interface. Every one must be refused with a clear 4xx (or a database error naming the rule),
leave nothing behind, and leave the server serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import urllib.parse
from collections.abc import Iterator, Sequence

import asyncpg

PREFIX = "/api/v1/sync-status"
SUBMIT = f"{PREFIX}/sync/batch"

# Strings that have broken SQL, JSON and HTTP handling somewhere.
NASTY = [
    "2024-01-01'; DROP TABLE datesync.batch; --",
    "' OR '1'='1",
    "default' --",
    "default\"; SELECT pg_sleep(5); --",
    "1; SELECT pg_terminate_backend(pg_backend_pid())",
    "$1",
    "%s%s%n",
    "{{7*7}}",
    "../../../../etc/passwd",
    "\u0000",
    "default\u0000",
    "\ud800",
    "\uff12\uff10\uff12\uff14-\uff10\uff11-\uff10\uff11",  # fullwidth digits
    "2024-01-01\n",
    " 2024-01-01",
    "2024-1-1",
    "20240101",
    "2024-02-30",
    "0001-01-01",
    "9999-12-31",
    "-infinity",
    "infinity",
    "NaN",
    "x" * 5000,
    "",
    "DEFAULT",
    "défault",
    "<script>alert(1)</script>",
]


@dataclasses.dataclass(frozen=True)
class Case:
    """One request: its raw bytes, the statuses that are right answers, and the field its error must name."""

    name: str
    raw: bytes
    expect: tuple[int, ...] = (400, 422)
    field: str | None = None
    absent: tuple[bytes, ...] = ()  # bytes that must not appear in the answer (leaked files, internals)


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def request(method: str, path: str, body: bytes | None = None, headers: Sequence[tuple[str, str]] = (),
            length: bool = True) -> bytes:
    """An HTTP/1.1 request as bytes (header values are latin-1, so any byte can be sent)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if body is not None and length:
        lines.append(f"Content-Length: {len(body)}")
    if body is not None:
        lines.append("Content-Type: application/json")
    lines += [f"{k}: {v}" for k, v in headers]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (body or b"")


def post(body: bytes | str | object, headers: Sequence[tuple[str, str]] = (), path: str = SUBMIT) -> bytes:
    if isinstance(body, str):
        data = body.encode("utf-8", "surrogatepass")
    elif isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode()
    return request("POST", path, data, headers)


def _good(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {"start_date": "2024-01-01", "end_date": "2024-01-05"}
    body.update(changes)
    return body


def http_cases() -> Iterator[Case]:
    """The hand-written corpus; none of these is a valid request."""
    # -- oversized bodies --
    yield Case("declared 10 MB body", request("POST", SUBMIT, b"{", [("Content-Length", "10000000")], length=False),
               (413,), "body")
    chunk = b"x" * 65536
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    yield Case("chunked 256 KiB body", request("POST", SUBMIT, chunked, [("Transfer-Encoding", "chunked")],
                                               length=False), (413,), "body")
    yield Case("64 KiB of spaces then a valid object", post(b" " * 65000 + json.dumps(_good(source="nope")).encode()),
               (422,), "source")
    yield Case("6000 unknown keys", post("{" + ",".join(f'"k{i}":0' for i in range(6000)) + "}"), (413, 422))
    # -- deep and odd JSON --
    yield Case("array nested 60 000 deep", post("[" * 60000 + "]" * 60000), (400, 413), "body")
    yield Case("object nested 5 000 deep", post('{"a":' * 5000 + "1" + "}" * 5000), (400, 422))
    yield Case("deep array in a field", post('{"start_date": ' + "[" * 30000 + "]" * 30000 + "}"), (400,), "body")
    yield Case("5000-digit number", post('{"start_date": ' + "9" * 5000 + "}"), (400,), "body")
    yield Case("NaN", post('{"start_date": "2024-01-01", "end_date": "2024-01-02", "force": NaN}'), (400,), "body")
    yield Case("1e999", post('{"start_date": "2024-01-01", "end_date": "2024-01-02", "force": 1e999}'),
               (422,), "force")
    yield Case("duplicate keys", post('{"start_date": "2024-01-01", "start_date": "2024-01-02", '
                                      '"end_date": "2024-01-03"}'), (422,), "start_date")
    yield Case("empty body", request("POST", SUBMIT, b""), (400,), "body")
    for raw, kind in ((b"null", "null"), (b"[]", "array"), (b'"x"', "string"), (b"42", "number")):
        yield Case(f"JSON {kind}", post(raw), (400,), "body")
    yield Case("truncated JSON", post(b'{"start_date": "2024-01-01"'), (400,), "body")
    # -- invalid UTF-8 --
    yield Case("invalid UTF-8 body", post(b'{"start_date": "\xff\xfe2024-01-01", "end_date": "2024-01-02"}'),
               (400,), "body")
    yield Case("UTF-16 body", post(json.dumps(_good()).encode("utf-16")), (400,), "body")
    yield Case("overlong UTF-8 slash", post(b'{"source": "\xc0\xaf", "start_date": "2024-01-01", '
                                            b'"end_date": "2024-01-02"}'), (400,), "body")
    yield Case("lone surrogate in a value", post('{"start_date": "\\ud800", "end_date": "2024-01-02"}'),
               (422,), "start_date")
    yield Case("lone surrogate as a key", post('{"\\udfff": 1, "start_date": "2024-01-01", "end_date": "2024-01-02"}'),
               (422,))
    yield Case("NUL in the source", post(_good(source="default\u0000")), (422,), "source")
    yield Case("invalid UTF-8 in the query", request("GET", f"{PREFIX}/?status=%ff%fe"), (422,), "status")
    yield Case("invalid UTF-8 in the path", request("GET", f"{PREFIX}/batches/%ff"), (404,), "id")
    # -- wrong types and impossible values, each naming its field --
    wrong_dates: list[object] = [20240101, True, None, {}, [], 1.5]
    for value in wrong_dates:
        yield Case(f"start_date {json.dumps(value)}", post(_good(start_date=value)), (422,), "start_date")
    wrong_flags: list[object] = ["yes", 1, None, "true"]
    for value in wrong_flags:
        yield Case(f"force {json.dumps(value)}", post(_good(force=value)), (422,), "force")
    yield Case("source 42", post(_good(source=42)), (422,), "source")
    yield Case("unknown source", post(_good(source="nope")), (422,), "source")
    yield Case("unknown source, dry run", post(_good(source="nope", dry_run=True)), (422,), "source")
    yield Case("reversed range", post(_good(start_date="2024-02-01")), (422,), "start_date")
    yield Case("range over the limit", post(_good(start_date="1990-01-01")), (422,), "end_date")
    yield Case("future end", post(_good(end_date="9999-12-31")), (422,), "end_date")
    yield Case("impossible date", post(_good(end_date="2024-02-30")), (422,), "end_date")
    yield Case("year 1", post(_good(start_date="0001-01-01")), (422,), "start_date")
    yield Case("unknown field with a huge name", post({**_good(), "x" * 60000: 1}), (413, 422))
    # -- SQL (and other injections) in every string field --
    for nasty in NASTY:
        for field in ("start_date", "end_date", "source"):
            if field != "source" and nasty in ("2024-01-01\n",):
                continue
            yield Case(f"{field} = {nasty[:30]!r}", post(_good(**{field: nasty})), (422,), field)
    for nasty in NASTY[:9]:
        quoted = nasty.replace(" ", "%20").replace("'", "%27").replace('"', "%22").replace(";", "%3B")
        yield Case(f"status query {nasty[:20]!r}", request("GET", f"{PREFIX}/?status={quoted}"), (422,), "status")
        yield Case(f"source query {nasty[:20]!r}", request("GET", f"{PREFIX}/?source={quoted}"), (422,), "source")
        yield Case(f"from query {nasty[:20]!r}", request("GET", f"{PREFIX}/?from={quoted}"), (422,), "from")
        yield Case(f"batches state {nasty[:20]!r}", request("GET", f"{PREFIX}/batches?state={quoted}"), (422,),
                   "state")
        yield Case(f"gaps source {nasty[:20]!r}", request("GET", f"{PREFIX}/gaps?source={quoted}"), (422,),
                   "source")
        yield Case(f"limit {nasty[:20]!r}", request("GET", f"{PREFIX}/batches?limit={quoted}"), (422,), "limit")
    yield Case("Idempotency-Key with SQL", post(_good(source="nope"), [("Idempotency-Key", "' OR 1=1; --")]),
               (422,), "source")
    # -- path traversal in ids and static files --
    for path_id in ("..%2F..%2Fetc%2Fpasswd", "%2e%2e", "1%00", "-1", "0", "1.5", "1e3", "0x10",
                    "99999999999999999999", "%EF%BC%91", "1%20OR%201=1", "1;DROP%20TABLE%20x"):
        # An id with an encoded slash is no route at all (404 without a field); any other one is no batch.
        id_field = None if "%2F" in path_id else "id"
        yield Case(f"batch id {path_id}", request("GET", f"{PREFIX}/batches/{path_id}"), (404,), id_field)
        yield Case(f"cancel id {path_id}", request("POST", f"{PREFIX}/batches/{path_id}/cancel", b""), (404,),
                   id_field)
        yield Case(f"events id {path_id}", request("GET", f"{PREFIX}/batches/{path_id}/events"), (404,))
    for path in ("/static/../pyproject.toml", "/static/%2e%2e/pyproject.toml", "/static/..%2fpyproject.toml",
                 "/static/%2e%2e/%2e%2e/etc/passwd", "/static/....//pyproject.toml", "/static//etc/passwd",
                 "/static/%252e%252e/pyproject.toml", "/static/..\\pyproject.toml"):
        yield Case(f"static {path}", request("GET", path), (400, 404), None, (b"[project]", b"root:x:0:0"))
    # -- header abuse --
    yield Case("200 KiB header", request("GET", "/healthz", None, [("X-Big", "a" * 200_000)]), (400, 413, 431))
    yield Case("100 000 headers", request("GET", "/healthz", None, [(f"X-H{i}", "v") for i in range(100_000)]),
               (400, 413, 431))
    yield Case("header name with a space", request("GET", "/healthz", None, [("Bad Name", "x")]), (400,))
    yield Case("negative Content-Length", request("POST", SUBMIT, b"{}", [("Content-Length", "-1")], length=False),
               (400,))
    yield Case("Content-Length not a number", request("POST", SUBMIT, b"{}", [("Content-Length", "abc")],
                                                      length=False), (400,))
    yield Case("two Content-Lengths", request("POST", SUBMIT, b"{}", [("Content-Length", "2"),
                                                                     ("Content-Length", "3")], length=False), (400,))
    yield Case("bad chunk size", request("POST", SUBMIT, b"zz\r\n{}\r\n0\r\n\r\n",
                                         [("Transfer-Encoding", "chunked")], length=False), (400,))
    yield Case("Transfer-Encoding and Content-Length", request(
        "POST", SUBMIT, b"2\r\n{}\r\n0\r\n\r\n", [("Transfer-Encoding", "chunked"), ("Content-Length", "60")],
        length=False), (400, 422))
    yield Case("Idempotency-Key of 300 characters", post(_good(), [("Idempotency-Key", "k" * 300)]), (422,),
               "Idempotency-Key")
    yield Case("Idempotency-Key with DEL", post(_good(), [("Idempotency-Key", "key\x7f")]), (400, 422))
    yield Case("Idempotency-Key in latin-1", post(_good(), [("Idempotency-Key", "cl\xe9")]), (422,),
               "Idempotency-Key")
    yield Case("Accept-Language garbage", post(_good(source="nope"), [("Accept-Language", "zh;q=abc,*;q=NaN," * 50)]),
               (422,), "source")
    yield Case("Authorization garbage", post(_good(source="nope"), [("Authorization", "Bearer " + "\xff" * 3000)]),
               (401, 422))
    yield Case("Last-Event-ID not a number", request("GET", f"{PREFIX}/events", None, [("Last-Event-ID", "1 OR 1=1")]),
               (400,), "Last-Event-ID")
    yield Case("Last-Event-ID over bigint", request("GET", f"{PREFIX}/events", None,
                                                    [("Last-Event-ID", "9" * 30)]), (400,), "Last-Event-ID")
    yield Case("last_event_id query with SQL", request("GET", f"{PREFIX}/events?last_event_id=1%3BDROP"), (400,),
               "last_event_id")
    yield Case("no Host", b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", (400,))
    yield Case("NUL in the request line", b"GET /healthz\x00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
               (400,))
    yield Case("100 KiB URL", request("GET", f"{PREFIX}/?source=" + "a" * 100_000), (400, 414, 422))
    yield Case("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), (400,))
    for method in ("PUT", "DELETE", "PATCH", "TRACE"):
        yield Case(f"{method} on the submit route", request(method, SUBMIT, b"{}"), (405,))


def fuzz_cases(rng: random.Random, n: int) -> Iterator[Case]:
    """Random mixes of nasty values, types and bytes in the body of a batch request."""
    values: list[object] = [*NASTY, None, True, 0, -1, 1.5, [], {}, [NASTY[0]], {"$gt": ""}]
    for i in range(n):
        body: dict[str, object] = {}
        for field in ("start_date", "end_date", "force", "source", "dry_run"):
            if rng.random() < 0.8:
                body[field] = rng.choice(values)
        if rng.random() < 0.3:
            body[rng.choice(NASTY)[:40]] = rng.choice(values)
        # Keep at least one field certainly wrong, so that no fuzzed request is a valid one.
        body["start_date"] = rng.choice([v for v in values if not isinstance(v, str) or not v[:4].isdigit()])
        raw = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        if rng.random() < 0.2:
            cut = rng.randrange(len(raw))
            raw = raw[:cut] + bytes([rng.randrange(256)]) + raw[cut + 1:]
        yield Case(f"fuzz {i}", post(raw), (400, 413, 422))


async def send(host: str, port: int, raw: bytes, timeout: float = 15.0) -> Answer:
    """Send raw bytes, read the answer to the end (the requests ask to close)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(raw)
        # The server may answer (413) and close before reading everything we send.
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        data = await asyncio.wait_for(_read_all(reader), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return Answer(0, {}, data)
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return Answer(status, headers, body)


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    try:
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    except ConnectionError:
        pass
    return b"".join(chunks)


def _unchunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return bytes(out)


LEAKS = (b"Traceback", b"asyncpg", b"File \"/", b"postgresql://", b"SELECT ", b"INSERT INTO", b"/work/",
         b"site-packages")


def judge(case: Case, answer: Answer) -> list[str]:
    """What is wrong with the answer to one case."""
    problems = []
    where = f"{case.name}: {answer.status}"
    if answer.status == 0:
        return [f"{case.name}: no HTTP answer ({answer.body[:100]!r})"]
    if answer.status >= 500:
        problems.append(f"{where}: a server error: {answer.body[:300]!r}")
    elif answer.status not in case.expect:
        problems.append(f"{where}, expected one of {case.expect}: {answer.body[:300]!r}")
    for leak in (*LEAKS, *case.absent):
        if leak in answer.body and leak not in urllib.parse.unquote_to_bytes(case.raw):  # an echo is no leak
            problems.append(f"{where}: the answer contains {leak!r}")
    if answer.headers.get("content-type", "").startswith("application/json"):
        try:
            envelope = json.loads(answer.body)
        except ValueError:
            problems.append(f"{where}: the JSON answer does not parse: {answer.body[:200]!r}")
            return problems
        if answer.status >= 400:
            if envelope.get("status") != "error" or not str(envelope.get("message", "")).strip():
                problems.append(f"{where}: not an error envelope with a message: {envelope}")
            elif case.field and case.field not in {e.get("field") for e in envelope.get("errors", [])}:
                problems.append(f"{where}: the error does not name {case.field!r}: {envelope}")
    elif case.field and answer.status < 500:
        problems.append(f"{where}: expected a JSON error naming {case.field!r}, got "
                        f"{answer.headers.get('content-type')!r}: {answer.body[:200]!r}")
    return problems


async def row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """How many rows each datesync table holds: a refused input must not change any."""
    counts = {}
    for table in ("batch", "task", "day", "event", "source", "setting"):
        counts[table] = int(await conn.fetchval(f"SELECT count(*) FROM datesync.{table}"))
    return counts
