from datetime import time

import pytest

from datesync.daemon.errors import SettingsError
from datesync.daemon.settings import Settings


def test_defaults_match_the_design() -> None:
    s = Settings.from_env({})
    assert (s.port, s.host, s.handler, s.concurrency, s.max_attempts) == (8000, "127.0.0.1", "demo", 4, 3)
    assert (s.task_timeout, s.retry_delay, s.lease, s.max_range_days) == (900, 10, 60, 3660)
    assert (s.timezone, s.schedule, s.api_token, s.cors_origins) == ("UTC", None, None, ())
    assert s.poll_interval == 30 and s.keepawake is False and str(s.data_dir) == ".datesync"
    assert s.pool_size == 6 and s.pooled == "auto"


def test_values_are_parsed() -> None:
    s = Settings.from_env({
        "PORT": "9000", "DATESYNC_CONCURRENCY": "10", "DATESYNC_SCHEDULE": "02:30",
        "DATESYNC_TIMEZONE": "Asia/Shanghai", "DATESYNC_CORS_ORIGINS": "https://a.example, https://b.example",
        "DATESYNC_KEEPAWAKE": "1", "LOG_FORMAT": "json", "DATESYNC_RETRY_DELAY": "0",
    })
    assert s.port == 9000 and s.concurrency == 10 and s.schedule == time(2, 30)
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert s.keepawake and s.log_format == "json" and s.retry_delay == 0 and s.tz.key == "Asia/Shanghai"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DATESYNC_CONCURRENCY", "abc"),
        ("DATESYNC_CONCURRENCY", "0"),
        ("PORT", "70000"),
        ("DATESYNC_TASK_TIMEOUT", "-1"),
        ("DATESYNC_TASK_TIMEOUT", "nan"),
        ("DATESYNC_LEASE", "0.5"),
        ("DATESYNC_TIMEZONE", "Mars/Olympus"),
        ("DATESYNC_SCHEDULE", "25:00"),
        ("DATESYNC_SCHEDULE", "2:30"),
        ("DATESYNC_KEEPAWAKE", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "verbose"),
        ("DATESYNC_STARTUP_TIMEOUT", "0"),
        ("DATESYNC_MAX_RANGE_DAYS", "0"),
        ("DATESYNC_POOLED", "yes"),
        ("DATESYNC_RETENTION", "-1"),
        ("DATESYNC_RETENTION", "30d"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: value})
    assert var in str(info.value) and repr(value) in str(info.value)


def test_served_hosts_default_to_loopback_the_bound_address_and_renders_name() -> None:
    loopback = ("localhost", "127.0.0.1", "[::1]")
    assert Settings.from_env({}).served_hosts == loopback
    # Bound to every interface the machine's own names are unknown: list them in DATESYNC_ALLOWED_HOSTS.
    assert Settings.from_env({"HOST": "0.0.0.0"}).served_hosts == loopback
    assert Settings.from_env({"HOST": "::"}).served_hosts == loopback
    assert Settings.from_env({"HOST": "10.0.0.5"}).served_hosts == (*loopback, "10.0.0.5")
    assert Settings.from_env({"HOST": "fd00::1"}).served_hosts == (*loopback, "[fd00::1]")
    on_render = Settings.from_env({"HOST": "0.0.0.0", "RENDER_EXTERNAL_HOSTNAME": "DateSync.onrender.com"})
    assert on_render.served_hosts == (*loopback, "datesync.onrender.com")
    # A list adds to our own names (the CLI's --follow asks 127.0.0.1, Render's check the onrender.com name).
    explicit = Settings.from_env({"DATESYNC_ALLOWED_HOSTS": "status.example.com, .Example.org,*,::1 , 10.0.0.5.",
                                  "RENDER_EXTERNAL_HOSTNAME": "x.onrender.com"})
    assert explicit.served_hosts == (*loopback, "x.onrender.com", "status.example.com", ".example.org", "*",
                                     "10.0.0.5")


