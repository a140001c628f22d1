"""Opt-in keep-awake for hosts that spin an idle web service down (Render's free tier, after 15 minutes
without inbound requests): while this process's daemon has dates running or waiting, request our own public
/healthz every few minutes, so that a backfill is not paused half-way. It costs instance hours; it is off by
default. It asks the in-process daemon, not the database, so it never keeps a sleeping database awake."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import structlog

log = structlog.get_logger("datesync.keepawake")

INTERVAL = 240.0  # well inside Render's 15 idle minutes, even if one request is lost


class KeepAwake:
    """Ping `base_url`/healthz every `interval` s while `pending()` says there is work."""

    def __init__(self, pending: Callable[[], bool], base_url: str, interval: float = INTERVAL) -> None:
        self.pending = pending
        self.url = base_url.rstrip("/") + "/healthz"
        self.interval = interval
        self.pings = 0

    async def keep_awake(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                await asyncio.sleep(self.interval)
                if not self.pending():
                    continue
                try:
                    await client.get(self.url)
                    self.pings += 1
                except httpx.HTTPError as exc:
                    log.warning("keepawake_ping_failed", url=self.url, error=f"{type(exc).__name__}: {exc}")
