"""Debian's Chromium driven by Python Playwright, for the web pages' end-to-end tests.

The browser is /usr/bin/chromium from the distribution (`scripts/install-chromium`), never one
downloaded by `playwright install`. Without it the tests skip, except in CI, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import psutil
import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = Path(os.environ.get("LAYERFLEET_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium_or_skip() -> Path:
    if CHROMIUM.is_file():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"Chromium is not at {CHROMIUM}; scripts/install-chromium installs Debian's package")
    pytest.skip(f"Chromium is not at {CHROMIUM} (apt-get install chromium)")


# Closing has no timeout of its own in Playwright, and Chromium now and then never answers a
# close: a whole CI run once sat in one test's teardown until its limit. Closing is bounded; a
# browser that will not close is killed.
CLOSE_WITHIN = 20.0


async def _closed_within(closing: Awaitable[None], seconds: float = CLOSE_WITHIN) -> bool:
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation (layerfleet.pacing).
    try:
        async with asyncio.timeout(seconds):
            await closing
    except TimeoutError:
        return False
    return True


def _kill_our_chromium() -> int:
    killed = 0
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "chrom" in process.name():
                process.kill()
                killed += 1
    return killed


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_or_skip()
    playwright = await async_playwright().start()
    try:
        launched = await playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            if not await _closed_within(launched.close()):
                print(f"Chromium did not close within {CLOSE_WITHIN} s: killed {_kill_our_chromium()} processes")
                await _closed_within(launched.close())
    finally:
        await _closed_within(playwright.stop())


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    opened = await context.new_page()
    opened.set_default_timeout(15_000)
    try:
        yield opened
    finally:
        await _closed_within(context.close())  # the browser fixture kills a browser that hangs here


MEMBER_PASSWORD = "password-123"  # conftest's Farm.member


async def sign_in(page: Page, live_url: str, email: str, password: str = MEMBER_PASSWORD, then: str = "/") -> None:
    """Sign in through the real sign-in page and land on ``then``."""
    await page.goto(f"{live_url}/accounts/login/?next={then}")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{live_url}{then}")
