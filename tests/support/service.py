"""A real `datesync run` subprocess for the tests that drive the product as a user does (the README's examples)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx

from tests.support.daemons import ROOT
from tests.support.waiting import wait_for

DATESYNC = Path(sys.executable).with_name("datesync")


@contextlib.asynccontextmanager
async def datesync_run(env: Mapping[str, str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`datesync run` with `env` (which sets PORT), its log in `log`; yields once /readyz answers 200, and stops
    it with SIGTERM on exit."""
    with log.open("w") as out:
        server = await asyncio.create_subprocess_exec(str(DATESYNC), "run", env=dict(env), cwd=ROOT,
                                                      stdout=asyncio.subprocess.DEVNULL, stderr=out)
    try:
        async def up() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"http://127.0.0.1:{env['PORT']}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(up, timeout=60)
        yield server
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)
