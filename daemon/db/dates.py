"""The `date` codec of every datesync connection: it reads any date PostgreSQL holds, not only those Python can.

PostgreSQL's dates run from 4714 BC to 5874897 AD, plus ±infinity; `datetime.date` has years 1 to 9999. asyncpg's
own codec raises `ValueError` on the rest (a BC date is "ordinal must be >= 1"), from inside whatever query read
the row: a batch that a psql INSERT gave a BC date crash-looped the daemon and made the API answer 500. The
database now refuses such dates (0007_date_bounds.sql), but rows from before stay, and a reader must survive them.

Such a date is decoded as an `OutOfRangeDate`: a `datetime.date` (so sorting, comparing and formatting code keeps
working) whose value is the nearest date Python has (`date.min` or `date.max`, which keeps its order among real
dates) and whose text is PostgreSQL's own ("4713-01-01 BC", "10000-01-01", "infinity"), which is what the API
and the CLI show. Written back as a parameter it is the original date again. The engine never hands one to a
handler: the database keeps these dates out of runnable tasks, and fails a batch that holds one.
"""

from __future__ import annotations

import datetime
from typing import Self

import asyncpg

# The binary format counts days from 2000-01-01; these two values are the infinities.
_PG_EPOCH = datetime.date(2000, 1, 1).toordinal()
_PG_INFINITY = 2**31 - 1
_PG_MINUS_INFINITY = -(2**31)
_FIRST = datetime.date.min.toordinal() - _PG_EPOCH
_LAST = datetime.date.max.toordinal() - _PG_EPOCH
_CYCLE = 146_097  # days in 400 Gregorian years: the calendar repeats, so far dates are shifted into Python's range


class OutOfRangeDate(datetime.date):
    """A date PostgreSQL holds but `datetime.date` cannot; prints as PostgreSQL prints it."""

    __slots__ = ("pg_days",)
    pg_days: int

    def __new__(cls, pg_days: int) -> Self:
        nearest = datetime.date.min if pg_days < _FIRST else datetime.date.max
        self = super().__new__(cls, nearest.year, nearest.month, nearest.day)
        self.pg_days = pg_days  # days from 2000-01-01, as PostgreSQL sends it: written back unchanged
        return self

    def isoformat(self) -> str:
        if self.pg_days == _PG_INFINITY:
            return "infinity"
        if self.pg_days == _PG_MINUS_INFINITY:
            return "-infinity"
        ordinal = self.pg_days + _PG_EPOCH
        if ordinal < 1:
            cycles = -ordinal // _CYCLE + 1
            day = datetime.date.fromordinal(ordinal + cycles * _CYCLE)
            year = 1 - (day.year - 400 * cycles)  # astronomical year 0 is 1 BC, -1 is 2 BC, ...
            return f"{year:04d}-{day.month:02d}-{day.day:02d} BC"
        cycles = (ordinal - datetime.date.max.toordinal()) // _CYCLE + 1
        day = datetime.date.fromordinal(ordinal - cycles * _CYCLE)
        return f"{day.year + 400 * cycles:04d}-{day.month:02d}-{day.day:02d}"

    __str__ = isoformat

    def __repr__(self) -> str:
        return f"OutOfRangeDate({self.isoformat()!r})"

    def __reduce__(self) -> tuple[type[Self], tuple[int]]:
        return type(self), (self.pg_days,)


def _decode(value: tuple[int]) -> datetime.date:
    days = value[0]
    if _FIRST <= days <= _LAST:
        return datetime.date.fromordinal(days + _PG_EPOCH)
    return OutOfRangeDate(days)


def _encode(value: datetime.date) -> tuple[int]:
    if isinstance(value, OutOfRangeDate):
        return (value.pg_days,)
    # asyncpg's own convention, kept for any caller (or handler) relying on it: date.min/max are -infinity/infinity.
    if value == datetime.date.max:
        return (_PG_INFINITY,)
    if value == datetime.date.min:
        return (_PG_MINUS_INFINITY,)
    return (value.toordinal() - _PG_EPOCH,)


async def register(conn: asyncpg.Connection) -> None:
    """Use this module's codec for `date` (and `date[]`) on `conn`; resolved without a query (pg_catalog)."""
    await conn.set_type_codec("date", schema="pg_catalog", encoder=_encode, decoder=_decode, format="tuple")
