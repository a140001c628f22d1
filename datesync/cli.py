"""The `datesync` command line."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import asyncpg
import structlog
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from datesync import service
from datesync.daemon import logs
from datesync.daemon.db.connect import wait_until_reachable
from datesync.daemon.errors import DatesyncError
from datesync.daemon.ops import batches, ledger
from datesync.daemon.ops.messages import Lang, preferred
from datesync.daemon.ops.problems import OperationError
from datesync.daemon.ops.validation import Limits, parse_date, validate_batch
from datesync.daemon.runtime import database, prepare, variables
from datesync.daemon.settings import Settings
from datesync.daemon.sync import attempt
from datesync.follow import UrlOption, follow_batch

T = TypeVar("T")

EXIT_CODES = (
    "Exit codes: 0 done; 1 the followed batch ended failed or cancelled (batch --follow, watch); 2 bad input or an "
    "error, with a message saying which."
)

app = typer.Typer(
    help="Keep PostgreSQL in step with a daily data source, and backfill any date range durably.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: Rich markup would eat "[env: PORT, default 8000]" as a style tag, and its panels label every
    # flag <bool>.
    rich_markup_mode=None,
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


# A flag stands for its variable: given, it is read (and validated) as if the variable held it.
FLAG_VARIABLES = {"port": "PORT", "host": "HOST", "concurrency": "DATESYNC_CONCURRENCY", "handler": "DATESYNC_HANDLER"}


def _settings(**flags: object) -> Settings:
    given = {FLAG_VARIABLES[name]: str(value) for name, value in flags.items() if value is not None}
    settings = Settings.from_env({**os.environ, **given})
    logs.configure(settings.log_format, getattr(logging, settings.log_level.upper()))
    return settings


def _fail(message: str, *, logged: bool = True) -> NoReturn:
    """Print the error as one line (a JSON line when logs are JSON and configured) and exit with code 2."""
    message = logs.scrub_text(message)
    if logged and os.environ.get("LOG_FORMAT", "").strip() == "json":
        # A log collector reads JSON lines: the last word must be one too.
        structlog.get_logger("datesync.cli").error("command_failed", error=message)
    else:
        # soft_wrap: rich would otherwise break a long message at the terminal's width (80 columns in a pipe);
        # escape: a message may hold [brackets] that rich would read as markup.
        err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


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


async def _cancelled_on_signals(coro: Awaitable[T], caught: list[signal.Signals]) -> T:
    """Await `coro`; SIGTERM or SIGHUP (a closed terminal) cancels it, so its `finally` blocks run: an embedded
    server a command started is stopped, not left behind. `serve` installs its own handlers over these."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def cancel(sig: signal.Signals) -> None:
        caught.append(sig)
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, cancel, sig)
    try:
        return await coro
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _run(coro_factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning datesync's errors into a one-line message and exit code 2."""
    caught: list[signal.Signals] = []
    try:
        return _event_loop_run(_cancelled_on_signals(coro_factory(), caught))
    except OperationError as exc:
        _fail(exc.text(cli_lang()))  # refused as the API refuses it, in the same words
    except DatesyncError as exc:
        _fail(str(exc))
    except asyncio.CancelledError:
        if not caught:
            raise
        raise typer.Exit(128 + caught[0]) from None  # the shell's convention for "ended by a signal"
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def cli_lang() -> Lang:
    """The user's language for messages: zh when the locale says Chinese (as Accept-Language does for the API)."""
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name, "").strip()
        if value:
            return preferred(value.replace("_", "-").split(".")[0])
    return "en"


def _limits(settings: Settings) -> Limits:
    return Limits(datetime.datetime.now(settings.tz).date(), settings.timezone, settings.max_range_days)


def _settings_or_exit(**overrides: object) -> Settings:
    try:
        return _settings(**overrides)
    except DatesyncError as exc:
        _fail(str(exc), logged=False)


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


def _day(value: str | None, field: str) -> datetime.date | None:
    """A date argument, checked by the API's own rule and refused in its words (naming the API's field)."""
    if value is None:
        return None
    parsed = parse_date(field, value)
    if isinstance(parsed, datetime.date):
        return parsed
    _fail(OperationError(422, [parsed]).text(cli_lang()))


