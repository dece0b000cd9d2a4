"""The fleet page and a printer's page in Debian's Chromium, against a real server with
simulated printers: live updates without a reload, pause reaching the agent, ignore areas
drawn with the mouse, settings."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect

from agent_helpers import until
from browser import browser, page, sign_in  # noqa: F401  (fixtures)
from conftest import IDLE, PAUSED, PRINTING, Farm, Member
from layerfleet.fleet.models import Printer
from layerfleet.printer_agent.connector import PrinterState
from layerfleet.printer_agent.runner import AgentRunner, Cadence
from layerfleet.simulator.farm import TokenStore, link_printers
from layerfleet.simulator.printer import SimulatedCamera, SimulatedPrinter, SimulationOptions

FAST = Cadence(idle_status=1.0, active_status=0.3, watched_picture=0.5, unwatched_picture=5.0,
               min_backoff=0.1, max_backoff=0.5, http_timeout=5.0)
# Long prints at 10× speed: progress moves every status, and they stay printing for the test.
LONG_PRINTS = SimulationOptions(speed=10.0, min_print_minutes=60, max_print_minutes=60, heating_rate=20.0)


@dataclass
class LiveFarm:
    owner: Member
    printers: list[SimulatedPrinter]
    ids: list[int]


@pytest.fixture
async def live_farm(live_url: str, farm: Farm, tmp_path: Path) -> AsyncIterator[LiveFarm]:
    owner = await farm.member()
    links = await link_printers(live_url, owner.token, 2, TokenStore(tmp_path / "tokens.json"))
    printers = [SimulatedPrinter(link.name, LONG_PRINTS, seed=n) for n, link in enumerate(links)]
    runners = [AgentRunner(live_url, link.token, p, SimulatedCamera(p), cadence=FAST, label=link.name)
               for link, p in zip(links, printers, strict=True)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    async with httpx.AsyncClient(base_url=live_url, headers=owner.headers, timeout=10) as api:
        listed = {p["name"]: p["id"] for p in (await api.get("/api/v1/printers/")).json()}
    try:
        yield LiveFarm(owner, printers, [listed[link.name] for link in links])
    finally:
        for runner in runners:
            runner.stop()
        await asyncio.gather(*tasks)


async def _printer(farm: Farm, printer_id: int) -> Printer:
    async def load(session: Any) -> Printer:
        found = await session.get(Printer, printer_id)
        assert found is not None
        return found

    return await farm.run(load)  # type: ignore[no-any-return]


async def test_cards_update_live_and_pausing_one_pauses_its_agent(
        live_url: str, live_farm: LiveFarm, page: Page) -> None:  # noqa: F811
    await sign_in(page, live_url, live_farm.owner.user.email)
    await page.evaluate("window.sameDocument = true")  # gone if the page ever reloads
    first = page.get_by_role("listitem").filter(has=page.get_by_role("link", name="Simulated printer 1"))
    await expect(first.locator(".badge")).to_have_text("Printing", timeout=30_000)
    await expect(first.locator("img.pic")).to_be_visible()

    # Progress and temperatures move on the card while the page stays the same document, and
    # what did not change stays the same element (a click spanning an update is not lost).
    pause_button = await first.get_by_role("button", name="Pause").element_handle()
    texts = [await first.locator(".body").inner_text()]
    for _ in range(3):
        await expect(first.locator(".body")).not_to_have_text(texts[-1], timeout=10_000)
        texts.append(await first.locator(".body").inner_text())
    assert re.search(r"Nozzle \d+ / \d+ °C", texts[-1])
    assert await pause_button.evaluate("button => button.isConnected") is True
    assert await page.evaluate("window.sameDocument") is True
    await expect(page.locator("#live")).to_have_text("● Live")

    await first.get_by_role("button", name="Pause").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Pause Simulated printer 1?")
    await dialog.get_by_role("button", name="Pause print").click()

    await until(lambda: _true(live_farm.printers[0].state is PrinterState.PAUSED), 15)
    # The printer's own pause settings travelled with the command (seed defaults).
    assert live_farm.printers[0].gcode_received == ["G1 E-6.5", "G1 Z+2.5", "M104 S0"]
    await expect(first.locator(".badge")).to_have_text("Paused")
    await expect(first.get_by_role("button", name="Resume")).to_be_visible()
    second = page.get_by_role("listitem").filter(has=page.get_by_role("link", name="Simulated printer 2"))
    await expect(second.locator(".badge")).to_have_text("Printing")
    assert live_farm.printers[1].state is PrinterState.PRINTING
    assert await page.evaluate("window.sameDocument") is True

    await first.get_by_role("button", name="Resume").click()
    await until(lambda: _true(live_farm.printers[0].state in (PrinterState.RESUMING, PrinterState.PRINTING)), 15)
    await expect(first.locator(".badge")).to_have_text("Printing", timeout=20_000)


async def _true(value: bool) -> bool:
    return value


async def test_an_ignore_area_drawn_with_the_mouse_is_saved(
        live_url: str, live_farm: LiveFarm, farm: Farm, page: Page) -> None:  # noqa: F811
    printer_id = live_farm.ids[0]
    await sign_in(page, live_url, live_farm.owner.user.email, then=f"/printers/{printer_id}/")
    await expect(page.locator("#pic")).to_have_attribute("src", re.compile(r"/media/"), timeout=30_000)
    await page.get_by_role("button", name="Draw an ignore area").click()
    await expect(page.get_by_role("button", name=re.compile("Drag over the picture"))).to_have_attribute(
        "aria-pressed", "true")
    overlay = page.locator("#overlay")
    await overlay.scroll_into_view_if_needed()
    box = await overlay.bounding_box()  # after scrolling: the mouse works in viewport coordinates
    assert box is not None
    # From 10 %, 20 % to 40 %, 60 % of the picture, dragged bottom-right to top-left.
    await page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.6)
    await page.mouse.down()
    await page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.4, steps=5)
    await page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.2, steps=5)
    await page.mouse.up()
    await expect(page.locator("#toasts")).to_contain_text("Ignore area saved")
    await expect(page.locator("#mask-list")).to_contain_text("Area 1: from 10 %, 20 % to 40 %, 60 %")

    masks = (await _printer(farm, printer_id)).ignore_masks
    assert len(masks) == 1
    assert masks[0] == pytest.approx([0.1, 0.2, 0.4, 0.6], abs=0.01)

    # The area is drawn over the picture: blue pixels inside it, none outside.
    painted = await page.evaluate("""() => {
        const c = document.getElementById('overlay'), ctx = c.getContext('2d');
        const at = (fx, fy) => ctx.getImageData(Math.round(fx * c.width), Math.round(fy * c.height), 1, 1).data;
        return [Array.from(at(0.25, 0.4)), Array.from(at(0.8, 0.8))];
    }""")
    inside, outside = painted
    assert inside[3] > 0 and inside[2] > inside[0]
    assert outside[3] == 0

    await page.reload()
    await expect(page.locator("#mask-list")).to_contain_text("Area 1")
    await page.get_by_role("button", name="Remove ignore area 1").click()
    await expect(page.locator("#mask-list")).to_contain_text("No ignore areas.")
    assert (await _printer(farm, printer_id)).ignore_masks == []


async def test_settings_are_saved_and_bad_values_explained(
        live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811
    owner = await farm.member()
    printer = await farm.printer(owner, "Prusa MK4", status=IDLE)
    await sign_in(page, live_url, owner.user.email, then=f"/printers/{printer.id}/")

    await page.get_by_label("Retract filament (mm)").fill("250")
    await page.get_by_role("button", name="Save settings").click()
    await expect(page.locator("#settings-error")).to_have_text(
        "Retract filament: give a distance from 0 to 100 mm.")
    assert (await _printer(farm, printer.id)).retract_on_pause == 6.5

    await page.get_by_label("Retract filament (mm)").fill("3")
    await page.get_by_label("Lift the nozzle (mm of Z)").fill("10")
    await page.get_by_label("Turn the bed heater off").check()
    await page.get_by_label("Only alert me").check()
    await page.get_by_label("Name").fill("Prusa MK4 #2")
    await page.get_by_role("button", name="Save settings").click()
    await expect(page.locator("#toasts")).to_contain_text("Settings saved.")
    saved = await _printer(farm, printer.id)
    assert (saved.name, saved.retract_on_pause, saved.lift_z_on_pause) == ("Prusa MK4 #2", 3.0, 10.0)
    assert saved.bed_off_on_pause is True and saved.action_on_failure == "NONE"
    # The head follows the stream: the new name shows without a reload.
    await expect(page.locator("#p-name")).to_have_text("Prusa MK4 #2")


async def test_filter_by_state_and_search_by_name(live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811
    owner = await farm.member()
    await farm.printer(owner, "Voron 2.4", status=PRINTING)
    await farm.printer(owner, "Voron Trident", status=PAUSED)
    await farm.printer(owner, "Ender 3")
    await farm.printer(owner, "Bambu X1", status=IDLE)
    await sign_in(page, live_url, owner.user.email)
    cards = page.locator("#cards > li:not(.hidden)")
    await expect(cards).to_have_count(4)
    await expect(page.locator("#fleet-count")).to_have_text("· 4 printers, 1 printing")

    await page.get_by_label("State").select_option("Paused")
    await expect(cards).to_have_count(1)
    await expect(cards.first).to_contain_text("Voron Trident")
    await page.get_by_label("State").select_option("Offline")
    await expect(cards).to_have_count(1)
    await expect(cards.first).to_contain_text("Ender 3")
    await page.get_by_label("State").select_option("")
    await page.get_by_label("Search printers").fill("voron")
    await expect(cards).to_have_count(2)
    await page.get_by_label("Search printers").fill("prusa")
    await expect(cards).to_have_count(0)
    await expect(page.locator("#empty")).to_have_text("No printer matches the search or the state filter.")


async def test_a_printer_of_another_organization_is_not_found(live_url: str, farm: Farm) -> None:
    owner = await farm.member()
    stranger = await farm.member(organization="Farm B")
    theirs = await farm.printer(stranger, "Theirs")
    async with httpx.AsyncClient(base_url=live_url, timeout=10) as client:
        assert (await client.get(f"/printers/{theirs.id}/")).status_code == 303  # not signed in
        assert (await client.get("/events/fleet")).status_code == 401
        signed = await client.post("/accounts/login/", data={"email": owner.user.email, "password": "password-123"})
        assert signed.status_code == 303
        missing = await client.get(f"/printers/{theirs.id}/")
        assert missing.status_code == 404 and "does not exist" in missing.text
        assert (await client.get(f"/printers/{theirs.id}/history.json")).status_code == 404


async def test_the_library_follows_printer_states_from_the_stream(
        live_url: str, live_farm: LiveFarm, page: Page) -> None:  # noqa: F811
    await sign_in(page, live_url, live_farm.owner.user.email, then="/library/")
    printer = page.locator("li.printer", has_text="Simulated printer 1")
    await expect(printer.locator(".badge")).to_have_text("Printing", timeout=30_000)
    async with httpx.AsyncClient(base_url=live_url, headers=live_farm.owner.headers, timeout=10) as api:
        paused = await api.post(f"/api/v1/printers/{live_farm.ids[0]}/pause_print/")
        assert paused.json()["succeeded"] is True
    await expect(printer.locator(".badge")).to_have_text("Paused", timeout=15_000)
