import httpx

from tests.support.server import live_server


async def test_healthz_and_readyz_on_a_real_server(dsn: str) -> None:
    async with live_server(dsn, daemon=True) as live, httpx.AsyncClient(base_url=live.base_url) as client:
        assert (await client.get("/healthz")).json() == {"status": "success", "data": {"alive": True}}
        assert live.daemon is not None
        await live.daemon.listener.connected.wait()
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
