"""The status page and a batch that retention pruned: its counts stay, its dates' records stay on the heat map,
and opening it says where its per-date rows went instead of showing an empty table."""

from __future__ import annotations

import datetime

import asyncpg
import pytest
from playwright.async_api import expect

from datesync.daemon.retention import Retention
from tests.e2e.conftest import OpenPage
from tests.e2e.test_page import batch, day, ready, served
from tests.support.daemons import wait_batch_final
from tests.support.retention import backdate


async def test_a_pruned_batch_keeps_its_counts_and_says_where_its_dates_went(
        dsn: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage) -> None:
    bad = day(-12)
    async with served(dsn, monkeypatch, fail=(bad,)) as live:
        batch_id = await db.fetchval("INSERT INTO datesync.batch (start_date, end_date) VALUES ($1, $2) RETURNING id",
                                     datetime.date.fromisoformat(day(-14)), datetime.date.fromisoformat(day(-10)))
        await wait_batch_final(db, batch_id)
        await backdate(db, [batch_id], days=31)
        assert (await Retention(live.state.pool, 30).prune_once()).tasks == 5

        w = await open_page(live.base_url)
        await ready(w)
        item = batch(w, batch_id)
        await expect(item.locator(".batch-toggle .badge")).to_have_text("Failed")
        await expect(item.locator(".stat-failed dd")).to_have_text("1")
        await item.locator(".batch-toggle").click()
        await expect(item.locator(".tasks .hint")).to_contain_text("removed by retention")
        cell = w.page.locator(f'td.cell[data-day="{bad}"]')
        await expect(cell).to_have_attribute("data-status", "failed")
        await cell.hover()
        await expect(w.page.locator("#hm-tip")).to_contain_text(f"demo upstream has no data for {bad}")
        assert w.errors == []
