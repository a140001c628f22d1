"""DATESYNC_SOURCES parsing and the per-source environment."""

from __future__ import annotations

import pytest

from datesync import service
from datesync.daemon.errors import SettingsError
from datesync.daemon.settings import Settings
from datesync.daemon.sources import SourceEnv, SourceSpec, parse_sources


def test_sources_are_parsed_with_their_caps() -> None:
    assert parse_sources(" orders=http;concurrency=2 , rollup=sql,billing=acme.sync:daily ,") == (
        SourceSpec("orders", "http", 2), SourceSpec("rollup", "sql"), SourceSpec("billing", "acme.sync:daily"))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("orders", "expected name=handler"),
        ("Orders=http", "a source name is 1-63 of a-z"),
        ("orders=ftp", "handler 'ftp' is not one of demo, noop, http, sql or package.module:function"),
        ("orders=http;concurrency=0", "concurrency must be a whole number from 1 to 1000"),
        ("orders=http;concurrency=x", "concurrency must be a whole number"),
        ("orders=http;speed=2", "unknown option 'speed=2'"),
        ("orders=http,orders=sql", "'orders' is listed twice"),
        ("a-b=http,a_b=sql", "same variable prefix DATESYNC_A_B_"),
        (" , ", "expected name=handler items"),
    ],
)
def test_bad_sources_are_refused_naming_the_variable(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sources(raw)
    with pytest.raises(SettingsError, match=r"DATESYNC_SOURCES=.* is invalid"):
        Settings.from_env({"DATESYNC_SOURCES": raw})


def test_default_is_always_served_and_can_be_redefined() -> None:
    settings = Settings.from_env({"DATESYNC_HANDLER": "noop", "DATESYNC_SOURCES": "orders=http;concurrency=3"})
    assert service.sources_for(settings) == {"default": "noop", "orders": "http"}
    assert service.source_caps(settings) == {"orders": 3}
    redefined = Settings.from_env({"DATESYNC_SOURCES": "default=sql;concurrency=1"})
    assert service.sources_for(redefined) == {"default": "sql"}
    assert service.source_caps(redefined) == {"default": 1}
    assert service.sources_for(Settings.from_env({})) == {"default": "demo"}


def test_a_source_reads_its_own_variables_first() -> None:
    env = {"DATESYNC_HTTP_URL": "shared", "DATESYNC_ORDERS_HTTP_URL": "own", "DATESYNC_HTTP_KEY": " ",
           "DATESYNC_MY_SHOP_HTTP_KEY": "sku"}
    orders, shop, default = SourceEnv("orders", env), SourceEnv("my-shop", env), SourceEnv("default", env)
    assert orders.get("DATESYNC_HTTP_URL") == "own" and shop.get("DATESYNC_HTTP_URL") == "shared"
    assert shop.get("DATESYNC_HTTP_KEY") == "sku" and orders.get("DATESYNC_HTTP_KEY") is None  # blank is unset
    assert orders.name("DATESYNC_HTTP_URL") == "DATESYNC_ORDERS_HTTP_URL"
    assert shop.name("DATESYNC_HTTP_URL") == "DATESYNC_HTTP_URL (or DATESYNC_MY_SHOP_HTTP_URL)"
    assert default.name("DATESYNC_HTTP_URL") == "DATESYNC_HTTP_URL"
