"""What the pages say of a printer and its print is true, and the same on every page: a paused
print is Paused (and says who paused it) on its print page, in the history, on its fleet card and
in the library; a printer warming up for its print is Heating, not "Printing · 0 %"."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page, expect

from agent_helpers import until
from browser import browser, page, sign_in  # noqa: F401  (fixtures)
from conftest import PAUSED, PRINTING, Farm, now
from layerfleet.accounts.models import Role, User
from layerfleet.api.eiger_v3.views import printer_state, printing_state
from layerfleet.fleet.models import FleetState, PausedBy, Printer, fleet_state, paused_by
from layerfleet.library import service as library
from layerfleet.library.models import SliceStatus
from layerfleet.printer_agent.connector import PrinterState
from layerfleet.prints.models import Print
from test_eiger_api import cube_stl
from test_web_fleet import LiveFarm, live_farm  # noqa: F401  (a fixture)


def heating(completion: float | None = 0.0) -> dict[str, Any]:
    return {**PRINTING, "progress": {"completion": completion},
            "temperatures": {"tool0": {"actual": 31.0, "target": 215.0}, "bed": {"actual": 58.0, "target": 60.0}}}


def test_the_domain_decides_heating_once() -> None:
    assert fleet_state(heating()) is FleetState.HEATING
    assert fleet_state(heating(None)) is FleetState.HEATING
    # Under way, or at temperature: printing, whatever a heater does meanwhile.
    assert fleet_state(heating(0.5)) is FleetState.PRINTING
    at_temperature = {**PRINTING, "temperatures": {"tool0": {"actual": 212.0, "target": 215.0}}}
    assert fleet_state(at_temperature) is FleetState.PRINTING
    assert fleet_state(PRINTING) is FleetState.PRINTING
    # The Eiger API keeps its own enums, and agrees: its printer is Printing, its print Heating.
    warming = Printer(id=1, status=heating())
    assert (printer_state(warming), printing_state(warming)) == ("Printing", "Heating")
    # A paused printer cooling its nozzle stays paused.
    assert fleet_state({**PAUSED, "temperatures": {"tool0": {"actual": 30.0, "target": 215.0}}}) is FleetState.PAUSED


def test_who_paused_a_print() -> None:
    printer = Printer(id=1, status=PAUSED, current_print_id=7)
    by_hand = Print(id=7)
    assert paused_by(printer, by_hand) is PausedBy.PERSON
    assert paused_by(printer, Print(id=7, paused_at=now())) is PausedBy.DETECTOR
    # Resumed (which answers the alert) and paused again by hand: a person's pause now.
    earlier = now()
    assert paused_by(printer, Print(id=7, paused_at=earlier, alert_acknowledged_at=now())) is PausedBy.PERSON
    # Not the printer's print, ended, or the printer not paused: not paused at all.
    assert paused_by(printer, Print(id=8)) is None
    assert paused_by(printer, Print(id=7, finished_at=now())) is None
    assert paused_by(Printer(id=1, status=PRINTING, current_print_id=7), by_hand) is None


async def test_a_print_the_detector_paused_is_paused_on_every_page(
        live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811
    owner = await farm.member()
    printer = await farm.printer(owner, "Voron 2.4", status=PAUSED)
    print_ = await farm.print(printer, filename="bracket.gcode", current=True, alerted_at=now(), paused_at=now())
    warming = await farm.printer(owner, "Prusa MK4", status=heating())
    await farm.print(warming, filename="cube.gcode", current=True)

    await sign_in(page, live_url, owner.user.email)
    card = page.get_by_role("listitem").filter(has=page.get_by_role("link", name="Voron 2.4"))
    await expect(card.locator(".badge")).to_have_text("Paused")
    await expect(card).to_contain_text("Paused by the failure detector")
    await expect(card).not_to_contain_text("Not watched")
    warm_card = page.get_by_role("listitem").filter(has=page.get_by_role("link", name="Prusa MK4"))
    await expect(warm_card.locator(".badge")).to_have_text("Heating")
    await expect(warm_card).not_to_contain_text("0 %")
    await expect(warm_card).to_contain_text("Nozzle 31 / 215 °C")

    await page.goto(f"{live_url}/printers/{warming.id}/")
    await expect(page.locator("#p-state")).to_have_text("Heating")
    await expect(page.get_by_role("navigation", name="Breadcrumb")).to_have_text("Fleet / Prusa MK4")

    await page.goto(f"{live_url}/printers/{printer.id}/")
    await expect(page.locator("#p-state")).to_have_text("Paused")
    await expect(page.locator("#p-watch")).to_have_text("Watching resumes with the print.")

    await page.goto(f"{live_url}/prints/{print_.id}/")
    await expect(page.locator(".print-title .badge")).to_have_text("Paused")
    await expect(page.locator("#paused-by")).to_contain_text("Paused by the failure detector")
    facts = page.locator("dl.facts")
    await expect(facts).to_contain_text("Not yet: paused by the failure detector")
    await expect(facts).not_to_contain_text("Still printing")

    await page.goto(f"{live_url}/prints/")
    row = page.locator("table.prints tbody tr").filter(has_text="bracket.gcode")
    await expect(row.locator(".badge").first).to_have_text("Paused")
    await expect(row).to_contain_text("by the failure detector")
    await expect(page.locator("table.prints tbody tr").filter(has_text="cube.gcode")).to_contain_text("Printing…")

    await page.goto(f"{live_url}/library/")
    listed = page.locator("li.printer", has_text="Voron 2.4")
    await expect(listed.locator(".badge")).to_have_text("Paused")
    await expect(listed).to_contain_text("Paused by the failure detector")
    await expect(page.locator("li.printer", has_text="Prusa MK4").locator(".badge")).to_have_text("Heating")


async def _true(value: bool) -> bool:
    return value


async def test_a_print_paused_through_the_api_is_paused_on_every_page(
        live_url: str, live_farm: LiveFarm, page: Page) -> None:  # noqa: F811
    printer_id = live_farm.ids[0]
    await sign_in(page, live_url, live_farm.owner.user.email)
    card = page.get_by_role("listitem").filter(has=page.get_by_role("link", name="Simulated printer 1"))
    await expect(card.locator(".badge")).to_have_text("Printing", timeout=30_000)

    async with httpx.AsyncClient(base_url=live_url, headers=live_farm.owner.headers, timeout=10) as api:
        assert (await api.post(f"/api/v1/printers/{printer_id}/pause_print/")).json()["succeeded"] is True
        await until(lambda: _true(live_farm.printers[0].state is PrinterState.PAUSED), 15)
        await expect(card.locator(".badge")).to_have_text("Paused", timeout=15_000)
        print_id = (await api.get(f"/api/v1/printers/{printer_id}/")).json()["current_print"]["id"]

    await expect(card).to_contain_text("Paused by a person")
    await expect(card).not_to_contain_text("Not watched")
    await expect(card.get_by_role("button", name="Resume")).to_be_visible()

    await page.goto(f"{live_url}/prints/{print_id}/")
    await expect(page.locator(".print-title .badge")).to_have_text("Paused")
    await expect(page.locator("dl.facts")).to_contain_text("Not yet: paused by a person")

    await page.goto(f"{live_url}/prints/")
    row = page.locator("table.prints tbody tr").filter(has=page.locator(f'a[href="/prints/{print_id}/"]'))
    await expect(row.locator(".badge").first).to_have_text("Paused")
    await expect(row).to_contain_text("by a person")

    await page.goto(f"{live_url}/printers/{printer_id}/")
    await expect(page.locator("#p-state")).to_have_text("Paused")
    await expect(page.locator("#p-paused-by")).to_have_text(re.compile("Paused by a person"))


async def test_revoking_a_token_in_use_warns_first_and_the_list_says_when_each_was_used(
        live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811
    owner = await farm.member()  # its token, made by the farm, is used below: "in use"
    async with httpx.AsyncClient(base_url=live_url, headers=owner.headers, timeout=10) as api:
        assert (await api.get("/api/v1/printers/")).status_code == 200
    await sign_in(page, live_url, owner.user.email, then="/keys/")
    tokens = page.locator("#api-tokens")
    await tokens.get_by_label("Name of a new token").fill("never used")
    await tokens.get_by_role("button", name="Create token").click()
    await expect(tokens.locator(".secret")).to_contain_text("it will not be shown again")

    used = tokens.get_by_role("listitem").filter(has_text="Last used").filter(has_not_text="never")
    await expect(used).to_have_count(1)
    await expect(used).to_contain_text(re.compile(r"Last used: .+ \((less than a minute|\d+ min) ago\)"))
    await used.get_by_role("button", name=re.compile("^Revoke")).click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Warning: it was used")
    await expect(dialog).to_contain_text("simulated printers")
    await dialog.get_by_role("button", name="Go back").click()

    await tokens.get_by_role("button", name="Revoke API token never used").click()
    await expect(dialog).to_contain_text("This cannot be undone.")
    await expect(dialog).not_to_contain_text("Warning")
    await dialog.get_by_role("button", name="Go back").click()


async def test_admins_rotate_a_printers_agent_token_and_see_the_new_one_once(
        live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811
    owner = await farm.member()
    printer = await farm.printer(owner, "Voron 2.4", status=PRINTING)
    operator = await farm.member(Role.OPERATOR)
    await sign_in(page, live_url, operator.user.email, then=f"/printers/{printer.id}/")
    await expect(page.locator("#p-state")).to_have_text("Printing")
    await expect(page.get_by_role("button", name="Rotate agent token")).to_have_count(0)
    await page.context.clear_cookies()

    # The endpoint belongs to the v1 API; the page is held to the answer it documents.
    asked: list[str] = []

    async def answer(route: Any) -> None:
        asked.append(route.request.method)
        await route.fulfill(json={"succeeded": True, "printer": {"id": printer.id, "auth_token": "n3w-t0ken"}})

    await page.route(f"**/api/v1/printers/{printer.id}/rotate_token/", answer)
    await sign_in(page, live_url, owner.user.email, then=f"/printers/{printer.id}/")
    await page.get_by_role("button", name="Rotate agent token").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("disconnected")
    await dialog.get_by_role("button", name="Go back").click()
    assert asked == []
    await page.get_by_role("button", name="Rotate agent token").click()
    await dialog.get_by_role("button", name="Rotate token").click()
    await expect(page.locator("#new-token-value")).to_have_text("n3w-t0ken")
    await expect(page.locator("#new-token")).to_contain_text("it is not shown again")
    assert asked == ["POST"]


async def _part_whose_slice_failed(farm: Farm, owner: Any, tmp_path: Path, title: str) -> None:
    data_dir = farm.app.state.services.settings.data_dir

    async def make(session: Any) -> None:
        user = await session.get(User, owner.user.id)
        received = await library.receive_stl(_one(cube_stl(tmp_path)), f"{title}.stl", data_dir)
        created = await library.create_part(session, received, owner=user, preset=await library.default_preset(session),
                                            folder_uuid=None, data_dir=data_dir)
        created.job.status = SliceStatus.ERROR.value
        created.job.error = "The slicer gave up."
        await session.commit()

    await farm.run(make)


async def _one(content: bytes) -> AsyncIterator[bytes]:
    yield content


async def test_a_part_whose_slice_failed_is_sliced_again_or_deleted_from_the_library(
        live_url: str, farm: Farm, page: Page, tmp_path: Path) -> None:  # noqa: F811
    owner = await farm.member()
    await _part_whose_slice_failed(farm, owner, tmp_path, "bracket")
    await _part_whose_slice_failed(farm, owner, tmp_path, "hinge")
    await sign_in(page, live_url, owner.user.email, then="/library/")
    # The whole title of the slicer profile fits its drop-down.
    assert await page.locator("#preset").evaluate("select => select.scrollWidth <= select.clientWidth")

    parts = page.locator("#parts")
    hinge = parts.locator("tr", has_text="hinge")
    await expect(hinge).to_contain_text("The slicer gave up.")
    await hinge.get_by_role("button", name="Delete hinge").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("This cannot be undone.")
    await dialog.get_by_role("button", name="Delete part").click()
    await expect(parts.locator("tr", has_text="hinge")).to_have_count(0)

    bracket = parts.locator("tr", has_text="bracket")
    await bracket.get_by_role("button", name="Slice bracket again").click()
    await expect(page.locator("#toasts")).to_contain_text("Slicing “bracket” again.")
    await expect(bracket.locator(".slicing .badge")).not_to_have_text("Error")
    await expect(bracket.get_by_role("button", name="Slice bracket again")).to_have_count(0)
