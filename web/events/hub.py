"""One LISTEN connection per web process, fanned out to every SSE client through bounded per-client queues.

The hub wakes on a NOTIFY (channel `datesync_event`, empty payload), on every (re)connect of its listener and on
a slow safety timer; each time it reads the events after the last one it saw, in one query per page, and offers
each page to every client. Offering never waits: a client whose queue is full is disconnected (it resumes with
Last-Event-ID), so a slow reader costs the others nothing and memory stays bounded.

Pages are shared: every client's queue holds references to the same encoded messages, not copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
from collections.abc import Sequence

import asyncpg
import structlog

from datesync.daemon.backoff import Backoff
from datesync.daemon.db.connect import DB_ERRORS
from datesync.daemon.db.queries import q
from datesync.daemon.listener import Listener
from datesync.daemon.settings import Settings

log = structlog.get_logger("datesync.web.events")

EVENT_CHANNEL = "datesync_event"


# Waits while the database fails the hub's reads; clients keep their streams meanwhile.
READ_RETRY = Backoff(0.5, cap=10.0)


@dataclasses.dataclass(frozen=True, slots=True)
class HubConfig:
    """Limits and timings of the event streams."""

    max_clients: int = 1000  # concurrent SSE clients per web process; more get a 503
    queue_size: int = 256  # pages (one per hub read) a client may have pending before it is dropped
    page_rows: int = 500  # events per read, for the hub and for replays
    heartbeat: float = 15.0  # seconds between keep-alive comments
    safety_interval: float = 30.0  # seconds between reads when no NOTIFY came (one can be lost on a reconnect)
    shutdown_grace: float = 1.0  # seconds an open stream gets to write its farewell on shutdown
    ready_timeout: float = 5.0  # how long a new client waits for the hub's first read before a 503
    read_concurrency: int = 2  # client snapshots and replays reading at once: they share the pool with the API
    retry_ms: int = 3000  # the `retry:` a client waits before reconnecting

    @classmethod
    def from_settings(cls, settings: Settings) -> HubConfig:
        """The defaults with DATESYNC_SSE_MAX_CLIENTS and the safety interval (the daemon's poll interval)."""
        return cls(max_clients=settings.sse_max_clients, safety_interval=settings.poll_interval)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One committed event, encoded once as its SSE message."""

    id: int
    batch_id: int
    final: bool  # a batch event for a final state (data.final)
    message: bytes

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Event:
        message = f"id: {row['id']}\nevent: {row['kind']}\ndata: {row['payload']}\n\n".encode()
        return cls(row["id"], row["batch_id"], row["final"], message)


class Signal(enum.Enum):
    HEARTBEAT = "heartbeat"
    SHUTDOWN = "shutdown"


Item = tuple[Event, ...] | Signal


class HubUnavailable(Exception):
    """The event stream cannot take a client now (full, starting, or shutting down)."""


class Client:
    """One SSE connection's mailbox; `batch_id` None means every batch."""

    def __init__(self, hub: Hub, batch_id: int | None, queue_size: int) -> None:
        self.hub = hub
        self.batch_id = batch_id
        self.queue: asyncio.Queue[Item] = asyncio.Queue(queue_size)
        # While a client replays from the table it is not yet reading its queue. If the queue fills then, its
        # contents are dropped and `overrun` tells the replay to read on from the table, which holds them all.
        self.live = False
        self.overrun = False
        self.writer: asyncio.Task[None] | None = None  # the task writing to the socket, cancelled on a drop
        self.dropped = False
        self.closing = False  # write the farewell and end (shutdown); the SHUTDOWN item only wakes the stream

    def offer(self, item: Item) -> None:
        """Queue `item` without waiting; a live client that cannot take it is disconnected."""
        if self.closing or self.dropped:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            if self.live:
                self.drop()
            else:
                self._clear()
                self.overrun = True
                self.hub.overruns += 1

    def shut_down(self) -> None:
        """Ask the stream to write its farewell and end (pending events are dropped; Last-Event-ID resumes)."""
        self.closing = True
        self._clear()
        self.queue.put_nowait(Signal.SHUTDOWN)

    def drop(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        self.hub.dropped_total += 1
        log.warning("sse_client_dropped", reason="queue full: the client is not reading fast enough",
                    batch_id=self.batch_id, queued=self.queue.qsize())
        self._clear()
        self.hub.remove(self)
        if self.writer is not None:
            self.writer.cancel()

    def _clear(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()


class Hub:
    """Reads new events once per wake-up and offers them to every connected client."""

    def __init__(self, pool: asyncpg.Pool, direct_dsn: str, config: HubConfig) -> None:
        self.pool = pool
        self.config = config
        # With a poll of 5 minutes or more the operator lets an idle database sleep: with nobody watching, the
        # listener neither pings nor reconnects after a suspend until a client arrives.
        self.listener = Listener(direct_dsn, [EVENT_CHANNEL], self._on_notify, self._on_connect,
                                 application_name="datesync-web-events",
                                 idle=lambda: config.safety_interval >= 300 and not self.clients)
        self.clients: set[Client] = set()
        self.last_seen: int | None = None  # the newest event id read; None until the first read
        self.ready = asyncio.Event()
        self.closing = False
        self.read_gate = asyncio.Semaphore(config.read_concurrency)
        self.connections_total = 0
        self.dropped_total = 0
        self.overruns = 0  # queues that filled while their client was still replaying (it read on from the table)
        self.reads = 0
        self._wake = asyncio.Event()

    # -- clients ------------------------------------------------------------------------------------

    async def register(self, batch_id: int | None) -> Client:
        """A new client, registered before it replays anything (so that nothing committed later is missed)."""
        if self.closing:
            raise HubUnavailable("the server is shutting down")
        if len(self.clients) >= self.config.max_clients:
            raise HubUnavailable(f"too many event-stream clients (limit {self.config.max_clients})")
        if not self.ready.is_set():
            try:
                await asyncio.wait_for(self.ready.wait(), self.config.ready_timeout)
            except TimeoutError:
                raise HubUnavailable("the event stream is starting (database unreachable?)") from None
        client = Client(self, batch_id, self.config.queue_size)
        self.clients.add(client)
        self.connections_total += 1
        self.listener.resume()
        return client

    def remove(self, client: Client) -> None:
        self.clients.discard(client)

    async def read_after(self, batch_id: int | None, after: int) -> list[Event]:
        """A client's replay: the next page of events after `after` from the table."""
        async with self.read_gate, self.pool.acquire() as conn:
            horizon = await conn.fetchval(q("event_horizon"))
            if batch_id is None:
                rows = await conn.fetch(q("event_list_after"), after, horizon, self.config.page_rows)
            else:
                rows = await conn.fetch(q("event_list_batch_after"), batch_id, after, horizon, self.config.page_rows)
        return [Event.from_row(r) for r in rows]

    # -- running ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Listen, read and beat until cancelled."""
        tasks = [
            asyncio.create_task(self.listener.run(), name="sse-listener"),
            asyncio.create_task(self._read_loop(), name="sse-reader"),
            asyncio.create_task(self._heartbeat_loop(), name="sse-heartbeat"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("sse_hub_task_crashed", task=task.get_name(), exc_info=task.exception())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close_streams(self) -> None:
        """End every open stream with a farewell comment; those that cannot write it in time are cut."""
        if self.closing:
            return
        self.closing = True
        clients = list(self.clients)
        for client in clients:
            client.shut_down()
        writers = [c.writer for c in clients if c.writer is not None and not c.writer.done()]
        if writers:
            _done, pending = await asyncio.wait(writers, timeout=self.config.shutdown_grace)
            for task in pending:
                task.cancel()
        log.info("sse_streams_closed", streams=len(clients))

    def disconnect_all(self) -> None:
        """End every open stream now, as a shutdown would, but keep serving (clients reconnect and resume)."""
        for client in list(self.clients):
            client.shut_down()

    def _on_notify(self, _channel: str, _payload: str) -> None:
        self._wake.set()

    async def _on_connect(self) -> None:
        # Whatever was committed while the listener was down is read now, from the table.
        self._wake.set()

    async def _read_loop(self) -> None:
        failures = 0
        while True:
            timeout = self.config.safety_interval
            try:
                await self._read()
                failures = 0
            except DB_ERRORS as exc:
                failures += 1
                if failures == 1:
                    log.warning("sse_hub_read_failed", error=f"{type(exc).__name__}: {exc}")
                timeout = READ_RETRY.delay(failures)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _read(self) -> None:
        self._wake.clear()
        self.reads += 1
        async with self.pool.acquire() as conn:
            # Its own statement, before the reads: no event at or below it can still commit (stream.sql).
            horizon: int = await conn.fetchval(q("event_horizon"))
            if self.last_seen is None or not self.clients:
                # Nobody to tell: move on to the horizon without reading payloads. Safe because a client
                # registering from now on replays from the table, with a snapshot taken after this one.
                self.last_seen = max(self.last_seen or 0, horizon)
                self.ready.set()
                return
            while True:
                rows = await conn.fetch(q("event_list_after"), self.last_seen, horizon, self.config.page_rows)
                if not rows:
                    return
                events = [Event.from_row(r) for r in rows]
                # No await between taking the page and offering it: a client registered before this point
                # receives the page, one registered after it replays these rows from the table.
                self.last_seen = events[-1].id
                self._fan_out(events)
                if len(rows) < self.config.page_rows:
                    return

    def _fan_out(self, events: Sequence[Event]) -> None:
        page = tuple(events)
        by_batch: dict[int, list[Event]] = {}
        for event in page:
            by_batch.setdefault(event.batch_id, []).append(event)
        pages = {batch_id: tuple(evs) for batch_id, evs in by_batch.items()}
        for client in list(self.clients):
            mine = page if client.batch_id is None else pages.get(client.batch_id)
            if mine:
                client.offer(mine)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat)
            for client in list(self.clients):
                client.offer(Signal.HEARTBEAT)
