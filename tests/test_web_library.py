"""The library and queues page: in Chromium against a real server (upload → sliced → build →
queue), and the Eiger v3 API taking the page's session cookie without letting other sites use it."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.async_api import Page, expect

from browser import browser, page, sign_in  # noqa: F401  (fixtures)
from conftest import Farm
from layerfleet.accounts.models import Role
from test_eiger_api import V3, assert_error, basic, cube_stl
from test_slicing import needs_prusaslicer

PASSWORD = "password-123"  # conftest's Farm.member
DURATION = re.compile(r"^(\d+ h \d\d min|\d+ min|\d+ s)$")


async def _signed_in(client: httpx.AsyncClient, email: str) -> None:
    response = await client.post("/accounts/login/", data={"email": email, "password": PASSWORD})
    assert response.status_code == 303, response.text


# --- the API and the session cookie ---------------------------------------------------------------

async def test_the_v3_api_takes_the_session_cookie_from_our_own_pages_only(
        client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, "Cookie MK4")
    basic_headers = await basic(farm, owner)

    # Without credentials nothing changes: 401 with the Basic challenge; the page wants a sign-in.
    response = await client.get(f"{V3}/devices")
    assert_error(response, 401, "authentication required")
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    page_response = await client.get("/library/")
    assert page_response.status_code == 303 and "/accounts/login/?next=/library/" in page_response.headers["location"]
    assert (await client.get("/library/sections/parts")).status_code == 401

    await _signed_in(client, owner.user.email)
    listed = await client.get(f"{V3}/devices")
    assert listed.status_code == 200 and [d["name"] for d in listed.json()["items"]] == ["Cookie MK4"]
    assert (await client.get("/library/")).status_code == 200
    assert (await client.get("/library/sections/nothing")).status_code == 404

    # A change sent by another site with only the cookie is refused in the dialect's format.
    for cross_site in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        for method, path in (("POST", f"{V3}/builds"), ("POST", f"{V3}/devices/{printer.uuid}/queue/start_next"),
                             ("DELETE", f"{V3}/devices/{printer.uuid}/queue/{printer.uuid}")):
            response = await client.request(method, path, headers=cross_site, json={})
            assert_error(response, 403, "cross-site request refused")
    # From our own origin the cookie is enough (the request gets as far as its body).
    own = await client.post(f"{V3}/builds", headers={"Origin": "http://testserver"}, content=b"")
    assert_error(own, 400, "JSON request body is required")
    assert_error(await client.post(f"{V3}/devices/{printer.uuid}/queue/start_next",
                                   headers={"Sec-Fetch-Site": "same-origin"}), 409, "queue of Cookie MK4 is empty")

    # An Authorization header is the caller's credential whatever cookie comes with it.
    assert (await client.get(f"{V3}/users", headers=basic_headers)).status_code == 200
    assert_error(await client.get(f"{V3}/users", headers={"Authorization": "Basic bm9wZTpub3Bl"}), 401, "unknown")
    assert_error(await client.get(f"{V3}/users", headers=owner.headers), 401)

    # Signed out, the cookie is worth nothing.
    assert (await client.post("/accounts/logout/")).status_code == 303
    assert_error(await client.get(f"{V3}/devices"), 401)


async def test_a_viewer_may_look_and_upload_but_not_print(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    viewer = await farm.member(Role.VIEWER)
    printer = await farm.printer(owner, "Viewer MK4")
    await _signed_in(client, viewer.user.email)
    page_html = (await client.get("/library/")).text
    assert "Upload and slice" in page_html and "Viewer MK4" in page_html
    assert "making builds and printing needs an operator" in page_html
    response = await client.post(f"{V3}/devices/{printer.uuid}/queue/start_next")
    assert_error(response, 403, "needs operator")


# --- the page in a browser ------------------------------------------------------------------------

@needs_prusaslicer
async def test_upload_slice_build_and_queue_in_the_browser(
        live_url: str, farm: Farm, page: Page, tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    owner = await farm.member()
    await farm.printer(owner, "Queue MK4")  # never connected: offline, but its queue takes builds
    await sign_in(page, live_url, owner.user.email, then="/library/")
    await expect(page.get_by_role("heading", name="Library and queues")).to_be_visible()

    # Upload: the page follows the slice job until PrusaSlicer is done, and says what it found.
    await page.get_by_label("STL file").set_input_files(
        {"name": "cube.stl", "mimeType": "model/stl", "buffer": cube_stl(tmp_path, 10.0)})
    await page.get_by_label("Name").fill("Calibration cube")
    await page.get_by_role("button", name="Upload and slice").click()
    status = page.locator("#upload-status")
    await expect(status.locator("#upload-state")).to_have_text("Sliced", timeout=90_000)
    await expect(page.locator("#upload-message")).to_have_attribute("aria-live", "polite")
    await expect(page.locator("#upload-message")).to_contain_text("Calibration cube is sliced: about")
    await expect(page.locator("#upload-time")).to_have_text(DURATION)
    await expect(page.locator("#upload-material")).to_contain_text(re.compile(r"\d+\.\d g · \d+\.\d cm³ PLA"))
    part_row = page.locator("#parts").get_by_role("row").filter(has_text="Calibration cube")
    await expect(part_row).to_contain_text("Sliced")
    await expect(part_row).to_contain_text("v1")
    await expect(part_row.locator(".estimate")).to_have_text(await page.locator("#upload-time").inner_text())

    # A build of one instance reuses the part's G-code: ready at once.
    await page.get_by_role("button", name="Make a build of Calibration cube").click()
    dialog = page.get_by_role("dialog", name="Make a build")
    await expect(dialog.get_by_label("Build title")).to_have_value("Calibration cube")
    await dialog.get_by_label("Build title").fill("One cube")
    await dialog.get_by_role("button", name="Make build").click()
    build_row = page.locator("#builds").get_by_role("row").filter(has_text="One cube")
    await expect(build_row).to_contain_text("Sliced")
    await expect(build_row.locator(".estimate")).to_have_text(DURATION)

    # Two instances are arranged on one plate and sliced together; the list follows the job.
    await page.get_by_role("button", name="Make a build of Calibration cube").click()
    await dialog.get_by_label("Build title").fill("Two cubes")
    await dialog.get_by_label("Instances on the plate").fill("0")
    await dialog.get_by_role("button", name="Make build").click()
    await expect(dialog.get_by_role("alert")).to_have_text("Instances on the plate: a whole number from 1 to 100.")
    await dialog.get_by_label("Instances on the plate").fill("2")
    await dialog.get_by_role("button", name="Make build").click()
    plate_row = page.locator("#builds").get_by_role("row").filter(has_text="Two cubes")
    await expect(plate_row).to_contain_text("2 instances")
    await expect(plate_row.locator(".slicing")).to_have_text("Sliced", timeout=90_000)

    # Queued on a printer: the printer's queue on the page shows it.
    await page.get_by_label("Printer for One cube").select_option(label="Queue MK4")
    await page.get_by_role("button", name="Add One cube to the queue").click()
    queue = page.get_by_role("list", name="Queue of Queue MK4")
    await expect(queue.get_by_role("listitem")).to_have_count(1)
    await expect(queue).to_contain_text("One cube")
    await expect(page.locator("#printers")).to_contain_text("1 waiting")

    # Printing now on a printer that cannot take it: the API's reason, in words.
    await page.get_by_role("button", name="Print One cube now").click()
    await page.get_by_role("dialog", name="Print now?").get_by_role("button", name="Print now").click()
    await expect(page.get_by_role("alert").filter(has_text="Printer Queue MK4 is offline")).to_be_visible()

    # Start next refuses the same way; removing the entry empties the queue.
    await page.evaluate("document.getElementById('toasts').replaceChildren()")
    await page.get_by_role("button", name="Start the next build on Queue MK4").click()
    await page.get_by_role("dialog", name="Start the next build?").get_by_role("button", name="Start printing").click()
    await expect(page.get_by_role("alert").filter(has_text="Printer Queue MK4 is offline")).to_be_visible()
    await page.get_by_role("button", name="Remove One cube from the queue of Queue MK4").click()
    await page.get_by_role("dialog", name="Remove from the queue?").get_by_role("button", name="Remove").click()
    await expect(page.locator("#printers")).to_contain_text("Queue empty.")

    # Readable on a phone: nothing wider than the screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.reload()
    await expect(part_row).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390


async def test_refused_uploads_say_why_in_words(live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811
    owner = await farm.member()
    await sign_in(page, live_url, owner.user.email, then="/library/")
    upload = page.get_by_role("button", name="Upload and slice")
    error = page.locator("#upload-error")

    await upload.click()
    await expect(error).to_have_text("Choose an STL file to upload.")
    await expect(page.get_by_label("STL file")).to_be_focused()

    await page.get_by_label("STL file").set_input_files(
        {"name": "report.stl", "mimeType": "model/stl", "buffer": b"%PDF-1.4 this is not a model"})
    await upload.click()
    await expect(error).to_contain_text("report.stl was not accepted:")
    await expect(error).to_contain_text("not an STL")
    await expect(error).to_have_attribute("role", "alert")
    await expect(page.locator("#upload-state")).to_have_text("Refused")

    await page.get_by_label("STL file").set_input_files({"name": "empty.stl", "mimeType": "model/stl", "buffer": b""})
    await upload.click()
    await expect(error).to_have_text("empty.stl was not accepted: The file is empty.")
    await expect(page.locator("#parts")).to_contain_text("No parts yet.")
