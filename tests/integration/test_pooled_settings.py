"""DATESYNC_POOLED at start: which URL is a transaction pooler, what is refused, and what the log says.

The end-to-end runs through a real PgBouncer are in tests/e2e/test_pooled_pgbouncer.py."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from datesync.daemon.db import connect as connecting
from datesync.daemon.errors import SettingsError
from datesync.daemon.runtime import Database, check_endpoints, database
from datesync.daemon.settings import Settings

BOUNCER = "postgresql://app:pw-bouncer-1@pgbouncer.pooled-settings.internal:6432/app"
DIRECT = "postgresql://app:pw-bouncer-1@db.pooled-settings.internal:5432/app"
NEON = "postgresql://app:pw@ep-cool-name-123456-pooler.eu-central-1.aws.neon.tech/db"


async def _db(**env: str) -> Database:
    async with database(Settings.from_env(env)) as db:
        return db


async def test_two_different_urls_make_database_url_a_pooler_without_a_neon_host_name() -> None:
    db = await _db(DATABASE_URL=BOUNCER, DATABASE_DIRECT_URL=DIRECT)
    assert db.pooled and db.direct_dsn == DIRECT
    assert connecting._options(BOUNCER, "t")["statement_cache_size"] == 0
    assert connecting._options(DIRECT, "t")["statement_cache_size"] > 0
    with capture_logs() as logs:
        check_endpoints(db, Settings(database_url=BOUNCER, database_direct_url=DIRECT))
    assert logs[0]["pooled"] is True and logs[0]["statement_cache"].startswith("off")
    assert "pw-bouncer-1" not in str(logs)


async def test_one_url_is_direct_and_off_overrides_two() -> None:
    alone = await _db(DATABASE_URL=DIRECT)
    assert not alone.pooled and alone.direct_dsn == DIRECT
    off = await _db(DATABASE_URL=BOUNCER.replace("6432", "6433"), DATABASE_DIRECT_URL=DIRECT, DATESYNC_POOLED="off")
    assert not off.pooled
    assert connecting._options(off.dsn, "t")["statement_cache_size"] > 0


async def test_on_without_a_direct_url_is_refused_naming_the_variables() -> None:
    settings = Settings.from_env({"DATABASE_URL": DIRECT.replace("5432", "5433"), "DATESYNC_POOLED": "on"})
    async with database(settings) as db:
        assert db.pooled
        with pytest.raises(SettingsError, match=r"DATESYNC_POOLED=on .*cannot LISTEN.*set DATABASE_DIRECT_URL"):
            check_endpoints(db, settings)


async def test_off_is_refused_for_a_neon_pooler_host() -> None:
    settings = Settings.from_env({"DATABASE_URL": NEON, "DATESYNC_POOLED": "off"})
    async with database(settings) as db:
        with pytest.raises(SettingsError, match=r"DATESYNC_POOLED=off, but DATABASE_URL is a Neon -pooler"):
            check_endpoints(db, settings)
