"""The date codec's handling of dates Python cannot hold (daemon/db/dates.py); its round trips through a real
PostgreSQL are in tests/integration/test_date_bounds.py."""

from __future__ import annotations

import datetime
import pickle

import pytest

from datesync.daemon.db.dates import OutOfRangeDate, _decode, _encode

EPOCH = datetime.date(2000, 1, 1).toordinal()


@pytest.mark.parametrize(
    ("pg_days", "pg_text"),
    [
        (-2451545, "4714-11-24 BC"),  # PostgreSQL's first date (Julian day 0)
        (-2451507, "4713-01-01 BC"),
        (-730120, "0001-12-31 BC"),  # the day before Python's first
        (datetime.date.max.toordinal() - EPOCH + 1, "10000-01-01"),
        (2**31 - 1, "infinity"),
        (-(2**31), "-infinity"),
    ],
)
def test_a_date_python_cannot_hold_reads_as_postgresql_writes_it(pg_days: int, pg_text: str) -> None:
    value = _decode((pg_days,))
    assert isinstance(value, OutOfRangeDate) and isinstance(value, datetime.date)
    assert (value.isoformat(), str(value), f"{value}") == (pg_text, pg_text, pg_text)
    assert _encode(value) == (pg_days,)  # written back unchanged
    assert pickle.loads(pickle.dumps(value)).isoformat() == pg_text
    # It sorts where it belongs among the dates Python has.
    assert (value < datetime.date(1000, 1, 1)) == (pg_days < 0)


def test_ordinary_dates_are_plain_dates_and_keep_asyncpgs_infinity_convention() -> None:
    for day in (datetime.date(1, 1, 2), datetime.date(2025, 10, 1), datetime.date(9999, 12, 30)):
        assert type(_decode(_encode(day))) is datetime.date
        assert _decode(_encode(day)) == day
    assert _encode(datetime.date.min) == (-(2**31),)
    assert _encode(datetime.date.max) == (2**31 - 1,)
