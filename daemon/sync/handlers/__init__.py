"""Resolving a handler spec (`demo`, `noop`, `http`, `sql`, or `package.module:function`) to a callable."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from datesync.daemon.errors import DatesyncError, HandlerError
from datesync.daemon.sources import DEFAULT, SourceEnv
from datesync.daemon.sync import threads
from datesync.daemon.sync.context import SyncContext
from datesync.daemon.sync.handlers.base import Handler, HandlerFunc

__all__ = ["BUILTIN", "Handler", "load", "set_up"]

BUILTIN = ("demo", "noop", "http", "sql")


def load(spec: str, source: str = "default", env: Mapping[str, str] | None = None) -> Handler:
    """Load the handler of `source`; raise HandlerError (or SettingsError) naming the variable to fix.

    Built-in handlers read their settings through SourceEnv(source, env): `DATESYNC_<SOURCE>_X`, then
    `DATESYNC_X` (env defaults to os.environ).
    """
    label = "DATESYNC_HANDLER" if source == DEFAULT else f"DATESYNC_SOURCES (source {source})"
    if spec == "demo":
        from datesync.daemon.sync.handlers import demo

        return demo.handler(SourceEnv(source, env))
    if spec == "noop":
        from datesync.daemon.sync.handlers import noop

        return noop.handler()
    if spec == "http":
        from datesync.daemon.sync.handlers import http

        return http.handler(SourceEnv(source, env))
    if spec == "sql":
        from datesync.daemon.sync.handlers import sql

        return sql.handler(SourceEnv(source, env))
    return _load_custom(spec, f"{label}={spec!r}")


async def set_up(loaded: Mapping[str, Handler], pool: asyncpg.Pool) -> dict[str, Handler]:
    """Run every handler's setup once, before the daemon starts; return them without it so the daemon does not
    repeat it. A failure closes those already set up and raises HandlerError naming the source."""
    ready: dict[str, Handler] = {}
    try:
        for name, handler in loaded.items():
            try:
                if handler.setup is not None:
                    await handler.setup(pool)
            except DatesyncError:
                raise
            except Exception as exc:
                raise HandlerError(f"source {name}: the {handler.name} handler's setup failed: "
                                   f"{type(exc).__name__}: {exc}") from exc
            finally:
                ready[name] = dataclasses.replace(handler, setup=None)
    except BaseException:
        for handler in ready.values():
            if handler.close is not None:
                with contextlib.suppress(Exception):
                    await handler.close()
        raise
    return ready


def _load_custom(spec: str, label: str) -> Handler:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerError(f"{label}: expected one of {', '.join(BUILTIN)} or package.module:function")
    # Like uvicorn, look in the current folder too: `datesync` started from a console script would not.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise HandlerError(f"{label}: cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    func = getattr(module, attr, None)
    if func is None or not callable(func):
        raise HandlerError(f"{label}: {module_name} has no function {attr}")
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError) as exc:
        raise HandlerError(f"{label}: cannot read its signature: {exc}") from exc
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    required_kw = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    takes_varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    if (len(positional) < 2 and not takes_varargs) or len(required) > 2 or required_kw:
        raise HandlerError(f"{label}: a handler takes (day, ctx); {attr}{inspect.signature(func)} does not")
    # Optional module-level hooks: `async def setup(pool)` once at start, `async def close()` at stop.
    setup = getattr(module, "setup", None)
    close = getattr(module, "close", None)
    for hook, value in (("setup", setup), ("close", close)):
        if value is not None and not inspect.iscoroutinefunction(value):
            raise HandlerError(f"{label}: {module_name}.{hook} must be an async function")
    return Handler(name=spec, sync=_as_async(func), setup=setup, close=close)


def _as_async(func: Callable[..., Any]) -> HandlerFunc:
    if inspect.iscoroutinefunction(func):
        return func

    @functools.wraps(func)
    async def in_thread(day: datetime.date, ctx: SyncContext) -> int | None:
        # A plain function must not block the event loop that runs every other date; and one that never returns
        # must not keep the process alive (threads.py says why these are not asyncio.to_thread's).
        result: int | None = await threads.run_in_thread(func, day, ctx)
        return result

    return in_thread
