"""Opt-in keep-awake for hosts that spin an idle web service down (Render's free tier, after 15 minutes
without inbound requests): while dates are queued or running, request our own public /healthz every few
minutes, so that a backfill is not paused half-way. It costs instance hours; it is off by default."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import structlog

from daemon.db.connect import DB_ERRORS

log = structlog.get_logger("datesync.keepawake")

INTERVAL = 240.0  # well inside Render's 15 idle minutes, even if one request is lost

PENDING_SQL = "SELECT EXISTS (SELECT 1 FROM datesync.batch WHERE state IN ('queued', 'running'))"


class KeepAwake:
    """Ping `url` (our own /healthz, through the public address) every `interval` s while work is pending."""

    def __init__(self, pool: asyncpg.Pool, base_url: str, interval: float = INTERVAL) -> None:
        self.pool = pool
        self.url = base_url.rstrip("/") + "/healthz"
        self.interval = interval
        self.pings = 0

    async def keep_awake(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    async with self.pool.acquire() as conn:
                        pending = await conn.fetchval(PENDING_SQL)
                except DB_ERRORS:
                    continue  # the database is away; the daemon's own loop reports that
                if not pending:
                    continue
                try:
                    await client.get(self.url)
                    self.pings += 1
                except httpx.HTTPError as exc:
                    log.warning("keepawake_ping_failed", url=self.url, error=f"{type(exc).__name__}: {exc}")
