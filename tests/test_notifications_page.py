"""The Notifications page in a real browser (Debian's Chromium) against a real server: an admin
adds an email target by picking the channel and filling its fields, presses Test, and the
message arrives at a real SMTP server (aiosmtpd); the delivery log then shows it sent."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from browser import browser, page, sign_in  # noqa: F401  (fixtures)
from conftest import PAUSED, Farm
from layerfleet.accounts.models import Role
from layerfleet.notifications import action_links
from layerfleet.notifications.action_links import LinkAction
from test_notifications import Mailbox, mailbox  # noqa: F401  (fixture)
from test_web_accessibility import AUDIT, _audit


async def test_an_admin_adds_an_email_target_tests_it_and_the_mail_arrives(
        live_url: str, farm: Farm, page: Page, mailbox: Mailbox) -> None:  # noqa: F811 (the fixtures)
    admin = await farm.member(Role.ADMIN)
    await sign_in(page, live_url, admin.user.email)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Notifications").click()
    await page.wait_for_url(f"{live_url}/notifications/")
    await expect(page.get_by_role("list", name="Notification targets")).to_contain_text("No targets yet")

    await page.get_by_label("Channel").select_option(label="Email")
    await page.get_by_label("Name", exact=True).fill("Farm office")
    email = page.get_by_role("group", name="Email")
    await email.get_by_label("SMTP server").fill("127.0.0.1")
    await email.get_by_label("Port").fill(str(mailbox.port))
    await email.get_by_label("Security").select_option(label="None (local servers only)")
    await email.get_by_label("From address").fill("farm@example.com")
    await email.get_by_label("To address").fill("office@example.com")
    await page.get_by_role("group", name="Events").get_by_label("Print started").check()
    await page.get_by_role("button", name="Add target").click()

    target = page.get_by_role("listitem").filter(has=page.get_by_role("heading", name="Farm office"))
    await expect(target).to_contain_text("mailto://127.0.0.1")
    await expect(target.get_by_label("Print started")).to_be_checked()
    await expect(target.get_by_label("Failure alert (always sent, even in quiet hours)")).to_be_checked()

    # A per-event switch changes the target at once.
    await target.get_by_label("Print done").uncheck()
    await expect(page.locator("#toasts")).to_contain_text("Print done: off saved.")

    await target.get_by_role("button", name="Test").click()
    await expect(target.get_by_role("status")).to_have_text("Test message sent.")
    [message] = await asyncio.to_thread(mailbox.wait, 1)
    assert str(message["To"]) == "office@example.com" and "test message" in str(message["Subject"])

    await target.get_by_text("Delivery log").click()
    await expect(target.get_by_role("table")).to_contain_text("Test")
    await expect(target.get_by_role("table")).to_contain_text("sent")

    listed = await page.request.get(f"{live_url}/api/v1/notification_targets/")
    [saved] = await listed.json()
    assert "PrintDone" not in saved["events"] and "PrintStarted" in saved["events"]


async def test_a_member_sees_no_notifications_link_and_adds_only_own_targets(
        live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811 (the fixture)
    operator = await farm.member(Role.OPERATOR)
    await sign_in(page, live_url, operator.user.email)
    await expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Notifications")).to_have_count(0)
    await page.goto(f"{live_url}/notifications/")
    await expect(page.get_by_label("For")).to_have_value("user")
    await expect(page.get_by_label("For").locator("option")).to_have_count(1)


@pytest.mark.parametrize("width", [1280, 390])
async def test_the_notifications_and_link_pages_are_labelled_named_and_readable(
        live_url: str, farm: Farm, browser: Browser, width: int) -> None:  # noqa: F811 (the fixture)
    admin = await farm.member(Role.ADMIN)
    printer = await farm.printer(admin, "Voron 2.4", status=PAUSED)
    print_ = await farm.print(printer, current=True, filename="gear.gcode")
    async with httpx.AsyncClient(base_url=live_url, headers=admin.headers) as api:
        made = await api.post("/api/v1/notification_targets/", json={
            "url": "mailtos://me:secret@smtp.example.com:587?from=a@example.com&to=b@example.com",
            "events": ["FailureAlert"], "name": "Office"})
        assert made.status_code == 201

    async def issue(session: Any) -> str:
        link = await action_links.issue(session, live_url, organization_id=printer.organization_id,
                                        printer_id=printer.id, print_id=print_.id, action=LinkAction.RESUME)
        await session.commit()
        return link.url

    link = await farm.run(issue)
    context = await browser.new_context(viewport={"width": width, "height": 900})
    tab = await context.new_page()
    try:
        await sign_in(tab, live_url, admin.user.email)
        problems = await _audit(tab, f"{live_url}/notifications/")
        await expect(tab.get_by_role("heading", name="Office")).to_be_visible()
        await tab.get_by_role("listitem").filter(has_text="Office").get_by_text("Delivery log").click()
        problems += await tab.evaluate(AUDIT)
        problems += await _audit(tab, link)
        assert problems == []
    finally:
        await context.close()
