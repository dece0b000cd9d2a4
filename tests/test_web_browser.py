"""The web pages in a real browser (Debian's Chromium through Playwright) against a real server."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from browser import browser, page  # noqa: F401  (fixtures)
from conftest import PRINTING, Farm

PASSWORD = "password-123"  # conftest's Farm.member


async def test_sign_in_shows_the_farm_and_wrong_passwords_say_so(
        live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811 (the fixture)
    owner = await farm.member()
    await farm.printer(owner, "Voron 2.4", status=PRINTING)
    await farm.printer(owner, "Ender 3")

    await page.goto(f"{live_url}/")
    await expect(page).to_have_url(re.compile(r"/accounts/login/"))
    await page.get_by_label("Email").fill(owner.user.email)
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("That email and password do not match an active account.")

    await page.get_by_label("Password").fill(PASSWORD)
    await page.keyboard.press("Enter")  # the form works from the keyboard
    await expect(page).to_have_url(f"{live_url}/")
    cards = page.get_by_role("listitem")
    await expect(cards.filter(has_text="Voron 2.4").locator(".badge")).to_have_text("Printing")
    await expect(cards.filter(has_text="Ender 3").locator(".badge")).to_have_text("Offline")
