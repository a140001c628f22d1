"""The status page mid-backfill, on a desktop, on a phone and in Chinese: nothing overflows, and (with
DATESYNC_UPDATE_SCREENSHOTS=1) the pictures in docs/ are refreshed from the real thing. Refreshing them needs a CJK
font (Debian's fonts-noto-cjk), or the Chinese picture would show empty boxes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from tests.e2e.conftest import OpenPage
from tests.e2e.test_page import day, served
from tests.support.waiting import wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs"


def has_cjk_font() -> bool:
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return False
    listed = subprocess.run([fc_list, ":lang=zh", "family"], capture_output=True, text=True, check=False).stdout
    return bool(listed.strip())


async def test_the_page_mid_backfill_fits_a_desktop_and_a_phone(
        dsn: str, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage, tmp_path: Path) -> None:
    out = DOCS if os.environ.get("DATESYNC_UPDATE_SCREENSHOTS") == "1" else tmp_path
    if out is DOCS:
        assert has_cjk_font(), "install a CJK font first (apt-get install fonts-noto-cjk): docs/ shows real Chinese"
    fails = (day(-321), day(-92), day(-90))
    async with served(dsn, monkeypatch, delay_ms=2, fail=fails, concurrency=2) as live, \
            httpx.AsyncClient(base_url=live.api) as client:
        # Some history first, quickly: three earlier backfills, two of them with failed dates.
        for start, end in ((-330, -300), (-200, -150), (-100, -75)):
            answer = await client.post("/sync/batch", json={"start_date": day(start), "end_date": day(end)})
            assert answer.status_code == 202, answer.text

        async def history_done() -> bool:
            batches = (await client.get("/batches")).json()["data"]["batches"]
            return all(b["state"] in ("succeeded", "failed") for b in batches)

        await wait_for(history_done, timeout=30)
        assert live.daemon is not None
        demo = live.daemon.handlers["default"].sync.__self__  # type: ignore[attr-defined]
        demo.delay = 0.25

        desktop = await open_page(live.base_url, width=1280, height=900)
        phone = await open_page(live.base_url, width=390, height=844)
        chinese = await open_page(live.base_url, width=1280, height=900, locale="zh-CN")
        for w in (desktop, phone, chinese):
            await expect(w.page.locator("#conn")).to_have_attribute("data-state", "open")
            await expect(w.page.locator("#card-failed")).to_have_text("3")
        await desktop.page.fill("#start_date", day(-60))
        await desktop.page.fill("#end_date", day(-16))
        await desktop.page.click("#start")
        await expect(desktop.page.locator("#form-message")).to_contain_text("45 days")

        async def mid_way() -> bool:
            now = await desktop.page.locator("li.batch [role=progressbar]").first.get_attribute("aria-valuenow")
            return int(now or 0) >= 18

        await wait_for(mid_way, timeout=30)
        await desktop.page.locator(f'td.cell[data-day="{day(-92)}"]').hover()
        await expect(desktop.page.locator("#hm-tip")).to_be_visible()
        await desktop.page.screenshot(path=str(out / "screenshot.png"), full_page=True)
        await phone.page.screenshot(path=str(out / "screenshot-phone.png"), full_page=True)
        await expect(chinese.page.locator("#form-h")).to_have_text("批量同步")
        await chinese.page.screenshot(path=str(out / "screenshot-zh.png"), full_page=True)

        heat = desktop.page.locator(".heat-scroll")
        assert await heat.evaluate("s => s.scrollWidth <= s.clientWidth"), "12 months should fit a desktop panel"
        width = await phone.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide on a 390px phone"
        for w in (desktop, phone):
            await expect(w.page.locator("li.batch").first.locator(".batch-toggle .badge")).to_have_text("Running")
            assert w.errors == []
        assert chinese.errors == []
