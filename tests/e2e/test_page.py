"""The status page in a real browser against a real server, daemon and database: loading, a live 7-day
backfill, the server's validation errors next to their fields, cancel, retry, the heat map, the token, the
event stream's resume, the Chinese view, and sources that depend on each other (waiting and stale dates)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import re
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from playwright.async_api import Locator, expect

from datesync.daemon.runtime import migrate_and_register
from datesync.daemon.settings import Settings
from datesync.daemon.sync import handlers
from datesync.daemon.sync.worker import Daemon
from tests.e2e.conftest import OpenPage, Watched
from tests.support.server import Live, live_server

NOTHING_YET = "\u2013"  # what a card shows before its first answer
TODAY = datetime.datetime.now(datetime.UTC).date()


def day(offset: int) -> str:
    """The ISO date `offset` days from today (UTC, the server's zone)."""
    return (TODAY + datetime.timedelta(days=offset)).isoformat()


@contextlib.asynccontextmanager
async def served(dsn: str, monkeypatch: pytest.MonkeyPatch, *, delay_ms: int = 50, fail: tuple[str, ...] = (),
                 daemon: bool = True, **settings: object) -> AsyncIterator[Live]:
    monkeypatch.setenv("DATESYNC_DEMO_DELAY_MS", str(delay_ms))
    monkeypatch.setenv("DATESYNC_DEMO_FAIL_DATES", ",".join(fail))
    base = Settings(retry_delay=0.05, poll_interval=5, max_attempts=2)
    async with live_server(dsn, base.replace(**settings), daemon=daemon) as live:
        yield live


@contextlib.asynccontextmanager
async def served_graph(dsn: str) -> AsyncIterator[Live]:
    """Sources orders and rollup (rollup's dates wait for orders' same dates), both `noop`, beside the default
    source, configured as a deployment is: DATESYNC_SOURCES and DATESYNC_ROLLUP_AFTER."""
    settings = Settings.from_env({"DATESYNC_SOURCES": "orders=noop,rollup=noop", "DATESYNC_ROLLUP_AFTER": "orders",
                                  "LOG_FORMAT": "json"}).replace(retry_delay=0.05, poll_interval=5, max_attempts=2)
    sources = {name: spec.handler for name, spec in settings.all_sources.items()}
    conn = await asyncpg.connect(dsn)
    try:
        await migrate_and_register(conn, settings, sources, runs_sources=True)
    finally:
        await conn.close()
    # live_server's own daemon serves the default source only: this one serves all three, as `datesync run` would.
    async with live_server(dsn, settings) as live:
        worker = Daemon(live.state.settings, live.state.pool,
                        {name: handlers.load(spec, name) for name, spec in sources.items()}, dsn, grace=2)
        live.state.wake_daemon = worker.wake
        running = asyncio.create_task(worker.run())
        try:
            yield dataclasses.replace(live, daemon=worker)
        finally:
            worker.request_stop()
            await asyncio.wait_for(running, 15)


async def ready(w: Watched) -> None:
    """The page has drawn its data and its event stream is open."""
    await expect(w.page.locator("#conn")).to_have_attribute("data-state", "open")
    await expect(w.page.locator("#card-synced")).not_to_have_text(NOTHING_YET)
    await expect(w.page.locator(".heat-table td.cell").first).to_be_visible()


async def start_from_form(w: Watched, start: str, end: str) -> None:
    await w.page.fill("#start_date", start)
    await w.page.fill("#end_date", end)
    await w.page.click("#start")


def batch(w: Watched, batch_id: int | None = None) -> Locator:
    selector = f'li.batch[data-id="{batch_id}"]' if batch_id is not None else "li.batch"
    return w.page.locator(selector).first


async def test_page_loads_without_console_errors(dsn: str, monkeypatch: pytest.MonkeyPatch,
                                                 open_page: OpenPage) -> None:
    async with served(dsn, monkeypatch) as live:
        w = await open_page(live.base_url)
        await ready(w)
        page = w.page
        assert await page.title() == "datesync · sync status"
        assert await page.get_attribute("html", "lang") == "en"
        await expect(page.locator("#card-synced")).to_have_text("0")
        await expect(page.locator("#card-last")).to_have_text("Never")
        await expect(page.locator("#batches-empty")).to_be_visible()
        # Twelve months of days, and one of them (the newest) is the heat map's keyboard stop.
        assert await page.locator(".heat-table td.cell").count() == 365
        assert await page.locator('.heat-table td.cell[tabindex="0"]').get_attribute("data-day") == day(0)
        # Every control has an accessible name.
        for control in ("#start_date", "#end_date", "#force", "#start", "#lang", "#hm-period"):
            await expect(page.locator(control)).to_have_accessible_name(re.compile(r"\w"))
        response = await page.request.get("/")
        assert "default-src 'self'" in response.headers["content-security-policy"]
        await page.wait_for_timeout(300)
        assert w.errors == []
        assert w.foreign == []


async def test_a_seven_day_batch_progresses_and_completes_without_a_reload(
        dsn: str, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage) -> None:
    async with served(dsn, monkeypatch, delay_ms=300, concurrency=2) as live:
        w = await open_page(live.base_url)
        await ready(w)
        page = w.page
        await page.evaluate("window.__sameDocument = true")
        await start_from_form(w, day(-20), day(-14))
        await expect(page.locator("#form-message")).to_have_text("Batch sync started: 7 days will be synced")
        item = batch(w)
        bar = item.locator('[role="progressbar"]')
        await expect(bar).to_have_attribute("aria-valuemax", "7")
        seen: set[int] = set()
        for _ in range(200):
            seen.add(int(await bar.get_attribute("aria-valuenow") or 0))
            if 7 in seen:
                break
            await asyncio.sleep(0.05)
        assert any(0 < n < 7 for n in seen), f"no intermediate progress seen: {sorted(seen)}"
        await expect(item.locator(".batch-toggle .badge")).to_have_text("Succeeded")
        await expect(item.locator(".stat-done dd")).to_have_text("7 / 7")
        await expect(item.locator(".stat-failed dd")).to_have_text("0")
        await expect(item.locator(".stat-rate dd")).to_have_text(re.compile(r"^[\d.,]+ dates/min$"))  # one unit
        await expect(item.locator(".cancel")).to_be_hidden()
        await expect(page.locator("#card-synced")).to_have_text("7")
        await expect(page.locator("#card-last")).not_to_have_text("Never")
        for offset in range(-20, -13):
            await expect(page.locator(f'td.cell[data-day="{day(offset)}"]')).to_have_attribute(
                "data-status", "success")
        # The batch's dates, on demand.
        await item.locator(".batch-toggle").click()
        await expect(item.locator(".batch-toggle")).to_have_attribute("aria-expanded", "true")
        rows = item.locator("tbody tr")
        await expect(rows).to_have_count(7)
        await expect(rows.first.locator("td").nth(1)).to_have_text("Succeeded")
        await expect(rows.first.locator("td").nth(2)).to_have_text("1 / 2")
        assert await page.evaluate("window.__sameDocument") is True
        assert w.errors == []


async def test_a_bad_range_shows_the_servers_error_next_to_the_field(
        dsn: str, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage) -> None:
    async with served(dsn, monkeypatch, daemon=False) as live, httpx.AsyncClient(base_url=live.api) as client:
        w = await open_page(live.base_url)
        page = w.page
        await expect(page.locator("#card-synced")).to_have_text("0")

        expected = (await client.post("/sync/batch", json={"start_date": day(-3), "end_date": day(-10)})).json()
        [error] = [e for e in expected["errors"] if e["field"] == "start_date"]
        assert error["message"] == "start_date must not be after end_date"
        await start_from_form(w, day(-3), day(-10))
        # In the form's own words (its labels, not the JSON's field names), and said once: the line under the
        # button only points at the marked field.
        await expect(page.locator("#start_date-error")).to_have_text("Start date must not be after End date")
        await expect(page.locator("#start_date")).to_have_attribute("aria-invalid", "true")
        await expect(page.locator("#start_date")).to_be_focused()
        await expect(page.locator("#form-message")).to_have_text("Please correct the marked field.")
        await expect(page.locator("#end_date-error")).to_be_hidden()
        assert (await page.locator("main").inner_text()).count("must not be after") == 1

        future = (await client.post("/sync/batch", json={"start_date": day(-1), "end_date": day(3)})).json()
        [error] = [e for e in future["errors"] if e["field"] == "end_date"]
        await start_from_form(w, day(-1), day(3))
        await expect(page.locator("#end_date-error")).to_have_text(error["message"].replace("end_date", "End date"))
        await expect(page.locator("#end_date")).to_have_attribute("aria-invalid", "true")
        await expect(page.locator("#start_date")).not_to_have_attribute("aria-invalid", "true")
        # Changing the field clears its error.
        await page.fill("#end_date", day(-1))
        await page.locator("#end_date").dispatch_event("change")
        await expect(page.locator("#end_date-error")).to_be_hidden()
        assert await live.state.pool.fetchval("SELECT count(*) FROM datesync.batch") == 0


async def test_cancel_stops_a_running_batch(dsn: str, monkeypatch: pytest.MonkeyPatch,
                                            open_page: OpenPage) -> None:
    async with served(dsn, monkeypatch, delay_ms=300, concurrency=2) as live, \
            httpx.AsyncClient(base_url=live.api) as client:
        w = await open_page(live.base_url)
        await ready(w)
        page = w.page
        # Started elsewhere (another tab, the CLI): the page learns of it from the stream.
        answer = await client.post("/sync/batch", json={"start_date": day(-60), "end_date": day(-31)})
        batch_id = answer.json()["data"]["batch_id"]
        item = batch(w, batch_id)
        await expect(item.locator(".batch-toggle .badge")).to_have_text("Running")
        await expect(item.locator(".stat-done dd")).not_to_have_text(re.compile(r"^0 /"))
        await item.locator(".cancel").click()
        await expect(page.locator("#batch-message")).not_to_be_empty()
        await expect(item.locator(".batch-toggle .badge")).to_have_text("Cancelled")
        await expect(item.locator(".cancel")).to_be_hidden()
        # Retry would requeue the cancelled dates too, and says so; a batch stopped part-way shows no rate.
        await expect(item.locator(".retry")).to_have_text("Retry failed and cancelled")
        await expect(item.locator(".stat-rate dd")).to_have_text(NOTHING_YET)
        done = await item.locator(".stat-done dd").text_content()
        assert done is not None and done.endswith("/ 30")
        progress = await live.state.pool.fetchrow(
            "SELECT state, cancelled FROM datesync.batch_progress WHERE batch_id = $1", batch_id)
        assert progress is not None and progress["state"] == "cancelled" and progress["cancelled"] > 0
        assert w.errors == []


async def test_a_failed_date_is_red_on_the_heat_map_and_retry_requeues_it(
        dsn: str, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage) -> None:
    bad = day(-12)
    async with served(dsn, monkeypatch, fail=(bad,)) as live:
        w = await open_page(live.base_url)
        await ready(w)
        page = w.page
        await start_from_form(w, day(-14), day(-10))
        item = batch(w)
        await expect(item.locator(".batch-toggle .badge")).to_have_text("Failed")
        await expect(item.locator(".stat-failed dd")).to_have_text("1")
        await expect(page.locator("#card-failed")).to_have_text("1")

        cell = page.locator(f'td.cell[data-day="{bad}"]')
        await expect(cell).to_have_attribute("data-status", "failed")
        colour = "el => getComputedStyle(el).backgroundColor"
        failed_colour = await page.locator('.legend .swatch[data-status="failed"]').evaluate(colour)
        assert await cell.evaluate(colour) == failed_colour
        assert await page.locator(f'td.cell[data-day="{day(-13)}"]').evaluate(colour) != failed_colour
        await cell.hover()
        await expect(page.locator("#hm-tip")).to_be_visible()
        await expect(page.locator("#hm-tip")).to_contain_text("Failed")
        await expect(page.locator("#hm-tip")).to_contain_text(f"demo upstream has no data for {bad}")

        await item.locator(".batch-toggle").click()
        row = item.locator(f'tbody tr[data-day="{bad}"]')
        await expect(row.locator("td").nth(1)).to_have_text("Failed")
        await expect(row.locator("td").nth(2)).to_have_text("2 / 2")
        await expect(row.locator("td").nth(5)).to_contain_text("demo upstream has no data")

        # The upstream recovers; Retry failed requeues the one date and the batch ends well.
        assert live.daemon is not None
        demo = live.daemon.handlers["default"].sync.__self__  # type: ignore[attr-defined]
        demo.fail_dates = frozenset()
        await item.locator(".retry").click()
        await expect(page.locator("#batch-message")).not_to_be_empty()
        await expect(item.locator(".batch-toggle .badge")).to_have_text("Succeeded")
        await expect(item.locator(".stat-failed dd")).to_have_text("0")
        await expect(cell).to_have_attribute("data-status", "success")
        await expect(row.locator("td").nth(1)).to_have_text("Succeeded")
        await expect(page.locator("#card-failed")).to_have_text("0")
        await expect(page.locator("#card-synced")).to_have_text("5")
        assert w.errors == []


async def test_selecting_days_on_the_heat_map_fills_the_form(
        dsn: str, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage) -> None:
    async with served(dsn, monkeypatch, daemon=False) as live:
        w = await open_page(live.base_url)
        page = w.page
        first = page.locator(f'td.cell[data-day="{day(-30)}"]')
        last = page.locator(f'td.cell[data-day="{day(-26)}"]')
        await first.scroll_into_view_if_needed()
        a = await first.bounding_box()
        b = await last.bounding_box()
        assert a and b
        await page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
        await page.mouse.down()
        await page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, steps=5)
        await page.mouse.up()
        await expect(page.locator("#start_date")).to_have_value(day(-30))
        await expect(page.locator("#end_date")).to_have_value(day(-26))
        await expect(page.locator("#hm-selection")).to_contain_text("5 days, 5 not synced, 0 failed")
        assert await page.locator('td.cell[aria-selected="true"]').count() == 5
        # The keyboard does the same: Enter picks a day, Shift+Right extends by a week.
        await first.focus()
        await page.keyboard.press("Enter")
        await page.keyboard.press("Shift+ArrowRight")
        await expect(page.locator("#start_date")).to_have_value(day(-30))
        await expect(page.locator("#end_date")).to_have_value(day(-23))
        await expect(page.locator("#form-days")).to_have_text("8 days")


