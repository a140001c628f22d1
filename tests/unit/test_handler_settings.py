"""Each built-in handler reads its settings for its own source first (`DATESYNC_<SOURCE>_X`), then the shared
`DATESYNC_X`, as docs/handlers.md says; none reads os.environ behind the loader's back."""

from __future__ import annotations

import datetime
from pathlib import Path

from datesync.daemon.sync import handlers


def test_the_demo_handler_reads_its_sources_own_variables() -> None:
    env = {"DATESYNC_DEMO_FAIL_DATES": "2024-01-01", "DATESYNC_ORDERS_DEMO_FAIL_DATES": "2024-02-02",
           "DATESYNC_ORDERS_DEMO_DELAY_MS": "7"}
    orders = handlers.load("demo", "orders", env).sync.__self__  # type: ignore[attr-defined]
    shared = handlers.load("demo", "default", env).sync.__self__  # type: ignore[attr-defined]
    assert orders.fail_dates == {datetime.date(2024, 2, 2)} and orders.delay == 0.007
    assert shared.fail_dates == {datetime.date(2024, 1, 1)} and shared.delay == 0.2


def test_the_http_handler_reads_its_sources_own_variables() -> None:
    env = {"DATESYNC_HTTP_URL": "https://shared.example/{date}", "DATESYNC_HTTP_TABLE": "shared",
           "DATESYNC_ORDERS_HTTP_URL": "https://orders.example/{date}", "DATESYNC_ORDERS_HTTP_TABLE": "orders"}
    orders = handlers.load("http", "orders", env).sync.__self__.config  # type: ignore[attr-defined]
    shared = handlers.load("http", "default", env).sync.__self__.config  # type: ignore[attr-defined]
    assert orders.url.startswith("https://orders.example/") and "orders" in orders.table
    assert shared.url.startswith("https://shared.example/") and "shared" in shared.table


def test_the_sql_handler_reads_its_sources_own_variables(tmp_path: Path) -> None:
    (tmp_path / "shared.sql").write_text("SELECT $1::date")
    (tmp_path / "rollup.sql").write_text("SELECT $1::date")
    env = {"DATESYNC_SQL_FILE": str(tmp_path / "shared.sql"), "DATESYNC_ROLLUP_SQL_FILE": str(tmp_path / "rollup.sql")}
    rollup = handlers.load("sql", "rollup", env).sync.__self__  # type: ignore[attr-defined]
    shared = handlers.load("sql", "default", env).sync.__self__  # type: ignore[attr-defined]
    assert Path(rollup.path).name == "rollup.sql" and Path(shared.path).name == "shared.sql"


def test_noop_takes_no_settings() -> None:
    assert handlers.load("noop", "orders", {}).name == "noop"
