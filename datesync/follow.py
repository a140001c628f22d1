"""`datesync batch --follow` and `datesync watch`: follow one batch to its end with a live progress bar.

The events come from the database the CLI wrote to: its event log, read with LISTEN datesync_event and then
`id > last`. A web server's stream is used only when one is named (`--url`, DATESYNC_URL) and it has proved that it
serves that same database: the batch its stream shows was created at the same microsecond, for the same source and
range, as the batch in our database. A server is never assumed from a default port, where another installation may
answer with its own batch of the same id. Both sources give the same event JSON and both resume from
the last id seen, so a dropped connection (or a switch from one to the other) loses and repeats nothing.

The first connection asks for the batch's events from its very first one (Last-Event-ID 0): the failures summary
and the rate need the whole history, not only what happens from now on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import json
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

import asyncpg
import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from datesync.daemon.db.connect import DB_ERRORS, wait_until_reachable
from datesync.daemon.db.queries import q
from datesync.daemon.errors import DatesyncError
from datesync.daemon.runtime import database, variables
from datesync.daemon.settings import Settings
from datesync.daemon.states import FINAL_TASK

API_PREFIX = "/api/v1/sync-status"
EVENT_CHANNEL = "datesync_event"
FINISHED = tuple(s.value for s in FINAL_TASK)
UNREADABLE: tuple[type[BaseException], ...] = (DatesyncError, *DB_ERRORS)  # our database cannot be read
RESUMABLE: tuple[type[BaseException], ...] = (httpx.TransportError, *DB_ERRORS)  # a lost connection: resume
PAGE = 500
DB_POLL = 5.0  # seconds between reads of the log when no NOTIFY came

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="Web server whose event stream to follow (env: DATESYNC_URL; default: none, the "
                               "database's event log is read). It is used only once it proves it serves the same "
                               "database.",
                 show_default=False),
]


def web_url(given: str | None) -> str | None:
    """The web server named by --url, else DATESYNC_URL; None when neither is set (follow the database)."""
    url = given or os.environ.get("DATESYNC_URL", "").strip()
    return url.rstrip("/").removesuffix(API_PREFIX) if url else None


@dataclasses.dataclass(frozen=True, slots=True)
class DayState:
    state: str
    attempt: int | None
    error: str | None


class Tracker:
    """A batch's progress, rebuilt from its snapshot and its events in id order."""

    def __init__(self, batch_id: int) -> None:
        self.batch_id = batch_id
        self.total = 0
        self.state = "queued"
        self.counts: dict[str, int] = {}
        self.days: dict[str, DayState] = {}
        self.last_id = 0
        self.final = False  # the newest event seen is the batch's final one
        self._finished_at: collections.deque[float] = collections.deque(maxlen=50)

    def snapshot(self, batch: dict[str, Any]) -> None:
        self.total = batch["days"]
        if not self.last_id:  # a resumed stream's snapshot is newer than the events still to come
            self.state = batch["state"]

    def event(self, event: dict[str, Any]) -> DayState | None:
        """Take one event; returns the day's new state when a date failed for good."""
        self.last_id = event["id"]
        data = event.get("data") or {}
        if event["kind"] == "batch":
            self.state = event["state"]
            self.final = bool(data.get("final"))
            self.total = data.get("days", self.total)
            if self.final:
                self.counts = {k: data.get(k, 0) for k in FINISHED}
            return None
        self.final = False
        if "counts" in data:
            self.counts = data["counts"]
            self.total = data["counts"].get("days", self.total)
        day = DayState(event["state"], event.get("attempt"), event.get("error"))
        if "progress" not in data:
            self.days[event["day"]] = day
        if day.state in FINISHED:
            self._finished_at.append(datetime.datetime.fromisoformat(event["at"]).timestamp())
        return day if day.state == "failed" else None

    @property
    def done(self) -> int:
        return sum(self.counts.get(k, 0) for k in FINISHED)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def rate(self) -> float | None:
        """Dates finished per second, over the latest finishes (from the events' commit times)."""
        times = self._finished_at
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])

    def failures(self) -> list[tuple[str, DayState]]:
        return sorted((day, s) for day, s in self.days.items() if s.state == "failed")

    def exit_code(self) -> int:
        return 0 if self.state == "succeeded" and self.failed == 0 else 1


class UnknownBatch(DatesyncError):
    """No such batch."""


