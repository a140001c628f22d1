"""Browser fixtures for the status-page tests: one Chromium (Debian's, not a downloaded build) per session and
a fresh context per page, watched for console errors and for requests that leave the server's origin."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Request, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
# Root needs --no-sandbox; the rest keep Chromium from calling home on a machine with no outside network.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


@dataclasses.dataclass
class Watched:
    """A page with what went wrong on it so far."""

    page: Page
    context: BrowserContext
    base_url: str
    errors: list[str] = dataclasses.field(default_factory=list)
    foreign: list[str] = dataclasses.field(default_factory=list)


OpenPage = Callable[..., Awaitable[Watched]]


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` with CI=true, or apt-get install chromium")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[OpenPage]:
    """Open the status page of a live server in a new context (its own storage, locale and viewport)."""
    contexts: list[BrowserContext] = []

    async def open_(base_url: str, *, locale: str = "en-US", width: int = 1280, height: int = 900,
                    path: str = "/") -> Watched:
        context = await browser.new_context(
            base_url=base_url, locale=locale, timezone_id="UTC", viewport={"width": width, "height": height})
        contexts.append(context)
        context.set_default_timeout(15_000)
        page = await context.new_page()
        watched = Watched(page, context, base_url)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                watched.errors.append(f"console: {message.text} ({message.location.get('url')})")

        def on_request(request: Request) -> None:
            if not (request.url.startswith(base_url + "/") or request.url.startswith("data:")):
                watched.foreign.append(request.url)

        page.on("console", on_console)
        page.on("pageerror", lambda error: watched.errors.append(f"page error: {error}"))
        page.on("request", on_request)
        await page.goto(path)
        return watched

    yield open_
    for context in contexts:
        await context.close()
