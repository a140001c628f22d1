"""Python's state enums are the database's, value for value and in the same order."""

from __future__ import annotations

import enum

import asyncpg
import pytest

from datesync.daemon.states import BatchState, DayStatus, TaskState


@pytest.mark.parametrize(("sql_type", "python"), [("datesync.batch_state", BatchState),
                                                  ("datesync.task_state", TaskState),
                                                  ("datesync.day_status", DayStatus)])
async def test_the_python_states_are_the_database_enums(db: asyncpg.Connection, sql_type: str,
                                                        python: type[enum.StrEnum]) -> None:
    assert await db.fetchval(f"SELECT enum_range(NULL::{sql_type})::text[]") == [s.value for s in python]
