"""DATESYNC_<NAME>_AFTER: parsed into a graph of sources, and refused (naming the variable) when it cannot be kept."""

from __future__ import annotations

import pytest

from datesync.daemon.dependencies import Upstream, parse_after, read_graph
from datesync.daemon.errors import SettingsError
from datesync.daemon.settings import Settings

SOURCES = ["default", "orders", "fx", "rollup", "weekly"]


def test_the_same_date_windows_and_several_upstream_sources() -> None:
    assert parse_after("orders") == (Upstream("orders"),)
    assert parse_after(" orders:-6..0 , fx ") == (Upstream("orders", -6, 0), Upstream("fx"))
    assert parse_after("orders:+1..+2") == (Upstream("orders", 1, 2),)
    assert str(Upstream("orders", -6, 0)) == "orders:-6..0" and str(Upstream("fx")) == "fx"


def test_a_graph_is_read_for_each_configured_source() -> None:
    env = {"DATESYNC_ROLLUP_AFTER": "orders:-6..0,fx", "DATESYNC_WEEKLY_AFTER": "rollup", "DATESYNC_FX_AFTER": " "}
    assert read_graph(env, SOURCES, 3660) == {"rollup": (Upstream("orders", -6, 0), Upstream("fx")),
                                              "weekly": (Upstream("rollup"),)}


@pytest.mark.parametrize(("env", "message"), [
    ({"DATESYNC_ROLLUP_AFTER": "ordrs"},
     "DATESYNC_ROLLUP_AFTER=ordrs is invalid: unknown source 'ordrs' (configured: default, orders, fx, rollup, "
     "weekly)"),
    ({"DATESYNC_ROLLUP_AFTER": "rollup"}, "DATESYNC_ROLLUP_AFTER=rollup is invalid: a source cannot wait for itself"),
    ({"DATESYNC_ROLLUP_AFTER": "orders:-5000..0"},
     "DATESYNC_ROLLUP_AFTER=orders:-5000..0 is invalid: the offsets of orders reach past the range limit "
     "DATESYNC_MAX_RANGE_DAYS=3660"),
    ({"DATESYNC_ROLLUP_AFTER": "orders:1..-1"},
     "DATESYNC_ROLLUP_AFTER=orders:1..-1 is invalid: 'orders:1..-1': the window's first offset must not be after its "
     "last"),
    ({"DATESYNC_ROLLUP_AFTER": "orders;fx"},
     "DATESYNC_ROLLUP_AFTER=orders;fx is invalid: 'orders;fx': expected a source name, or name:FROM..TO (day offsets, "
     "as in orders:-6..0)"),
    ({"DATESYNC_ROLLUP_AFTER": "orders,orders:-1..0"},
     "DATESYNC_ROLLUP_AFTER=orders,orders:-1..0 is invalid: 'orders:-1..0': orders is listed twice"),
    ({"DATESYNC_ROLLUP_AFTER": "weekly", "DATESYNC_WEEKLY_AFTER": "fx", "DATESYNC_FX_AFTER": "rollup"},
     "the sources wait for each other in a cycle"),
])
def test_what_cannot_be_kept_is_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        read_graph(env, SOURCES, 3660)
    assert message in str(refused.value)
    assert str(refused.value).startswith("DATESYNC_")


def test_the_settings_refuse_it_at_start_as_any_bad_variable() -> None:
    env = {"DATESYNC_SOURCES": "orders=noop,rollup=noop", "DATESYNC_ROLLUP_AFTER": "orders:-7..0",
           "DATESYNC_MAX_RANGE_DAYS": "7"}
    with pytest.raises(SettingsError, match=r"^DATESYNC_ROLLUP_AFTER=orders:-7\.\.0 is invalid: the offsets"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "DATESYNC_MAX_RANGE_DAYS": "8"}).after == {"rollup": (Upstream("orders", -7, 0),)}
