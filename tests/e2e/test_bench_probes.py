"""The bench's raw keep-alive client (datesync/bench_probes.py) against the real web server: a connection the server
closed while it sat idle is opened again, as an HTTP client does, instead of failing the whole bench run."""

from __future__ import annotations

import asyncio

from datesync.bench_probes import KeepAliveClient
from datesync.daemon.settings import Settings
from tests.support.server import live_server

PATH = "/api/v1/sync-status/sync/batch"


async def test_a_connection_the_server_closed_while_idle_is_opened_again(dsn: str) -> None:
    # An open loop opens its connections ahead and keeps more than it uses at once: the server's keep-alive timer
    # closes one used a while ago, and its read deadline one that never sent a request. Both once ended
    # `datesync bench` with an IndexError halfway through its POST measure.
    settings = Settings(retry_delay=0.05, poll_interval=5, keepalive_timeout=1, read_timeout=1)
    async with live_server(dsn, settings) as live:
        port = int(live.base_url.rsplit(":", 1)[1])
        used, unused = KeepAliveClient(port), KeepAliveClient(port)
        await asyncio.gather(used.connect(), unused.connect())
        try:
            assert await used.post(PATH, {"start_date": "2024-01-01", "end_date": "2024-01-01"}) == 202
            await asyncio.sleep(1.6)  # past both timers: the server has closed both connections
            assert await used.post(PATH, {"start_date": "2024-01-02", "end_date": "2024-01-02"}) == 202
            assert await unused.post(PATH, {"start_date": "2024-01-03", "end_date": "2024-01-03"}) == 202
        finally:
            used.close()
            unused.close()