class WrongServer(Exception):
    """The named web server serves another database than the one the CLI reads."""


class StreamUnavailable(Exception):
    """The web server answered, but not with the stream (503 while full or starting, or not datesync)."""


@dataclasses.dataclass
class Message:
    event: str | None = None
    data: str = ""


async def sse_messages(lines: AsyncIterator[str]) -> AsyncIterator[Message]:
    """Server-Sent Events messages with data, from the response's lines (comments and retry lines skipped)."""
    msg = Message()
    async for line in lines:
        if not line:
            if msg.data:
                yield msg
            msg = Message()
        elif line.startswith("event:"):
            msg.event = line[6:].strip()
        elif line.startswith("data:"):
            msg.data += line[5:].removeprefix(" ")


class Follower:
    """Follows one batch from the web stream or the database until its final event."""

    def __init__(self, settings: Settings, batch_id: int, url: str | None, bar: Progress, task: TaskID) -> None:
        self.settings = settings
        self.tracker = Tracker(batch_id)
        self.server = url
        self.url = f"{url}{API_PREFIX}/batches/{batch_id}/events"
        self.bar = bar
        self.task = task
        self.ended = False
        self.use_db = url is None
        self.expected: asyncpg.Record | None = None

    async def run(self) -> None:
        delay = 0.1
        if not self.use_db:
            self.expected = await self._our_batch()
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=45.0)) as http:
            while not self.ended:
                before = self.tracker.last_id
                try:
                    if self.use_db:
                        await self._from_database()
                    else:
                        await self._from_stream(http)
                except (httpx.ConnectError, httpx.ConnectTimeout, StreamUnavailable) as exc:
                    self.use_db = True
                    self._note(f"the web server at {self.url} cannot stream ({exc}); "
                               "following the database's event log instead")
                    continue
                except WrongServer as exc:
                    self.use_db = True
                    self._note(f"{exc}; following the database's event log instead")
                    continue
                except RESUMABLE as exc:
                    self._note(f"connection lost ({type(exc).__name__}); resuming after event {self.tracker.last_id}")
                if not self.ended:
                    delay = 0.1 if self.tracker.last_id > before else min(delay * 2, 3.0)
                    await asyncio.sleep(delay)

    # -- sources ------------------------------------------------------------------------------------

    async def _our_batch(self) -> asyncpg.Record | None:
        """The batch as our database has it (what a server's snapshot must match); None when the database cannot
        be read, and then the server the user named is trusted as given."""
        try:
            async with database(self.settings, own_embedded=False) as db:
                conn = await wait_until_reachable(db.direct_dsn, 10, "datesync-follow")
                try:
                    row: asyncpg.Record | None = await conn.fetchrow(q("batch_get"), self.tracker.batch_id,
                                                                     timeout=10)
                    return row
                finally:
                    with contextlib.suppress(*DB_ERRORS):
                        await conn.close()
        except UNREADABLE:
            return None

    def _check_server(self, shown: dict[str, Any] | None) -> None:
        """Raise WrongServer unless the server's batch is ours (same source, range and creation time)."""
        if self.expected is not None and not _same_batch(shown or {}, self.expected):
            raise WrongServer(f"the web server at {self.server} serves another database (its batch "
                              f"{self.tracker.batch_id} is not ours)")

    async def _from_stream(self, http: httpx.AsyncClient) -> None:
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(self.tracker.last_id)}
        async with http.stream("GET", self.url, headers=headers) as response:
            if response.status_code == 204:  # we have seen the final event already
                self.ended = True
                return
            if response.status_code == 404 and _is_envelope(await response.aread()):
                if self.expected is not None:  # our database has it: the server is not ours
                    raise WrongServer(f"the web server at {self.server} does not know batch {self.tracker.batch_id}")
                raise UnknownBatch(f"batch {self.tracker.batch_id} not found at {self.url}")
            if response.status_code != 200:
                raise StreamUnavailable(f"HTTP {response.status_code}")
            async for msg in sse_messages(response.aiter_lines()):
                data = json.loads(msg.data)
                if msg.event == "snapshot":
                    self._check_server(data.get("batch"))
                    self.tracker.snapshot(data["batch"])
                    self._show()
                elif msg.event in ("batch", "task"):
                    self._take(data)
        # The server ends a batch's stream right after its final event; any other end is a drop: resume.
        self.ended = self.tracker.final

    async def _from_database(self) -> None:
        async with database(self.settings, own_embedded=False) as db:
            # One direct connection both LISTENs and reads; any failure returns to run(), which resumes.
            conn = await wait_until_reachable(db.direct_dsn, self.settings.startup_timeout, "datesync-follow",
                                              variables(db, self.settings)[1])
            try:
                await self._follow_log(conn)
            finally:
                with contextlib.suppress(*DB_ERRORS):
                    await conn.close()

    async def _follow_log(self, conn: asyncpg.Connection) -> None:
        wake = asyncio.Event()
        await conn.add_listener(EVENT_CHANNEL, lambda *_: wake.set())
        horizon = await conn.fetchval(q("event_horizon"), timeout=10)  # its own statement first (stream.sql)
        snap = await conn.fetchrow(q("event_snapshot_batch"), self.tracker.batch_id, horizon, timeout=10)
        if snap is None:
            raise UnknownBatch(f"batch {self.tracker.batch_id} not found")
        self.tracker.snapshot(json.loads(snap["batch"]))
        self._show()
        while True:
            wake.clear()
            horizon = await conn.fetchval(q("event_horizon"), timeout=10)
            rows = await conn.fetch(q("event_list_batch_after"), self.tracker.batch_id, self.tracker.last_id, horizon,
                                    PAGE, timeout=10)
            for row in rows:
                self._take(json.loads(row["payload"]))
                if row["final"] and row["id"] >= snap["end_from"]:
                    self.ended = True
                    return
            if len(rows) == PAGE:
                continue
            if snap["ended"]:  # it had ended before we looked, and we have read all of it
                self.ended = True
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DB_POLL):
                    await wake.wait()

    # -- display ------------------------------------------------------------------------------------

    def _take(self, event: dict[str, Any]) -> None:
        failed = self.tracker.event(event)
        if failed is not None:
            self.bar.console.print(f"[red]{event['day']} failed[/] after {failed.attempt} attempts: {failed.error}")
        self._show()

    def _show(self) -> None:
        t = self.tracker
        rate = t.rate
        left = max(t.total - t.done, 0)
        eta = "-" if not rate or not left else str(datetime.timedelta(seconds=round(left / rate)))
        self.bar.update(self.task, total=max(t.total, 1), completed=t.done, state=t.state, failed=t.failed,
                        rate=f"{rate:.1f} dates/s" if rate else "- dates/s", eta=eta)

    def _note(self, text: str) -> None:
        self.bar.console.print(f"[yellow]{text}[/]")