async def _with_conn(settings: Settings, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async with database(settings, own_embedded=False) as db:
        if db.embedded is not None:  # we started it just for this command: make sure the schema exists
            await prepare(db, settings, service.sources_for(settings))
        conn = await wait_until_reachable(db.dsn, settings.startup_timeout, "datesync-cli", variables(db, settings)[0])
        try:
            return await fn(conn)
        finally:
            await conn.close()


@app.command()
def batch(
    start: Annotated[str, typer.Argument(metavar="START", help="First date, YYYY-MM-DD.")],
    end: Annotated[str, typer.Argument(metavar="END", help="Last date, YYYY-MM-DD (inclusive).")],
    force: Annotated[bool, typer.Option("--force", help="Re-sync dates already synced.")] = False,
    source: Annotated[str, typer.Option(help="Source to sync.")] = "default",
    with_upstream: Annotated[bool, typer.Option("--with-upstream", help="Also request the dates of the sources "
                                                                        "SOURCE waits for (DATESYNC_<NAME>_AFTER), "
                                                                        "run first.")] = False,
    cascade: Annotated[bool, typer.Option("--cascade", help="Re-run the dates of the sources built on SOURCE "
                                                            "after it (forced).")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Show live progress until the batch ends; exit 0 only if "
                                                          "it succeeded (1 if it failed or was cancelled).")] = False,
    url: UrlOption = None,
) -> None:
    """Request a backfill of START..END; prints the batch id (an identical batch still queued or running is
    returned instead, as the API does)."""
    settings = _settings_or_exit()
    body = {"start_date": start, "end_date": end, "force": force, "source": source, "with_upstream": with_upstream,
            "cascade": cascade}
    try:
        wanted = validate_batch(body, _limits(settings))
    except OperationError as exc:
        _fail(exc.text(cli_lang()))

    async def request(conn: asyncpg.Connection) -> batches.Accepted:
        return await batches.request(conn, wanted, None, "cli")

    accepted = _run(lambda: _with_conn(settings, request))
    out.print(accepted.batch["id"])
    if not accepted.created:
        err.print(escape(accepted.message.render(cli_lang())))
    for note in accepted.notes:
        err.print(escape(note.render(cli_lang())))
    if follow:  # exit 0 only if the batch succeeded
        raise typer.Exit(_run(lambda: follow_batch(settings, accepted.batch["id"], url, progress_console=err,
                                                   out=out)))


@app.command()
def watch(batch_id: Annotated[int, typer.Argument(metavar="BATCH_ID", help="Batch to follow.")],
          url: UrlOption = None) -> None:
    """Follow a batch's progress live until it ends, then list its failed dates. Exit 0 only if the batch
    succeeded; 1 if it failed or was cancelled."""
    settings = _settings_or_exit()
    raise typer.Exit(_run(lambda: follow_batch(settings, batch_id, url, progress_console=err, out=out)))


@app.command()
def status(
    from_: Annotated[str | None, typer.Option("--from", help="First date, YYYY-MM-DD.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last date, YYYY-MM-DD.")] = None,
) -> None:
    """Per-date sync status, and the batches still queued or running."""
    settings = _settings_or_exit()
    lo, hi = _day(from_, "from"), _day(to, "to")

    async def read(conn: asyncpg.Connection) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        found = await ledger.summary(conn, source=None, first=lo, last=hi, status=None, limit=None, offset=0,
                                     limits=_limits(settings))
        return found, await ledger.unfinished_batches(conn)

    found, unfinished = _run(lambda: _with_conn(settings, read))
    table = Table("source", "day", "status", "attempts", "rows", "synced at", "error")
    for d in sorted(found["records"], key=lambda r: (r["source"], r["day"])):
        table.add_row(d["source"], str(d["day"]), d["status"], str(d["attempts"]), str(d["rows_synced"] or ""),
                      d["synced_at"].isoformat(timespec="seconds") if d["synced_at"] else "", d["error"] or "")
    out.print(table)
    for b in unfinished:
        waiting = f", {b['waiting']} waiting for upstream dates" if b["waiting"] else ""
        out.print(f"batch {b['id']} {b['state']}: {b['done']}/{b['days']} done, {b['failed']} failed, "
                  f"{b['running']} running{waiting}")


