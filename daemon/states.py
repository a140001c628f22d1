"""The states the database enforces (its enums, daemon/db/migrations/0001_schema.sql, 0009), mirrored for Python so that
no state is a bare string; tests/integration/test_states.py keeps the two equal. Who moves rows in and out of each
state is drawn in docs/state_machine.md."""

from __future__ import annotations

import enum


class BatchState(enum.StrEnum):
    QUEUED = "queued"  # inserted (API, CLI, psql, schedule); a daemon expands it
    RUNNING = "running"  # its tasks exist; the daemon that settles its last one ends it
    SUCCEEDED = "succeeded"  # every date succeeded or was skipped
    FAILED = "failed"  # at least one date failed for good
    CANCELLED = "cancelled"  # cancel_requested was honoured before it ended


class TaskState(enum.StrEnum):
    WAITING = "waiting"  # its upstream dates (DATESYNC_<NAME>_AFTER) have not synced yet; holds no slot
    QUEUED = "queued"  # new, waiting for a retry, handed back, or its lease expired
    RUNNING = "running"  # leased by one daemon; at most one per (source, day)
    SUCCEEDED = "succeeded"  # the handler returned
    FAILED = "failed"  # out of attempts
    SKIPPED = "skipped"  # the date was already synced (and the batch not forced)
    CANCELLED = "cancelled"  # its batch was cancelled before the date ended


class DayStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


UNFINISHED_BATCH = frozenset({BatchState.QUEUED, BatchState.RUNNING})
FINAL_TASK = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED})