async def test_a_token_is_kept_and_sent_when_the_api_needs_one(
        dsn: str, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage) -> None:
    async with served(dsn, monkeypatch, api_token="s3cret-token") as live:
        w = await open_page(live.base_url)
        await ready(w)
        page = w.page
        await start_from_form(w, day(-5), day(-4))
        await expect(page.locator("#form-message")).to_have_attribute("data-kind", "error")
        # One sentence, the page's own, saying what to do.
        await expect(page.locator("#form-message")).to_have_text(
            "The API needs a token: enter it under “API token” at the top of the page.")
        await expect(page.locator("#settings")).to_have_attribute("open", "")
        await page.fill("#token", "s3cret-token")
        await page.press("#token", "Enter")
        await expect(page.locator("#token-status")).to_have_text("Token saved in this browser.")
        # Saving closes the popover, so it does not stay over the cards and the calendar.
        await expect(page.locator("#settings")).not_to_have_attribute("open", "")
        await page.click("#start")
        await expect(page.locator("#form-message")).to_have_text("Batch sync started: 2 days will be synced")
        await page.reload()
        await expect(page.locator("#token")).to_have_value("s3cret-token")
        await expect(batch(w).locator(".batch-toggle .badge")).to_have_text("Succeeded")


async def test_the_stream_resumes_after_the_last_event_it_saw(
        dsn: str, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage) -> None:
    async with served(dsn, monkeypatch) as live, httpx.AsyncClient(base_url=live.api) as client:
        w = await open_page(live.base_url)
        await ready(w)
        page = w.page
        first = (await client.post("/sync/batch", json={"start_date": day(-9), "end_date": day(-8)})).json()
        await expect(batch(w, first["data"]["batch_id"]).locator(".batch-toggle .badge")).to_have_text("Succeeded")
        last_id = await page.evaluate("window.datesync.stream.lastId")
        assert last_id
        opened: list[str] = []
        page.on("request", lambda r: opened.append(r.url) if "/events" in r.url else None)

        await w.context.set_offline(True)
        await expect(page.locator("#conn")).not_to_have_attribute("data-state", "open")
        second = (await client.post("/sync/batch", json={"start_date": day(-7), "end_date": day(-6)})).json()
        await asyncio.sleep(0.5)  # the second batch runs while the page is cut off
        await w.context.set_offline(False)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        assert any(f"last_event_id={last_id}" in url for url in opened), opened
        await expect(batch(w, second["data"]["batch_id"]).locator(".batch-toggle .badge")).to_have_text("Succeeded")
        await expect(page.locator("#card-synced")).to_have_text("4")


