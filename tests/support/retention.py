"""Making batches old for retention tests, and reading what retention must keep."""

from __future__ import annotations

import asyncpg


async def backdate(conn: asyncpg.Connection, batch_ids: list[int], days: int) -> None:
    """Move finished batches' finish time `days` into the past, as the engine would have written it then (its
    flag lets the guard trigger accept a change of timings)."""
    async with conn.transaction():
        await conn.execute("SELECT datesync.engine_on()")
        done = await conn.execute(
            "UPDATE datesync.batch SET finished_at = finished_at - make_interval(days => $2) "
            "WHERE id = ANY($1::bigint[]) AND finished_at IS NOT NULL", batch_ids, days)
        await conn.execute("SELECT datesync.engine_off()")
    assert done == f"UPDATE {len(batch_ids)}", done


async def footprint(conn: asyncpg.Connection, batch_id: int) -> dict[str, object]:
    """A batch's row (counts, state, times) and how many task and event rows it has."""
    row = await conn.fetchrow(
        "SELECT state::text, days, queued, running, succeeded, failed, skipped, cancelled, finished_at, "
        "(SELECT count(*) FROM datesync.task t WHERE t.batch_id = b.id) AS tasks, "
        "(SELECT count(*) FROM datesync.event e WHERE e.batch_id = b.id) AS events "
        "FROM datesync.batch b WHERE id = $1", batch_id)
    assert row is not None
    return dict(row)
