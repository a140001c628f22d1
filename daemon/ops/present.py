"""Rows as the JSON objects docs/api.md fixes (Batch, Task, Day record); the envelope writes dates as ISO text."""

from __future__ import annotations

from typing import Any

import asyncpg

BATCH_FIELDS = ("source", "start_date", "end_date", "force", "state", "cancel_requested", "days", "queued",
                "running", "succeeded", "failed", "skipped", "cancelled", "done", "created_at", "started_at",
                "finished_at", "pruned_at", "waiting")
TASK_FIELDS = ("id", "day", "state", "attempt", "max_attempts", "error", "rows_synced", "run_after", "started_at",
               "finished_at", "duration_ms", "waiting_for")
DAY_FIELDS = ("source", "day", "status", "attempts", "rows_synced", "error", "batch_id", "synced_at", "updated_at",
              "stale_since")


def batch(row: asyncpg.Record) -> dict[str, Any]:
    """A datesync.batch_progress row as a Batch (its batch_id is the id)."""
    return {"id": row["batch_id"], **{name: row[name] for name in BATCH_FIELDS}}


def task(row: asyncpg.Record) -> dict[str, Any]:
    return {name: row[name] for name in TASK_FIELDS}


def day(row: asyncpg.Record) -> dict[str, Any]:
    return {name: row[name] for name in DAY_FIELDS}