@app.command()
def gaps(
    from_: Annotated[str, typer.Argument(metavar="FROM", help="First date, YYYY-MM-DD.")],
    to: Annotated[str, typer.Argument(metavar="TO", help="Last date, YYYY-MM-DD.")],
    source: Annotated[str, typer.Option(help="Source to check.")] = "default",
    backfill: Annotated[bool, typer.Option("--backfill", help="Request exactly the dates listed.")] = False,
) -> None:
    """List dates in FROM..TO that are missing or failed, or stale (synced before an upstream date they are built
    on was re-synced); with --backfill, request exactly those (one batch per contiguous range, forced where it
    holds a stale date) and print the batch ids."""
    settings = _settings_or_exit()
    lo, hi = _day(from_, "from"), _day(to, "to")

    async def go(conn: asyncpg.Connection) -> ledger.Gaps:
        return await ledger.gaps(conn, source, lo, hi, _limits(settings), backfill=backfill, requested_by="cli")

    found = _run(lambda: _with_conn(settings, go))
    span = (found.last - found.first).days + 1
    if not found.days:
        out.print(f"no gaps: every date of {source} from {found.first} to {found.last} is synced or running")
        return
    table = Table("day", "status")
    for d in found.days:
        table.add_row(d["day"].isoformat(), d["status"])
    out.print(table)
    ranges = len(found.ranges)
    kinds = "missing or failed"
    if any(d["status"] == "stale" for d in found.days):
        kinds = "missing, failed or stale"
    out.print(f"{len(found.days)} of {span} dates of {source} are {kinds}, "
              f"in {ranges} range{'s' if ranges > 1 else ''}")
    for b in found.requested:
        days = f"{b['days']} day{'s' if b['days'] != 1 else ''}"
        out.print(f"batch {b['id']}: {b['start_date']}..{b['end_date']} ({days}) requested")


@app.command()
def retry(batch_id: Annotated[int, typer.Argument(metavar="BATCH_ID",
                                                 help="Batch whose failed and cancelled dates to requeue.")]) -> None:
    """Requeue a finished batch's failed dates, and its cancelled ones if it was cancelled; the batch runs again."""
    settings = _settings_or_exit()

    async def go(conn: asyncpg.Connection) -> str:
        _batch, _requeued, message = await batches.retry(conn, batch_id)
        return message.render(cli_lang())

    out.print(escape(_run(lambda: _with_conn(settings, go))))


@app.command()
def cancel(batch_id: Annotated[int, typer.Argument(metavar="BATCH_ID", help="Batch to cancel.")]) -> None:
    """Cancel a batch: queued dates are dropped, running ones are interrupted."""
    settings = _settings_or_exit()

    async def go(conn: asyncpg.Connection) -> str:
        _batch, message = await batches.cancel(conn, batch_id)
        return message.render(cli_lang())

    out.print(escape(_run(lambda: _with_conn(settings, go))))


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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def psql(ctx: typer.Context) -> None:
    """Open psql on datesync's database (the embedded one's own psql when no DATABASE_URL is set). Further
    arguments go to psql as they are: `datesync psql -c 'select 1'`."""
    settings = _settings_or_exit()
    from datesync.daemon.embedded import EmbeddedPostgres, bin_dir

    if settings.database_url:
        os.execvp("psql", ["psql", settings.database_url, *ctx.args])
    server = EmbeddedPostgres(settings.data_dir)
    if server.running_pid() is None:
        err.print(f"the embedded database in {Path(settings.data_dir)} is not running; start `datesync run`")
        raise typer.Exit(2)
    executable = str(bin_dir() / "psql")
    os.execv(executable, [executable, server.dsn(), *ctx.args])


def main() -> None:
    app(prog_name="datesync")


if __name__ == "__main__":  # pragma: no cover
    main()