def test_web_edge_settings() -> None:
    s = Settings.from_env({})
    assert (s.trusted_proxies, s.keepalive_timeout, s.read_timeout, s.max_connections) == ((), 5, 10.0, None)
    s = Settings.from_env({"DATESYNC_TRUSTED_PROXIES": "*", "DATESYNC_KEEPALIVE_TIMEOUT": "75",
                           "DATESYNC_READ_TIMEOUT": "2.5", "DATESYNC_MAX_CONNECTIONS": "1001"})
    assert (s.trusted_proxies, s.keepalive_timeout, s.read_timeout, s.max_connections) == (("*",), 75, 2.5, 1001)
    s = Settings.from_env({"DATESYNC_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,::1"})
    assert s.trusted_proxies == ("10.0.0.0/8", "127.0.0.1", "::1")
    assert Settings.from_env({"DATESYNC_TRUSTED_PROXIES": "10.0.0.1, *"}).trusted_proxies == ("*",)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DATESYNC_ALLOWED_HOSTS", "https://status.example.com"),
        ("DATESYNC_ALLOWED_HOSTS", "status.example.com:443"),
        ("DATESYNC_ALLOWED_HOSTS", "a b"),
        ("DATESYNC_ALLOWED_HOSTS", ","),
        ("RENDER_EXTERNAL_HOSTNAME", "not a host"),
        ("DATESYNC_TRUSTED_PROXIES", "render.com"),
        ("DATESYNC_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("DATESYNC_KEEPALIVE_TIMEOUT", "0"),
        ("DATESYNC_KEEPALIVE_TIMEOUT", "1.5"),
        ("DATESYNC_READ_TIMEOUT", "0"),
        ("DATESYNC_MAX_CONNECTIONS", "many"),
    ],
)
def test_bad_web_edge_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: value})
    assert var in str(info.value) and repr(value) in str(info.value)


def test_the_connection_cap_must_leave_room_above_the_event_streams() -> None:
    with pytest.raises(SettingsError, match=r"DATESYNC_MAX_CONNECTIONS=1000 .* DATESYNC_SSE_MAX_CLIENTS=1000"):
        Settings.from_env({"DATESYNC_MAX_CONNECTIONS": "1000"})
    with pytest.raises(SettingsError, match=r"DATESYNC_MAX_CONNECTIONS=50 .* DATESYNC_SSE_MAX_CLIENTS=50"):
        Settings.from_env({"DATESYNC_MAX_CONNECTIONS": "50", "DATESYNC_SSE_MAX_CLIENTS": "50"})
    assert Settings.from_env({"DATESYNC_MAX_CONNECTIONS": "51", "DATESYNC_SSE_MAX_CLIENTS": "50"}).max_connections == 51


def test_log_level_and_startup_timeout() -> None:
    assert (Settings.from_env({}).log_level, Settings.from_env({}).startup_timeout) == ("info", 60)
    s = Settings.from_env({"LOG_LEVEL": "WARNING", "DATESYNC_STARTUP_TIMEOUT": "2.5"})
    assert (s.log_level, s.startup_timeout) == ("warning", 2.5)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgressql://app:s3cret-pw@db.example.com/app",
         "DATABASE_URL=postgressql://app:***@db.example.com/app: the scheme must be postgresql:// or postgres://, "
         "not postgressql://; correct the start of the URL"),
        ("db.example.com:5432/app", "DATABASE_URL=db.example.com:5432/app: the scheme must be postgresql:// or "
         "postgres://, not db.example.com://; correct the start of the URL"),
        ("postgresql://app:s3cret-pw@db.example.com:54x2/app",
         "DATABASE_URL=postgresql://app:***@db.example.com:54x2/app: the port after the host is not a number from 0 "
         "to 65535; correct it (or leave it out for 5432)"),
    ],
)
def test_a_malformed_database_url_is_refused_with_its_password_masked(url: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"DATABASE_URL": url})
    assert str(info.value) == message


def test_postgres_and_postgresql_schemes_are_accepted() -> None:
    for url in ("postgres://u@h/d", "postgresql://u:p@h:5433/d?sslmode=require"):
        assert Settings.from_env({"DATABASE_DIRECT_URL": url}).database_direct_url == url


@pytest.mark.parametrize("value", ["auto", "on", "off", "ON", " Off "])
def test_pooled_takes_auto_on_or_off(value: str) -> None:
    assert Settings.from_env({"DATESYNC_POOLED": value}).pooled == value.strip().lower()
