"""The log scrubber and pipeline: no secret in any field, message or traceback; every line JSON when asked.

The pipeline is configured in a subprocess: logs.configure() changes process-wide logging, and structlog caches
loggers on first use, which would leak this test's set-up into every later test of the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datesync.daemon import logs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def known_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Isolate the module's set of known secrets from other tests."""
    monkeypatch.setattr(logs, "_known", set())
    monkeypatch.setattr(logs, "_known_re", None)


@pytest.mark.parametrize(("text", "secret"), [
    ("cannot reach postgresql://app:hunter2-x@ep-a.neon.tech/db", "hunter2-x"),
    ("postgres://app:p%40ss@/db?host=/run and more", "p%40ss"),
    ("GET https://user:pw-upstream@api.example/v1?day=1", "pw-upstream"),
    ("host=h user=u password=libpq-pass dbname=d", "libpq-pass"),
    ("password = 'quoted pass' next", "quoted pass"),
    ("GET https://api.example/v1?day=2025-01-01&api_key=K3Y-value", "K3Y-value"),
    ("GET https://api.example/v1?key=abcdef&day=1", "abcdef"),
    ("sent Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
    ("headers={'Authorization': 'Token zzz-123', 'X-Api-Key': 'k-456'}", "zzz-123"),
    ("headers={'Authorization': 'Token zzz-123', 'X-Api-Key': 'k-456'}", "k-456"),
    ('{"password": "json-pass"}', "json-pass"),
])
def test_patterns_catch_secrets_nobody_registered(text: str, secret: str, known_secrets: None) -> None:
    cleaned = logs.scrub_text(text)
    assert secret not in cleaned
    assert "***" in cleaned


def test_ordinary_text_is_left_alone(known_secrets: None) -> None:
    for text in ("batch 7 finished: 9 succeeded", "the basic handler", "listener_connected channels=['x']",
                 "postgresql://postgres@/datesync?host=/tmp/run&port=5432"):
        assert logs.scrub_text(text) == text


def test_secrets_from_the_environment_are_replaced_anywhere(known_secrets: None) -> None:
    env = {
        "DATABASE_URL": "postgresql://app:S3cr%2Ft-pw@ep-x-pooler.neon.tech/db?sslmode=require",
        "DATESYNC_API_TOKEN": "tok-0123456789",
        "DATESYNC_ORDERS_HTTP_HEADERS": json.dumps({"Authorization": "Bearer upstream-cred", "X-Key": "hdr-val"}),
        "PGPASSWORD": "pg-env-pass",
        "DATESYNC_CONCURRENCY": "4",
    }
    logs.add_secrets(logs.secrets_in_env(env))
    # Anywhere: in prose, decoded (as asyncpg would use it), a header value without its scheme.
    text = "S3cr/t-pw S3cr%2Ft-pw tok-0123456789 upstream-cred hdr-val pg-env-pass 4 workers"
    assert logs.scrub_text(text) == "*** *** *** *** *** *** 4 workers"


def test_short_values_are_not_replaced_everywhere(known_secrets: None) -> None:
    logs.add_secrets(["ab"])
    assert logs.scrub_text("a tab and a cab") == "a tab and a cab"


def test_the_processor_scrubs_keys_nested_values_and_exceptions(known_secrets: None) -> None:
    logs.add_secrets(["tok-0123456789"])
    event = {
        "event": "calling with tok-0123456789",
        "headers": {"Accept": "json"},
        "api_token": "tok-0123456789",
        "detail": {"note": "dsn postgresql://u:pw-nested@h/db", "items": ["Bearer abcdefgh", 3]},
        "error": RuntimeError("failed at postgresql://u:pw-exc@h/db"),
        "exception": "Traceback ...\nRuntimeError: postgresql://u:pw-tb@h/db",
        "day": "2025-01-01",
        "rows": 3,
    }
    out = logs._scrub(None, "info", event)
    assert out["event"] == "calling with ***"
    assert out["headers"] == "***" and out["api_token"] == "***"
    assert out["detail"] == {"note": "dsn postgresql://u:***@h/db", "items": ["Bearer ***", 3]}
    assert out["error"] == "RuntimeError('failed at postgresql://u:***@h/db')"
    assert out["exception"].endswith("postgresql://u:***@h/db")
    assert (out["day"], out["rows"]) == ("2025-01-01", 3)


PIPELINE = textwrap.dedent("""
    import logging, sys
    import structlog
    from datesync.daemon import logs

    logs.configure(sys.argv[1])
    log = structlog.get_logger("datesync.test")
    log.info("connecting", url="postgresql://app:pw-field@h/db", note="token tok-0123456789")
    try:
        dsn = "postgresql://app:pw-local@h/db"  # a local variable: a rich traceback would print it
        raise ConnectionError(f"cannot reach {dsn}")
    except ConnectionError as exc:
        log.error("date_sync_failed", exc_info=exc)
    logging.getLogger("uvicorn.error").warning("Invalid HTTP request from %s", "postgresql://a:pw-uvicorn@h/d")
    try:
        raise ValueError("Bearer tok-0123456789")
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    logging.getLogger("asyncpg.pool").warning("resetting connection postgresql://a:pw-asyncpg@h/d")
    raise RuntimeError("uncaught with postgresql://app:pw-uncaught@h/db")
""")

SECRETS = ("pw-field", "tok-0123456789", "pw-local", "pw-uvicorn", "pw-asyncpg", "pw-uncaught")


def _run_pipeline(log_format: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATESYNC_API_TOKEN": "tok-0123456789"}
    return subprocess.run([sys.executable, "-c", PIPELINE, log_format], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


def test_json_lines_from_structlog_stdlib_loggers_and_a_crash_carry_no_secret() -> None:
    done = _run_pipeline("json")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [r["logger"] for r in records] == [
        "datesync.test", "datesync.test", "uvicorn", "uvicorn", "asyncpg.pool", "datesync"]
    assert all({"timestamp", "level", "event"} <= r.keys() for r in records)
    assert "ConnectionError: cannot reach postgresql://app:***@h/db" in records[1]["exception"]
    assert records[3]["event"] == "Exception in ASGI application" and "ValueError" in records[3]["exception"]
    assert records[5]["event"] == "uncaught_exception" and records[5]["level"] == "critical"
    for secret in SECRETS:
        assert secret not in done.stderr


def test_console_lines_carry_no_secret_and_no_traceback_locals() -> None:
    done = _run_pipeline("console")
    assert "connecting" in done.stderr and "Exception in ASGI application" in done.stderr
    for secret in SECRETS:
        assert secret not in done.stderr


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.text(alphabet="abcdeiknoprstuvwxyzABRS:/@=&?'\" _-.0123456789", max_size=60))
def test_the_quick_look_never_skips_a_text_a_pattern_would_scrub(text: str) -> None:
    # scrub_text skips the patterns when _MAY_HOLD_SECRET finds none of what they need; that must never skip one.
    changed = any(pattern.sub(replacement, text) != text for pattern, replacement in logs._PATTERNS)
    if changed:
        assert logs._MAY_HOLD_SECRET.search(text), text
