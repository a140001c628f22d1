"""One SSE stream: the snapshot, the replay from the table, then live events from the client's queue.

No gap, no repeat: the client is registered with the hub *before* the replay reads the table, so every event
committed after that moment reaches its queue, and everything committed before it is in the table when the
replay reads it (up to the log's horizon, datesync.event_horizon: no smaller id can commit after it is read, so
"id > last" never skips an event).
The two overlap; the stream skips any id it has already sent.

Written as a small ASGI response rather than with sse-starlette's EventSourceResponse: the hub must be able to
end a stream from outside (a dropped slow client, shutdown), its heartbeat is one timer for all clients rather
than one task per client, and sse-starlette's shutdown detection (uvicorn's signal handlers, or a process-wide
flag that is never reset) does not fit a process that runs uvicorn under its own signal handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence

import structlog
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from datesync.daemon.db.connect import DB_ERRORS
from datesync.web.events.hub import Client, Event, Signal

log = structlog.get_logger("datesync.web.events")

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keep-alive\n\n"
FAREWELL = b": the server is shutting down; reconnect with Last-Event-ID\n\n"
DB_DOWN = b": the database is unreachable; reconnect with Last-Event-ID\n\n"


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """Where one stream starts and when it ends."""

    snapshot: bytes  # the encoded snapshot message
    after: int  # replay the events after this id
    end_from: int | None = None  # batch streams: a final batch event with an id >= this ends the stream
    ended: bool = False  # the batch had ended at the snapshot: end after the replay


def _take(events: Sequence[Event], last: int, end_from: int | None) -> tuple[bytes, int, bool]:
    """The messages of `events` newer than `last`, up to a final event; the new last id; whether it ended."""
    out: list[bytes] = []
    for event in events:
        if event.id <= last:
            continue
        out.append(event.message)
        last = event.id
        if end_from is not None and event.final and event.id >= end_from:
            return b"".join(out), last, True
    return b"".join(out), last, False


async def messages(client: Client, plan: Plan) -> AsyncIterator[bytes]:
    """The bytes of one stream, from the `retry:` line to its end."""
    hub = client.hub
    yield f"retry: {hub.config.retry_ms}\n\n".encode() + plan.snapshot
    last = plan.after
    while True:
        if client.closing:
            yield FAREWELL
            return
        try:
            events = await hub.read_after(client.batch_id, last)
        except DB_ERRORS as exc:
            log.warning("sse_replay_failed", error=f"{type(exc).__name__}: {exc}")
            yield DB_DOWN
            return
        data, last, done = _take(events, last, plan.end_from)
        if data:
            yield data
        if done:
            return
        if len(events) < hub.config.page_rows:
            if not client.overrun:
                break
            client.overrun = False  # the queue overflowed while we read: the table has what it held
    if plan.ended:
        return
    client.live = True  # no await since the last overrun check: from here the queue holds everything newer
    while True:
        items = [await client.queue.get()]
        while not client.queue.empty():
            items.append(client.queue.get_nowait())
        if client.closing:
            yield FAREWELL
            return
        out: list[bytes] = []
        done = beat = False
        for item in items:
            if isinstance(item, Signal):
                beat = beat or item is Signal.HEARTBEAT
                continue
            data, last, done = _take(item, last, plan.end_from)
            out.append(data)
            if done:
                break
        chunk = b"".join(out)
        if chunk or beat:
            yield chunk or KEEPALIVE
        if done:
            return


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(StreamingResponse):
    """`text/event-stream` written by a task of its own, so that the hub can cut it (a slow client) and a
    client's disconnect ends it at once; the client leaves the hub however the stream ends."""

    def __init__(self, client: Client, body: AsyncIterator[bytes]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=HEADERS)
        self.client = client
        self.messages = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if scope.get("method") == "HEAD":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            writer = asyncio.create_task(self._write(send), name="sse-writer")
            self.client.writer = writer
            watcher = asyncio.create_task(_until_disconnect(receive), name="sse-disconnect")
            try:
                await asyncio.wait([writer, watcher], return_when=asyncio.FIRST_COMPLETED)
            finally:
                writer.cancel()
                watcher.cancel()
                await asyncio.gather(writer, watcher, return_exceptions=True)
            if not writer.cancelled() and writer.exception() is not None:
                log.error("sse_stream_failed", exc_info=writer.exception())
        finally:
            self.client.hub.remove(self.client)
            aclose = getattr(self.messages, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _write(self, send: Send) -> None:
        async for chunk in self.messages:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
