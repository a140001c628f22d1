"""What `make run` prints, read as a newcomer reads it: one line per retried attempt and the traceback once, when
the date fails for good; uvicorn's lines under its own name; an access line at info for every answer that is not a
2xx, and none at info for the 2xx ones."""

from __future__ import annotations

import json
import os
import signal

import asyncpg
import httpx

from tests.e2e.test_production_shutdown import start_run, wait_ready
from tests.support.daemons import kill, wait_batch_final, wait_exit
from tests.support.server import free_port


async def test_the_run_log_says_each_thing_once_in_its_own_name(dsn: str, db: asyncpg.Connection) -> None:
    port = free_port()
    proc, log = start_run(dsn, port, {"DATESYNC_DEMO_DELAY_MS": "5", "DATESYNC_DEMO_FAIL_DATES": "2024-03-02",
                                      "DATESYNC_MAX_ATTEMPTS": "3", "LOG_LEVEL": "info"})
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base, proc, log)
        async with httpx.AsyncClient(base_url=base) as client:
            answer = await client.post("/api/v1/sync-status/sync/batch",
                                       json={"start_date": "2024-03-01", "end_date": "2024-03-03"})
            assert answer.status_code == 202
            await wait_batch_final(db, answer.json()["data"]["batch_id"])
            assert (await client.get("/api/v1/sync-status/batches/404404")).status_code == 404
            assert (await client.get("/healthz")).status_code == 200
        os.killpg(proc.pid, signal.SIGTERM)
        await wait_exit(proc, 30)
    finally:
        kill(proc)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    retries = [x for x in lines if x["event"] == "date_sync_failed_will_retry"]
    final = [x for x in lines if x["event"] == "date_sync_failed"]
    assert len(retries) == 2 and all("exception" not in x for x in retries), retries
    assert len(final) == 1 and "Traceback" in final[0]["exception"], final
    uvicorn = [x for x in lines if "uvicorn" in x.get("logger", "")]
    assert uvicorn and all(x["logger"] == "uvicorn" for x in uvicorn), uvicorn
    access = [x for x in lines if x["event"] == "http_request"]
    assert [(x["method"], x["path"], x["status"], x["level"]) for x in access] == [
        ("GET", "/api/v1/sync-status/batches/404404", 404, "info")], access
    assert all(isinstance(x["ms"], float | int) for x in access)