async def test_the_chinese_view(dsn: str, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage) -> None:
    async with served(dsn, monkeypatch) as live:
        w = await open_page(live.base_url, locale="zh-CN")
        await ready(w)
        page = w.page
        assert await page.get_attribute("html", "lang") == "zh-CN"
        await expect(page.locator("#form-h")).to_have_text("批量同步")
        await expect(page.locator("#conn-text")).to_have_text("实时")
        await expect(page.locator("#lang")).to_have_value("zh")
        await expect(page.locator("#card-last")).to_have_text("从未")
        await start_from_form(w, day(-5), day(-4))
        await expect(page.locator("#form-message")).to_have_text("批量同步任务已启动，将同步 2 天的数据")  # noqa: RUF001
        item = batch(w)
        await expect(item.locator(".batch-toggle .badge")).to_have_text("成功")
        # The answer follows the language switch, both ways.
        await page.select_option("#lang", "en")
        await expect(page.locator("#form-message")).to_have_text("Batch sync started: 2 days will be synced")
        await page.select_option("#lang", "zh")
        await expect(page.locator("#form-message")).to_have_text("批量同步任务已启动，将同步 2 天的数据")  # noqa: RUF001
        await expect(item.locator(".stat-done dt")).to_have_text("完成")
        await expect(page.locator("#card-last")).to_contain_text("年")
        # The switch wins over the browser's language, and is remembered.
        await page.select_option("#lang", "en")
        await expect(page.locator("#form-h")).to_have_text("Start a backfill")
        await expect(item.locator(".batch-toggle .badge")).to_have_text("Succeeded")
        await page.reload()
        await expect(page.locator("#form-h")).to_have_text("Start a backfill")
        assert await page.get_attribute("html", "lang") == "en"
        assert w.errors == []


