"""The `datesync` command line."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import asyncpg
import structlog
import typer
from rich.console import Console
from rich.table import Table

from daemon import logs
from daemon.db.connect import wait_until_reachable
from daemon.db.queries import q
from daemon.errors import DatesyncError
from daemon.runtime import database, prepare
from daemon.settings import Settings
from daemon.sync import attempt
from datesync import service
from datesync.follow import UrlOption, follow_batch

T = TypeVar("T")

app = typer.Typer(
    help="Keep PostgreSQL in step with a daily data source, and backfill any date range durably.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

Port = Annotated[int | None, typer.Option(help="Web port [env: PORT, default 8000].", show_default=False)]
Host = Annotated[str | None, typer.Option(help="Web bind address [env: HOST].", show_default=False)]
Concurrency = Annotated[
    int | None, typer.Option(help="Dates run at once [env: DATESYNC_CONCURRENCY, default 4].", show_default=False)
]
HandlerOpt = Annotated[
    str | None,
    typer.Option(help="Handler of the default source: demo, noop, http, sql or package.module:function "
                      "[env: DATESYNC_HANDLER].", show_default=False),
]


def _settings(**overrides: object) -> Settings:
    env = {"PORT": "port", "HOST": "host", "DATESYNC_CONCURRENCY": "concurrency", "DATESYNC_HANDLER": "handler"}
    for var, key in env.items():
        if overrides.get(key) is not None:
            os.environ[var] = str(overrides[key])
    settings = Settings.from_env()
    level = os.environ.get("LOG_LEVEL", "info").upper()
    logs.configure(settings.log_format, getattr(logging, level, logging.INFO))
    return settings


def _event_loop_run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop where it is installed: asyncpg and uvicorn do their I/O measurably faster there."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(_exiting(coro))
    return uvloop.run(_exiting(coro))


async def _exiting(coro: Coroutine[Any, Any, T]) -> T:
    """The coroutine, then a bound on the loop's clean-up: a handler that could not be stopped would hold it."""
    code = 2
    try:
        result = await coro
        code = 0
        return result
    finally:
        attempt.exit_regardless(code)


