from datetime import time

import pytest

from daemon.errors import SettingsError
from daemon.settings import Settings


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
        ("DATESYNC_MAX_RANGE_DAYS", "0"),
        ("DATESYNC_POOLED", "yes"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: value})
    assert var in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize("value", ["auto", "on", "off", "ON", " Off "])
def test_pooled_takes_auto_on_or_off(value: str) -> None:
    assert Settings.from_env({"DATESYNC_POOLED": value}).pooled == value.strip().lower()
