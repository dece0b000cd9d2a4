"""The "Link a printer" and "Keys" pages in a real browser (Debian's Chromium through Playwright)
against a real server: a code links a printer as an agent would, and keys made on the page work
against their APIs until they are revoked there."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import Locator, Page, expect
from sqlalchemy.ext.asyncio import AsyncSession

from browser import browser, page, sign_in  # noqa: F401  (fixtures)
from conftest import Farm
from layerfleet.accounts.models import Role, User
from layerfleet.agents import linking


async def _revoke(tab: Page, section: Locator, button_name: str) -> None:
    await section.get_by_role("button", name=button_name).click()
    dialog = tab.get_by_role("dialog")
    await expect(dialog).to_contain_text("This cannot be undone.")
    await dialog.get_by_role("button", name="Revoke").click()


async def test_the_link_page_gives_a_code_with_the_commands_and_says_when_a_printer_links(
        live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811 (the fixture)
    owner = await farm.member()
    await sign_in(page, live_url, owner.user.email, then="/link/")

    await page.get_by_role("button", name="Get a linking code").click()
    code_text = page.locator("#link-code")
    await expect(code_text).to_have_text(re.compile(r"^\d{6}$"))
    code = await code_text.inner_text()
    await expect(page.locator("#cmd-octoprint")).to_have_text(
        f"layerfleet agent --server {live_url} --code {code} --octoprint http://127.0.0.1:5000 "
        "--octoprint-api-key OCTOPRINT_API_KEY")
    await expect(page.locator("#cmd-moonraker")).to_contain_text(f"--server {live_url} --code {code} --moonraker")
    await expect(page.locator("#cfg-octoprint")).to_contain_text(f"endpoint_prefix: {live_url}")
    await expect(page.locator("#cfg-moonraker")).to_have_text(f"[server]\nurl = {live_url}")
    await expect(page.locator("#link-expiry")).to_have_text(re.compile(r"^Expires in 1 h 59 min \d+ s$"))
    await expect(page.locator("#link-state")).to_have_text("Waiting for a printer to use this code…")

    # The agent's side: the anonymous verify call of every Obico agent.
    async with httpx.AsyncClient(base_url=live_url) as agent:
        answer = await agent.post("/api/v1/octo/verify/", params={"code": code}, json={"name": "Voron 2.4"})
    assert answer.status_code == 200, answer.text
    await expect(page.locator("#link-state")).to_have_text("Linked: Voron 2.4. Open its page")
    printer_link = page.locator("#link-state").get_by_role("link", name="Open its page")
    assert re.fullmatch(r"/printers/\d+/", await printer_link.get_attribute("href") or "")
    await expect(page.locator("#link-expiry")).to_have_text("Used")

    # A used code is not handed out again.
    await page.get_by_role("button", name="Link another printer").click()
    await expect(code_text).to_have_text(re.compile(r"^\d{6}$"))
    await expect(code_text).not_to_have_text(code)

    # Relinking a known printer: its code links the same printer again (and resets its token).
    await page.reload()
    await page.get_by_label("Printer").select_option(label="Relink Voron 2.4 (its agent must link again)")
    await page.get_by_role("button", name="Get a linking code").click()
    await expect(code_text).to_have_text(re.compile(r"^\d{6}$"))
    async with httpx.AsyncClient(base_url=live_url) as agent:
        again = await agent.post("/api/v1/octo/verify/", params={"code": await code_text.inner_text()})
    assert again.status_code == 200, again.text
    assert again.json()["printer"]["id"] == answer.json()["printer"]["id"]
    await expect(page.locator("#link-state")).to_have_text("Linked: Voron 2.4. Open its page")


async def test_linking_needs_an_admin_and_a_code_is_only_its_members(
        live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811 (the fixture)
    owner = await farm.member()
    operator = await farm.member(Role.OPERATOR)

    async def owners_code(session: AsyncSession) -> int:
        user = await session.get(User, owner.user.id)
        assert user is not None
        code = await linking.code_for(session, user)
        await session.commit()
        return code.id

    code_id = await farm.run(owners_code)

    await page.goto(f"{live_url}/link/")
    await expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/link/"))
    await sign_in(page, live_url, operator.user.email, then="/link/")
    await expect(page.get_by_role("button", name="Get a linking code")).to_have_count(0)
    await expect(page.locator("#link")).to_contain_text("needs the admin or owner role; you are operator")
    assert (await page.request.get(f"{live_url}/link/codes/{code_id}/")).status == 404


async def test_keys_made_on_the_page_work_until_revoked_there(
        live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811 (the fixture)
    owner = await farm.member()
    await sign_in(page, live_url, owner.user.email, then="/keys/")
    api = httpx.AsyncClient(base_url=live_url)

    # API token, created from the keyboard.
    tokens = page.locator("#api-tokens")
    await tokens.get_by_label("Name of a new token").fill("farm scripts")
    await page.keyboard.press("Enter")
    await expect(tokens.locator(".secret")).to_contain_text("it will not be shown again")
    token = await tokens.locator(".secret-value").inner_text()
    await expect(tokens.get_by_role("button", name="Copy the token")).to_be_focused()
    as_token = {"Authorization": f"Token {token}"}
    assert (await api.get("/api/v1/printers/", headers=as_token)).status_code == 200
    # The page's own token endpoints take the session cookie only: a token cannot mint tokens.
    assert (await api.post("/keys/api_tokens/", headers=as_token, json={"name": "more"})).status_code == 401
    await _revoke(page, tokens, "Revoke API token farm scripts")
    await expect(tokens.get_by_role("listitem").filter(has_text="farm scripts")).to_contain_text("Revoked")
    await expect(tokens.locator(".secret-value")).to_have_count(0)
    assert (await api.get("/api/v1/printers/", headers=as_token)).status_code == 401

    # Eiger access key: access key and secret key.
    access = page.locator("#access-keys")
    await access.get_by_label("Name of a new access key").fill("MES")
    await access.get_by_role("button", name="Create access key").click()
    await expect(access.locator(".secret-value")).to_have_count(2)
    access_key, secret_key = await access.locator(".secret-value").all_inner_texts()
    await expect(access.locator(".secret pre")).to_have_text(
        f"curl -u {access_key}:{secret_key} {live_url}/api/v3/devices")
    assert (await api.get("/api/v3/users", auth=(access_key, secret_key))).status_code == 200
    await _revoke(page, access, "Revoke access key MES")
    await expect(access.get_by_role("listitem").filter(has_text="MES")).to_contain_text("Revoked")
    assert (await api.get("/api/v3/users", auth=(access_key, secret_key))).status_code == 401

    # PrintWatch key, with its device limit; a wrong limit is refused in words.
    printwatch = page.locator("#printwatch-keys")
    await printwatch.get_by_label("Name of a new key").fill("Shelf B")
    await printwatch.get_by_label("Device limit").fill("0")
    await printwatch.get_by_role("button", name="Create PrintWatch key").click()
    await expect(printwatch.get_by_role("alert")).to_contain_text("Device limit:")
    await printwatch.get_by_label("Device limit").fill("2")
    await printwatch.get_by_role("button", name="Create PrintWatch key").click()
    await expect(printwatch.locator(".secret-value")).to_have_count(1)
    key = await printwatch.locator(".secret-value").inner_text()
    beat = {"api_key": key, "printer_id": "shelf-b-1", "state": 2}
    assert (await api.post("/api/v2/heartbeat", json=beat)).json()["statusCode"] == 214  # registered
    await page.reload()
    shelf = printwatch.get_by_role("listitem").filter(has_text="Shelf B")
    await expect(shelf).to_contain_text("Devices: 1 of 2 used")
    await expect(printwatch.locator(".secret-value")).to_have_count(0)  # shown once only
    await _revoke(page, printwatch, "Revoke PrintWatch key Shelf B")
    await expect(shelf).to_contain_text("Revoked")
    assert (await api.post("/api/v2/heartbeat", json=beat)).json()["statusCode"] == 217
    await api.aclose()


async def test_an_operator_sees_printwatch_keys_but_may_not_issue_them(
        live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811 (the fixture)
    owner = await farm.member()
    operator = await farm.member(Role.OPERATOR)
    async with httpx.AsyncClient(base_url=live_url, headers=owner.headers) as api:
        issued = await api.post("/api/v1/printwatch/keys/", json={"name": "Shelf A", "device_limit": 3})
    assert issued.status_code == 201, issued.text

    await sign_in(page, live_url, operator.user.email, then="/keys/")
    printwatch = page.locator("#printwatch-keys")
    await expect(printwatch.get_by_role("listitem").filter(has_text="Shelf A")).to_contain_text("Devices: 0 of 3 used")
    await expect(printwatch).to_contain_text("needs the admin or owner role; you are operator")
    await expect(printwatch.get_by_role("button")).to_have_count(0)
    # Their own tokens and access keys are theirs to make.
    await page.locator("#access-keys").get_by_role("button", name="Create access key").click()
    await expect(page.locator("#access-keys .secret-value")).to_have_count(2)