async def test_the_popover_closes_and_a_new_selection_clears_the_last_answer(
        dsn: str, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage) -> None:
    async with served(dsn, monkeypatch) as live:
        w = await open_page(live.base_url)
        await ready(w)
        page = w.page
        await page.click("#settings summary")
        await expect(page.locator("#settings")).to_have_attribute("open", "")
        await page.click('.card[data-kind="synced"]')
        await expect(page.locator("#settings")).not_to_have_attribute("open", "")
        await page.click("#settings summary")
        await page.keyboard.press("Escape")
        await expect(page.locator("#settings")).not_to_have_attribute("open", "")

        await start_from_form(w, day(-5), day(-4))
        await expect(page.locator("#form-message")).to_have_text("Batch sync started: 2 days will be synced")
        cell = page.locator(f'td.cell[data-day="{day(-30)}"]')
        await cell.focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#start_date")).to_have_value(day(-30))
        await expect(page.locator("#form-message")).to_be_empty()
        assert w.errors == []


async def test_on_a_phone_the_started_batch_is_brought_into_view(
        dsn: str, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage) -> None:
    async with served(dsn, monkeypatch, delay_ms=300) as live:
        w = await open_page(live.base_url, width=390, height=844)
        await ready(w)
        await start_from_form(w, day(-40), day(-31))
        await expect(batch(w)).to_be_in_viewport()
        assert w.errors == []


