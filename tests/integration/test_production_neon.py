"""Neon's URLs: the pooled endpoint for queries, the direct one for LISTEN, parameters asyncpg cannot take.

A real `-pooler` host cannot be reached from here, so the derivation and the refusal are checked on the URLs,
and the refusal end to end with a process whose DATABASE_URL is the real test server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from datesync.daemon.db import connect as connecting
from datesync.daemon.db import dsn as dsns
from datesync.daemon.errors import SettingsError
from datesync.daemon.listener import Listener
from datesync.daemon.runtime import Database, check_endpoints, direct_dsn_for, prepare
from datesync.daemon.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
POOLED = "postgresql://app:pw-neon-1@ep-cool-name-123456-pooler.eu-central-1.aws.neon.tech/db?sslmode=require"
DIRECT = "postgresql://app:pw-neon-1@ep-cool-name-123456.eu-central-1.aws.neon.tech/db?sslmode=require"


def test_the_direct_url_is_derived_from_a_pooled_one_and_logged_without_its_password() -> None:
    with capture_logs() as logs:
        derived = direct_dsn_for(Settings(database_url=POOLED), POOLED)
    assert derived == DIRECT
    assert [e["event"] for e in logs] == ["direct_url_derived"]
    assert logs[0]["direct_url"] == DIRECT.replace("pw-neon-1", "***")


def test_a_given_direct_url_wins_and_a_plain_url_is_its_own_direct_url() -> None:
    other = "postgresql://app:pw@10.0.0.5/db"
    assert direct_dsn_for(Settings(database_url=POOLED, database_direct_url=other), POOLED) == other
    with capture_logs() as logs:
        assert direct_dsn_for(Settings(database_url=other), other) == other
    assert logs == []


def test_start_up_refuses_a_pooler_url_for_listen_and_names_the_variable() -> None:
    settings = Settings(database_url=DIRECT, database_direct_url=POOLED)
    with pytest.raises(SettingsError, match=r"DATABASE_DIRECT_URL points at a Neon -pooler endpoint .*cannot LISTEN"):
        check_endpoints(Database(DIRECT, POOLED), settings)
    with pytest.raises(SettingsError, match="LISTEN needs a direct connection"):
        Listener(POOLED, ["datesync_batch"], lambda _c, _p: None)


def test_start_up_says_once_which_endpoint_serves_what() -> None:
    with capture_logs() as logs:
        check_endpoints(Database(POOLED, DIRECT, pooled=True), Settings(database_url=POOLED))
    assert len(logs) == 1
    line = logs[0]
    assert line["event"] == "database_endpoints" and line["pooled"] is True
    assert "pw-neon-1" not in str(line) and "-pooler" in line["queries"] and "-pooler" not in line["listen"]


async def test_migrations_go_through_the_direct_endpoint(empty_dsn: str) -> None:
    # Their session-level advisory lock would be split across server connections by a transaction pooler.
    # Here the "pooled" URL leads nowhere: the start succeeds only if the direct one is used.
    unreachable = "postgresql://app:pw@127.0.0.1:1/nowhere"
    await prepare(Database(unreachable, empty_dsn), Settings(), {"default": "demo"})
    conn = await connecting.connect(empty_dsn, "datesync-test")
    try:
        assert await conn.fetchval("SELECT count(*) FROM datesync.schema_migration") >= 1
    finally:
        await conn.close()
    with pytest.raises(SettingsError, match="DATABASE_DIRECT_URL points at a Neon -pooler endpoint"):
        await prepare(Database(empty_dsn, POOLED), Settings(database_direct_url=POOLED), {"default": "demo"})


def test_the_statement_cache_is_off_only_through_a_pooler() -> None:
    assert connecting._options(POOLED, "t")["statement_cache_size"] == 0
    assert connecting._options(DIRECT, "t")["statement_cache_size"] > 0


def test_sslmode_is_kept_and_channel_binding_dropped() -> None:
    url = DIRECT + "&channel_binding=require"
    assert dsns.clean(url) == DIRECT
    assert dsns.clean(DIRECT) == DIRECT  # nothing to drop: the URL is left exactly as given


async def test_a_neon_style_url_connects_and_the_drop_is_logged_once(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dsns, "_reported", set())
    # The test server's DSN with Neon's parameters: sslmode=require parses (the Unix socket carries no TLS)
    # and channel_binding, which asyncpg would refuse, is dropped.
    neon_like = dsn + "&sslmode=require&channel_binding=require"
    with capture_logs() as logs:
        pool = await connecting.create_pool(neon_like, 3, "datesync-test")
        try:
            async with pool.acquire() as a, pool.acquire() as b:
                assert await a.fetchval("SELECT 1") == await b.fetchval("SELECT 1") == 1
        finally:
            await pool.close()
        for _ in range(3):  # reconnects, as the listener's
            conn = await connecting.connect(neon_like, "datesync-test")
            await conn.close()
    dropped = [e for e in logs if e["event"] == "dsn_parameter_dropped"]
    assert len(dropped) == 1 and dropped[0]["parameters"] == ["channel_binding"]


def test_datesync_daemon_with_a_pooler_direct_url_exits_non_zero_with_a_clear_message(dsn: str) -> None:
    env = {**os.environ, "DATABASE_URL": dsn, "DATABASE_DIRECT_URL": POOLED, "PYTHONPATH": str(ROOT),
           "LOG_FORMAT": "json"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "datesync.cli", "daemon"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 15  # refused at once, not after trying to reach the host
    message = " ".join(done.stderr.split())
    assert "DATABASE_DIRECT_URL points at a Neon -pooler endpoint" in message
    assert "cannot LISTEN" in message
    assert "pw-neon-1" not in done.stderr