def _run(coro_factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning datesync's errors into a one-line message and exit code 2."""
    try:
        return _event_loop_run(coro_factory())  # type: ignore[arg-type]
    except DatesyncError as exc:
        if os.environ.get("LOG_FORMAT", "").strip() == "json":
            # A log collector reads JSON lines: the last word must be one too.
            structlog.get_logger("datesync.cli").error("command_failed", error=str(exc))
        else:
            err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _settings_or_exit(**overrides: object) -> Settings:
    try:
        return _settings(**overrides)
    except DatesyncError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


@app.command()
def run(port: Port = None, host: Host = None, concurrency: Concurrency = None, handler: HandlerOpt = None) -> None:
    """Everything in one process: migrations, the daemon and the web server (the embedded database when no
    DATABASE_URL is set)."""
    settings = _settings_or_exit(port=port, host=host, concurrency=concurrency, handler=handler)
    _run(lambda: service.serve(settings, web=True, daemon=True))


@app.command()
def daemon(concurrency: Concurrency = None, handler: HandlerOpt = None) -> None:
    """The sync daemon alone: LISTEN, claim dates, run handlers (scale out by running several)."""
    settings = _settings_or_exit(concurrency=concurrency, handler=handler)
    _run(lambda: service.serve(settings, web=False, daemon=True))


@app.command()
def web(port: Port = None, host: Host = None) -> None:
    """The web API and status page alone (no sync work in this process)."""
    settings = _settings_or_exit(port=port, host=host)
    _run(lambda: service.serve(settings, web=True, daemon=False))


@app.command()
def migrate() -> None:
    """Apply pending database migrations (every start does this too)."""
    settings = _settings_or_exit()

    async def go() -> None:
        async with database(settings, own_embedded=False) as db:
            await prepare(db, settings, service.sources_for(settings))
        out.print("migrations are current")

    _run(go)


def _parse_day(value: str, name: str) -> datetime.date:
    try:
        if len(value) != 10:
            raise ValueError
        return datetime.date.fromisoformat(value)
    except ValueError:
        err.print(f"[bold red]error:[/] {name} must be a real date written YYYY-MM-DD, got {value!r}")
        raise typer.Exit(2) from None


async def _with_conn(settings: Settings, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async with database(settings, own_embedded=False) as db:
        if db.embedded is not None:  # we started it just for this command: make sure the schema exists
            await prepare(db, settings, service.sources_for(settings))
        conn = await wait_until_reachable(db.dsn, 30, "datesync-cli")
        try:
            return await fn(conn)
        finally:
            await conn.close()


@app.command()
def batch(
    start: Annotated[str, typer.Argument(help="First date, YYYY-MM-DD.")],
    end: Annotated[str, typer.Argument(help="Last date, YYYY-MM-DD (inclusive).")],
    force: Annotated[bool, typer.Option("--force", help="Re-sync dates already synced.")] = False,
    source: Annotated[str, typer.Option(help="Source to sync.")] = "default",
    follow: Annotated[bool, typer.Option("--follow", help="Show live progress until the batch ends.")] = False,
    url: UrlOption = None,
) -> None:
    """Request a backfill of START..END; prints the batch id."""
    settings = _settings_or_exit()
    start_day, end_day = _parse_day(start, "START"), _parse_day(end, "END")

    async def insert(conn: asyncpg.Connection) -> int:
        try:
            row = await conn.fetchrow(q("batch_insert"), source, start_day, end_day, force, None, "cli")
        except (asyncpg.CheckViolationError, asyncpg.NotNullViolationError) as exc:
            raise DatesyncError(exc.message) from None
        assert row is not None
        return int(row["id"])

    batch_id = _run(lambda: _with_conn(settings, insert))
    out.print(batch_id)
    if follow:  # exit 0 only if no date failed
        raise typer.Exit(_run(lambda: follow_batch(settings, batch_id, url, progress_console=err, out=out)))


@app.command()
def watch(batch_id: Annotated[int, typer.Argument(help="Batch to follow.")], url: UrlOption = None) -> None:
    """Follow a batch's progress live until it ends, then list its failed dates; exit 0 only if none failed."""
    settings = _settings_or_exit()
    raise typer.Exit(_run(lambda: follow_batch(settings, batch_id, url, progress_console=err, out=out)))


@app.command()
def status(
    from_: Annotated[str | None, typer.Option("--from", help="First date, YYYY-MM-DD.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last date, YYYY-MM-DD.")] = None,
) -> None:
    """Per-date sync status, and the batches still running."""
    settings = _settings_or_exit()
    lo = _parse_day(from_, "--from") if from_ else datetime.date.min
    hi = _parse_day(to, "--to") if to else datetime.date.max

    async def read(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        days = await conn.fetch(
            "SELECT source, day, status::text, attempts, rows_synced, error, synced_at FROM datesync.day "
            "WHERE day BETWEEN $1 AND $2 ORDER BY source, day", lo, hi)
        batches = await conn.fetch(
            "SELECT * FROM datesync.batch_progress WHERE state IN ('queued', 'running') ORDER BY batch_id")
        return list(days), list(batches)

    days, batches = _run(lambda: _with_conn(settings, read))
    table = Table("source", "day", "status", "attempts", "rows", "synced at", "error")
    for d in days:
        table.add_row(d["source"], str(d["day"]), d["status"], str(d["attempts"]), str(d["rows_synced"] or ""),
                      d["synced_at"].isoformat(timespec="seconds") if d["synced_at"] else "", d["error"] or "")
    out.print(table)
    for b in batches:
        out.print(f"batch {b['batch_id']} {b['state']}: {b['done']}/{b['days']} done, {b['failed']} failed, "
                  f"{b['running']} running")


@app.command()
def gaps(
    from_: Annotated[str, typer.Argument(metavar="FROM", help="First date, YYYY-MM-DD.")],
    to: Annotated[str, typer.Argument(metavar="TO", help="Last date, YYYY-MM-DD.")],
    source: Annotated[str, typer.Option(help="Source to check.")] = "default",
    backfill: Annotated[bool, typer.Option("--backfill", help="Request exactly the missing dates.")] = False,
) -> None:
    """List dates in FROM..TO that are missing or failed; with --backfill, request exactly those (one batch per
    contiguous range) and print the batch ids."""
    settings = _settings_or_exit()
    lo, hi = _parse_day(from_, "FROM"), _parse_day(to, "TO")
    if lo > hi:
        err.print("[bold red]error:[/] FROM must not be after TO")
        raise typer.Exit(2)
    if (hi - lo).days + 1 > settings.max_range_days:
        err.print(f"[bold red]error:[/] the range is {(hi - lo).days + 1} days; the limit is "
                  f"{settings.max_range_days} days (DATESYNC_MAX_RANGE_DAYS)")
        raise typer.Exit(2)

    async def go(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        if not await conn.fetchval(q("source_exists"), source):
            raise DatesyncError(f'unknown source "{source}"')
        batches: list[asyncpg.Record] = []
        async with conn.transaction():  # all the ranges' batches or none
            rows = await conn.fetch(q("day_gaps"), source, lo, hi)
            if backfill:
                try:
                    for start, end in dict.fromkeys((r["range_start"], r["range_end"]) for r in rows):
                        row = await conn.fetchrow(q("batch_insert"), source, start, end, False, None, "cli")
                        assert row is not None
                        batches.append(row)
                except (asyncpg.CheckViolationError, asyncpg.NotNullViolationError) as exc:
                    raise DatesyncError(exc.message) from None
        return list(rows), batches

    rows, batches = _run(lambda: _with_conn(settings, go))
    if not rows:
        out.print(f"no gaps: every date of {source} from {lo} to {hi} is synced or running")
        return
    table = Table("day", "status")
    for r in rows:
        table.add_row(r["day"].isoformat(), r["status"])
    out.print(table)
    ranges = len({r["range_start"] for r in rows})
    out.print(f"{len(rows)} of {(hi - lo).days + 1} dates of {source} are missing or failed, "
              f"in {ranges} range{'s' if ranges > 1 else ''}")
    for b in batches:
        out.print(f"batch {b['id']}: {b['start_date']}..{b['end_date']} ({b['days']} days) requested")


@app.command()
def retry(batch_id: Annotated[int, typer.Argument(help="Batch whose failed dates to requeue.")]) -> None:
    """Requeue a finished batch's failed dates."""
    settings = _settings_or_exit()

    async def go(conn: asyncpg.Connection) -> int:
        async with conn.transaction():
            row = await conn.fetchrow(q("batch_retry"), batch_id)
            if row is not None:
                await conn.execute(q("event_insert_batch"), batch_id, "running", {"retry": row["requeued"]})
                await conn.execute("SELECT pg_notify('datesync_batch', $1)", str(batch_id))
        if row is None:
            raise DatesyncError(f"batch {batch_id} has no failed dates to retry (or is unknown or still running)")
        return int(row["requeued"])

    out.print(f"requeued {_run(lambda: _with_conn(settings, go))} dates of batch {batch_id}")


@app.command()
def cancel(batch_id: Annotated[int, typer.Argument(help="Batch to cancel.")]) -> None:
    """Cancel a batch: queued dates are dropped, running ones are interrupted."""
    settings = _settings_or_exit()

    async def go(conn: asyncpg.Connection) -> None:
        if await conn.fetchrow(q("batch_request_cancel"), batch_id) is None:
            raise DatesyncError(f"batch {batch_id} is unknown or has already ended")

    _run(lambda: _with_conn(settings, go))
    out.print(f"cancel requested for batch {batch_id}")


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes, one repetition: under a minute.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    repeats: Annotated[int | None, typer.Option(help="Repetitions of each drain (median reported).")] = None,
    drain_dates: Annotated[int | None, typer.Option(help="Dates in the concurrency-10 drain.")] = None,
) -> None:
    """Measure the engine: drain rate, wake latency, API and SSE latency, claim cost, memory, connections."""
    import dataclasses
    import json

    from datesync import bench as benchmarks

    settings = _settings_or_exit()
    sizes = benchmarks.Sizes.quick() if quick else benchmarks.Sizes()
    if repeats is not None:
        sizes = dataclasses.replace(sizes, repeats=repeats)
    if drain_dates is not None:
        sizes = dataclasses.replace(sizes, drain_dates=drain_dates)

    def progress(step: str) -> None:
        err.print(f"[dim]bench: {step}…[/]")

    results = _run(lambda: benchmarks.run(settings, sizes, progress))
    if json_:
        print(json.dumps(results))
        return
    table = Table("measure", "value")
    for key, value in results.items():
        table.add_row(key, f"{value:,.3f}")
    out.print(table)


@app.command()
def psql() -> None:
    """Open psql on datesync's database (the embedded one's own psql when no DATABASE_URL is set)."""
    settings = _settings_or_exit()
    from daemon.embedded import EmbeddedPostgres, bin_dir

    if settings.database_url:
        os.execvp("psql", ["psql", settings.database_url])
    server = EmbeddedPostgres(settings.data_dir)
    if server.running_pid() is None:
        err.print(f"the embedded database in {Path(settings.data_dir)} is not running; start `datesync run`")
        raise typer.Exit(2)
    executable = str(bin_dir() / "psql")
    os.execv(executable, [executable, server.dsn()])


def main() -> None:
    app(prog_name="datesync")


if __name__ == "__main__":  # pragma: no cover
    main()
