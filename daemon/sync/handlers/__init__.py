"""Resolving a handler spec (`demo`, `noop`, `http`, `sql`, or `package.module:function`) to a callable."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from daemon.errors import HandlerError
from daemon.sync.context import SyncContext

HandlerFunc = Callable[[datetime.date, SyncContext], Awaitable[int | None]]
SetupFunc = Callable[[asyncpg.Pool], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Handler:
    """A loaded handler: the per-date function and an optional one-time set-up (tables, clients)."""

    name: str
    sync: HandlerFunc
    setup: SetupFunc | None = None
    close: Callable[[], Awaitable[None]] | None = None


BUILTIN = ("demo", "noop", "http", "sql")


def load(spec: str) -> Handler:
    """Load a handler; raise HandlerError with a clear reason when it cannot be used."""
    if spec == "demo":
        from daemon.sync.handlers import demo

        return demo.handler()
    if spec == "noop":
        from daemon.sync.handlers import noop

        return noop.handler()
    if spec in ("http", "sql"):
        module = importlib.import_module(f"daemon.sync.handlers.{spec}")
        made: Handler = module.handler()
        return made
    return _load_custom(spec)


def _load_custom(spec: str) -> Handler:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerError(
            f"DATESYNC_HANDLER={spec!r}: expected one of {', '.join(BUILTIN)} or package.module:function"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise HandlerError(f"DATESYNC_HANDLER={spec!r}: cannot import {module_name}: {exc}") from exc
    func = getattr(module, attr, None)
    if func is None or not callable(func):
        raise HandlerError(f"DATESYNC_HANDLER={spec!r}: {module_name} has no function {attr}")
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError) as exc:
        raise HandlerError(f"DATESYNC_HANDLER={spec!r}: cannot read its signature: {exc}") from exc
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(positional) < 2 or len(required) > 2:
        raise HandlerError(
            f"DATESYNC_HANDLER={spec!r}: a handler takes (day, ctx); {attr}{inspect.signature(func)} does not"
        )
    setup = getattr(module, "setup", None)
    return Handler(name=spec, sync=_as_async(func), setup=setup if inspect.iscoroutinefunction(setup) else None)


def _as_async(func: Callable[..., Any]) -> HandlerFunc:
    if inspect.iscoroutinefunction(func):
        return func

    @functools.wraps(func)
    async def run_in_thread(day: datetime.date, ctx: SyncContext) -> int | None:
        # A plain function must not block the event loop that runs every other date.
        result: int | None = await asyncio.to_thread(func, day, ctx)
        return result

    return run_in_thread