def _same_batch(shown: dict[str, Any], ours: asyncpg.Record) -> bool:
    """A stream's batch is ours when source, range and creation time (to the microsecond) agree."""
    try:
        created = datetime.datetime.fromisoformat(shown.get("created_at") or "")
    except (TypeError, ValueError):
        return False
    return (shown.get("source"), shown.get("start_date"), shown.get("end_date"), created) == (
        ours["source"], ours["start_date"].isoformat(), ours["end_date"].isoformat(), ours["created_at"])


def _is_envelope(body: bytes) -> bool:
    try:
        return json.loads(body).get("status") == "error"
    except (ValueError, AttributeError):
        return False


def _summary(tracker: Tracker, out: Console) -> None:
    c = tracker.counts
    out.print(f"batch {tracker.batch_id} {tracker.state}: {c.get('succeeded', 0)} succeeded, {tracker.failed} "
              f"failed, {c.get('skipped', 0)} skipped, {c.get('cancelled', 0)} cancelled, of {tracker.total} dates")
    failures = tracker.failures()
    if failures:
        table = Table("date", "attempts", "error", title="failed dates")
        for day, state in failures:
            table.add_row(day, str(state.attempt or ""), state.error or "")
        out.print(table)


async def follow_batch(settings: Settings, batch_id: int, url: str | None, *, progress_console: Console,
                       out: Console) -> int:
    """Show a batch's progress until it ends, then its failures; 0 if no date failed, else 1."""
    bar = Progress(
        TextColumn(f"batch {batch_id} [bold]{{task.fields[state]}}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed[/]"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA {task.fields[eta]}"),
        console=progress_console,
    )
    task = bar.add_task("", total=1, state="connecting", failed=0, rate="- dates/s", eta="-")
    follower = Follower(settings, batch_id, web_url(url), bar, task)
    with bar:
        await follower.run()
    _summary(follower.tracker, out)
    return follower.tracker.exit_code()