async def test_the_unreachable_notice_goes_once_the_server_is_back(
        dsn: str, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage) -> None:
    async with served(dsn, monkeypatch) as live:
        w = await open_page(live.base_url)
        await ready(w)
        page = w.page
        await w.context.set_offline(True)
        await expect(page.locator("#notice")).to_have_text("Cannot reach the server; is it running?", timeout=15_000)
        await w.context.set_offline(False)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        await expect(page.locator("#notice")).to_be_hidden()


async def test_a_waiting_date_and_a_stale_date(open_page: OpenPage, dsn: str) -> None:
    """Sources orders and rollup: the calendar's source selector, a stale date in its own colour, and a waiting
    date that says what it waits for (issue 21)."""
    synced, waits = day(-5), day(-3)
    async with served_graph(dsn) as live:
        w = await open_page(live.base_url)
        await ready(w)
        page = w.page
        # The calendar shows one source at a time, chosen beside it.
        await expect(page.locator("#hm-source option")).to_have_text(
            ["default (demo)", "orders (noop)", "rollup (noop)"])
        await page.select_option("#hm-source", "rollup")
        cell = page.locator(f'td.cell[data-day="{synced}"]')
        await expect(cell).to_have_attribute("data-status", "missing")

        # rollup's date with its upstream date: orders' batch is requested first, and the answer says so.
        await page.select_option("#source", "rollup")
        await page.check("#with_upstream")
        await start_from_form(w, synced, synced)
        await expect(page.locator("#form-message")).to_contain_text("requested for orders")
        await expect(cell).to_have_attribute("data-status", "success")

        # A forced re-sync of orders' date outdates rollup's: the stale colour, the legend's word, and the tooltip
        # naming the re-sync (from the stream's "day" event).
        await page.uncheck("#with_upstream")
        await page.select_option("#source", "orders")
        await page.check("#force")
        await start_from_form(w, synced, synced)
        await expect(page.locator("#form-message")).to_contain_text("Batch sync started: 1 day")
        await expect(cell).to_have_attribute("data-status", "stale")
        colour = "el => getComputedStyle(el).backgroundColor"
        swatch = page.locator('.legend .swatch[data-status="stale"]')
        await expect(swatch.locator("xpath=..")).to_have_text("Stale")
        stale_colour = await swatch.evaluate(colour)
        assert await cell.evaluate(colour) == stale_colour
        assert stale_colour != await page.locator('.legend .swatch[data-status="success"]').evaluate(colour)
        await cell.hover()
        await expect(page.locator("#hm-tip")).to_contain_text("Stale")
        await expect(page.locator("#hm-tip")).to_contain_text(f"re-sync of orders {synced}")
        await expect(page.locator("#card-stale")).to_have_text("1 stale")

        # rollup alone for a date whose orders date never synced: it waits, and its batch's dates say for what.
        await page.uncheck("#force")
        await page.select_option("#source", "rollup")
        await start_from_form(w, waits, waits)
        await expect(page.locator("#form-message")).to_contain_text("1 of its days waits for upstream dates")
        # The fourth batch (orders and rollup, the forced orders, this one); held by its id, as more come.
        await expect(page.locator("li.batch")).to_have_count(4)
        item = batch(w, int(await batch(w).get_attribute("data-id") or 0))
        await expect(item.locator(".stat-waiting dd")).to_have_text("1")
        await item.locator(".batch-toggle").click()
        row = item.locator(f'tbody tr[data-day="{waits}"]')
        await expect(row.locator("td").nth(1)).to_have_text("Waiting")
        await expect(row.locator("td").nth(5)).to_have_text(f"Waiting for orders {waits}")
        await expect(page.locator("#card-waiting")).to_contain_text("1 waiting")

        # In Chinese too.
        await page.select_option("#lang", "zh")
        await expect(row.locator("td").nth(5)).to_have_text(f"等待 orders {waits}")
        await expect(swatch.locator("xpath=..")).to_have_text("待刷新")

        # Once orders' date syncs, the waiting date is released and runs, live.
        await page.select_option("#lang", "en")
        await page.select_option("#source", "orders")
        await start_from_form(w, waits, waits)
        await expect(row.locator("td").nth(1)).to_have_text("Succeeded")
        await expect(row.locator("td").nth(5)).to_have_text("")
        await expect(item.locator(".stat-waiting")).to_be_hidden()
        await expect(page.locator("#card-waiting")).to_be_hidden()
        assert w.errors == []
