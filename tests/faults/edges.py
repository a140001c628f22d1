"""Handlers at the edges of what a handler may produce, loaded as `tests.faults.edges:NAME` (issue 15): texts the
database refuses (NUL, lone surrogates), control characters, a huge message, a credential, row counts of the wrong
type or size, and handlers that do not cooperate (block a thread, swallow cancellation).

DATESYNC_EDGE_SLEEP_S sets how long the uncooperative ones hold on (default an hour).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import time

from datesync.daemon.sync.context import SyncContext

# The demo's tables (run_log, daily) exist wherever these handlers run: the fault invariants read them.
from tests.faults.handlers import setup as setup

BASIC = base64.b64encode(b"alice:hunter2-very-secret").decode()
ERRORS: dict[str, str] = {
    "nul": "x\x00y",
    "surrogate": "bad \udc80 text \ud800",
    "control": "bell\x07 escape\x1b[31m red\x1b[0m back\x08 del\x7f c1\x85 end",
    "huge": "z" * 200_000,
    "basic": f"upstream echoed: Authorization: Basic {BASIC} (and again: basic {BASIC})",
}


def _hold() -> float:
    return float(os.environ.get("DATESYNC_EDGE_SLEEP_S", "3600"))


async def nul_error(day: datetime.date, ctx: SyncContext) -> int:
    raise RuntimeError(ERRORS["nul"])


async def surrogate_error(day: datetime.date, ctx: SyncContext) -> int:
    raise RuntimeError(ERRORS["surrogate"])


async def control_error(day: datetime.date, ctx: SyncContext) -> int:
    raise RuntimeError(ERRORS["control"])


async def huge_error(day: datetime.date, ctx: SyncContext) -> int:
    raise RuntimeError(ERRORS["huge"])


async def basic_error(day: datetime.date, ctx: SyncContext) -> int:
    raise RuntimeError(ERRORS["basic"])


class Weird(Exception):
    """An exception whose str() itself raises."""

    def __str__(self) -> str:
        raise ValueError("no text for you")


async def unprintable_error(day: datetime.date, ctx: SyncContext) -> int:
    raise Weird()


async def exits(day: datetime.date, ctx: SyncContext) -> int:
    """sys.exit() from a handler: the date fails, the daemon does not stop."""
    raise SystemExit(3)


async def nul_progress(day: datetime.date, ctx: SyncContext) -> int:
    """A progress note the event table's jsonb refuses as it is, then success."""
    await ctx.progress(1, 2, "half \x00 way \udc80")
    await ctx.progress(2, 2, "n" * 100_000)
    return 1


async def huge_rows(day: datetime.date, ctx: SyncContext) -> int:
    return 10**30


async def negative_rows(day: datetime.date, ctx: SyncContext) -> int:
    return -5


async def bool_rows(day: datetime.date, ctx: SyncContext) -> bool:
    return True


def blocking_sleep(day: datetime.date, ctx: SyncContext) -> int:
    """A plain function that blocks its thread (a synchronous client without a timeout)."""
    time.sleep(_hold())
    return 1


def blocking_quick(day: datetime.date, ctx: SyncContext) -> int:
    """A plain function that returns at once."""
    return 2


async def swallow_cancel(day: datetime.date, ctx: SyncContext) -> int:
    """Catches every cancellation and carries on (a `try: ... except BaseException: pass` around an await)."""
    deadline = time.monotonic() + _hold()
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            continue
    return 1


async def db_busy(day: datetime.date, ctx: SyncContext) -> int:
    """Works on its own connection for about DATESYNC_EDGE_BUSY_S seconds (a restart of the database cuts it)."""
    deadline = time.monotonic() + float(os.environ.get("DATESYNC_EDGE_BUSY_S", "1.5"))
    while time.monotonic() < deadline:
        await ctx.db.execute("SELECT pg_sleep(0.05)")
    return 1


# -- planned behaviour, for the generative test and the soak ------------------------------------------------

Behaviour = tuple[object, ...]
# day -> what the handler does for it: ("return", value) · ("raise", exception type, message) · ("hang",) ·
# ("swallow",) · ("block", seconds) · ("progress", done, total, note) · ("db_error", text) · ("close_db",)
PLANS: dict[datetime.date, Behaviour] = {}


class CustomBase(BaseException):
    """A BaseException of the handler's own (not an Exception)."""


async def planned(day: datetime.date, ctx: SyncContext) -> object:
    """Does what PLANS says for `day` (returns 1 for a day without a plan)."""
    from datesync.daemon.sync import threads

    plan = PLANS.get(day, ("return", 1))
    kind = plan[0]
    if kind == "return":
        return plan[1]
    if kind == "raise":
        kind_of, message = plan[1], plan[2]
        raise kind_of(message)  # type: ignore[operator]
    if kind == "hang":
        await asyncio.sleep(3600)
    if kind == "swallow":
        return await swallow_cancel(day, ctx)
    if kind == "block":
        await threads.run_in_thread(time.sleep, plan[1])
        return 1
    if kind == "progress":
        await ctx.progress(plan[1], plan[2], plan[3])  # type: ignore[arg-type]
        return 1
    if kind == "db_error":
        async with ctx.db.transaction():
            await ctx.db.execute("SELECT $1::text", plan[1])
        return 1
    if kind == "close_db":
        await ctx.db.close()
        await ctx.db.execute("SELECT 1")
    raise AssertionError(f"unknown plan {plan!r}")


async def swallow_everything(day: datetime.date, ctx: SyncContext) -> int:
    """A bare `except` around an await, in a loop: catches cancellation and the GeneratorExit of a forced close."""
    deadline = time.monotonic() + _hold()
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(0.05)
        except BaseException:  # the point of this handler
            continue
    return 1
