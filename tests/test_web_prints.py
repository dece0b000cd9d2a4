"""The Prints pages: the history with the seed's filters, and one print's timeline, graph,
verdict and feedback frames, in a real browser (Debian's Chromium) against a real server."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import httpx
from PIL import Image
from playwright.async_api import Page, expect

from browser import browser, page, sign_in  # noqa: F401  (fixtures)
from conftest import Farm, Member
from layerfleet.accounts.models import Role
from layerfleet.config import Settings
from layerfleet.database import utcnow
from layerfleet.detection.models import Alert, AlertKind, PredictionFrame
from layerfleet.fleet.models import Printer
from layerfleet.media import media_root
from layerfleet.prints.models import Print, PrintShotFeedback
from layerfleet.web import prints as prints_page

PASSWORD = "password-123"  # conftest's Farm.member


def write_feedback_pictures(settings: Settings, print_: Print, count: int) -> None:
    """The JPEGs at the paths Farm.print gives feedback frames, so that the page shows them."""
    for n in range(count):
        file = media_root(settings.data_dir) / f"orgs/{print_.organization_id}/f{n}.jpg"
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (40 * n, 90, 60)).save(file, "JPEG")


async def add_detections(farm: Farm, printer: Printer, print_: Print, start: datetime) -> None:
    """Twenty scored frames climbing into the red, a warning at 12 minutes and a pausing
    failure at 18 minutes."""
    async def work(session: Any) -> None:
        for n in range(1, 21):
            session.add(PredictionFrame(
                print_id=print_.id, frame_number=n, taken_at=start + timedelta(minutes=n), p=n / 20, ewm_mean=n / 20,
                rolling_mean_short=0.0, rolling_mean_long=0.0, normalized_p=min(1.0, n / 19),
                image_path=f"orgs/{print_.organization_id}/frame-{n}.jpg",
                temperatures={"tool0": [min(215.0, 25.0 + 40 * n), 215.0], "bed": [60.0, 60.0]}))
        for minutes, kind, paused in ((12, AlertKind.WARNING, False), (18, AlertKind.FAILURE, True)):
            session.add(Alert(organization_id=printer.organization_id, printer_id=printer.id, print_id=print_.id,
                              kind=kind.value, normalized_p=min(1.0, minutes / 19), paused=paused,
                              created_at=start + timedelta(minutes=minutes)))
        await session.commit()

    await farm.run(work)


async def feedbacks_of(farm: Farm, print_id: int) -> list[PrintShotFeedback]:
    async def work(session: Any) -> list[PrintShotFeedback]:
        found = await session.get(Print, print_id)
        return list(found.feedbacks)

    result: list[PrintShotFeedback] = await farm.run(work)
    return result


async def failing_print(farm: Farm, settings: Settings, owner: Member) -> Print:
    printer = await farm.printer(owner, "Voron 2.4")
    start = utcnow() - timedelta(hours=1)
    print_ = await farm.print(printer, filename="spaghetti-tower.gcode", feedback=3, started_at=start,
                              alerted_at=start + timedelta(minutes=18), paused_at=start + timedelta(minutes=18),
                              alert_acknowledged_at=start + timedelta(minutes=21),
                              cancelled_at=start + timedelta(minutes=22))
    write_feedback_pictures(settings, print_, 3)
    await add_detections(farm, printer, print_, start)
    return print_


async def test_history_lists_prints_under_the_seeds_filters(
        live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811 (the fixture)
    owner = await farm.member()
    printer = await farm.printer(owner, "Prusa MK4")
    start = utcnow() - timedelta(hours=5)
    await farm.print(printer, filename="benchy.gcode", started_at=start, finished_at=start + timedelta(hours=1),
                     alert_overwrite="NOT_FAILED")
    await farm.print(printer, filename="cube.gcode", started_at=start + timedelta(hours=2),
                     cancelled_at=start + timedelta(hours=2, minutes=5), alerted_at=start + timedelta(hours=2),
                     paused_at=start + timedelta(hours=2), feedback=2)
    await farm.print(printer, filename="vase.gcode", started_at=start + timedelta(hours=4), current=True)
    other = await farm.member(organization="Farm B")
    await farm.print(await farm.printer(other, "Elsewhere"), filename="not-yours.gcode")

    await sign_in(page, live_url, owner.user.email, then="/prints/")
    await expect(page.get_by_role("heading", name="Prints", exact=True)).to_be_visible()
    rows = page.locator("table.prints tbody tr")
    # Newest first; another organization's print is not listed.
    await expect(rows).to_have_count(3)
    await expect(rows.nth(0)).to_contain_text("vase.gcode")
    await expect(rows.nth(0)).to_contain_text("Printing…")
    await expect(rows.nth(1)).to_contain_text("Cancelled")
    await expect(rows.nth(1)).to_contain_text("Alerted, paused")
    await expect(rows.nth(1)).to_contain_text("2 frames to answer")
    await expect(rows.nth(2)).to_contain_text("Finished")
    await expect(rows.nth(2)).to_contain_text("Prusa MK4")

    filters = page.get_by_role("navigation", name="Show prints")
    for label, expected in (("Cancelled", ["cube.gcode"]), ("Finished", ["benchy.gcode"]),
                            ("Needs feedback", ["cube.gcode"]), ("Needs your verdict", ["vase.gcode", "cube.gcode"]),
                            ("All", ["vase.gcode", "cube.gcode", "benchy.gcode"])):
        await filters.get_by_role("link", name=label, exact=True).click()
        await expect(filters.get_by_role("link", name=label, exact=True)).to_have_attribute("aria-current", "page")
        await expect(page.locator("table.prints tbody th a")).to_have_text(expected)

    await page.get_by_role("link", name="cube.gcode").click()
    await expect(page).to_have_url(re.compile(r"/prints/\d+/$"))
    await expect(page.get_by_role("heading", level=1)).to_contain_text("cube.gcode")


async def test_history_pages_and_empty_filters(live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811
    owner = await farm.member()
    printer = await farm.printer(owner)
    start = utcnow() - timedelta(days=1)
    for n in range(3):
        await farm.print(printer, filename=f"part-{n}.gcode", started_at=start + timedelta(hours=n),
                         finished_at=start + timedelta(hours=n, minutes=30))

    await sign_in(page, live_url, owner.user.email, then="/prints/?limit=2")
    await expect(page.locator("table.prints tbody th a")).to_have_text(["part-2.gcode", "part-1.gcode"])
    await page.get_by_role("link", name="Older prints").click()
    await expect(page.locator("table.prints tbody th a")).to_have_text(["part-0.gcode"])
    await expect(page.get_by_text("Prints 3–3")).to_be_visible()
    await page.get_by_role("link", name="Newer prints").click()
    await expect(page.locator("table.prints tbody th a")).to_have_text(["part-2.gcode", "part-1.gcode"])

    await page.get_by_role("link", name="Cancelled", exact=True).click()
    await expect(page.get_by_text("No cancelled prints.")).to_be_visible()


async def test_print_page_shows_timeline_graph_and_takes_feedback(
        live_url: str, farm: Farm, settings: Settings, page: Page) -> None:  # noqa: F811 (the fixture)
    owner = await farm.member(Role.OPERATOR)
    print_ = await failing_print(farm, settings, owner)

    await sign_in(page, live_url, owner.user.email, then=f"/prints/{print_.id}/")
    await expect(page.get_by_role("heading", level=1)).to_contain_text("spaghetti-tower.gcode")
    await expect(page.locator("dl.facts")).to_contain_text("Voron 2.4")
    await expect(page.locator("dl.facts")).to_contain_text("22 min")
    await expect(page.locator(".timeline .event")).to_have_text([
        "Started", "Possible failure detected", "Failure detected", "Alert answered", "Cancelled"])
    await expect(page.locator(".timeline li").nth(2)).to_contain_text("the print was paused")

    graph = page.get_by_role("img", name="Failure likelihood over the print")
    await expect(graph.locator("polyline")).to_have_count(1)
    await expect(graph.locator("rect")).to_have_count(3)  # the green, yellow and red zones
    await expect(page.locator("#likelihood-summary")).to_contain_text("highest failure likelihood was 100 %")
    await expect(page.locator("#temperature-chart polyline")).to_have_count(2)
    await expect(page.locator("#temperature-legend")).to_contain_text("Nozzle (last 215 °C)")

    pictures = page.get_by_role("img", name=re.compile(r"^Feedback frame \d of 3$"))
    await expect(pictures).to_have_count(3)
    for n in range(3):
        await expect(pictures.nth(n)).to_have_js_property("complete", True)
        assert await pictures.nth(n).evaluate("img => img.naturalWidth") == 64

    second = page.get_by_role("group", name="Your answer for frame 2")
    looks_bad = second.get_by_role("button", name="Looks bad")
    await expect(looks_bad).to_have_attribute("aria-pressed", "false")
    await looks_bad.click()
    await expect(looks_bad).to_have_attribute("aria-pressed", "true")
    await expect(second.get_by_role("button", name="Looks OK")).to_have_attribute("aria-pressed", "false")
    await expect(page.locator(".frame").nth(1).locator("figcaption")).to_contain_text("Looks bad")
    await expect(page.locator("#feedback-pending")).to_have_text("2 of 3 still to answer.")

    answers = await feedbacks_of(farm, print_.id)
    assert [f.answer for f in answers] == ["UNANSWERED", "LOOKS_BAD", "UNANSWERED"]
    assert answers[1].answered_at is not None and answers[0].answered_at is None

    # Changing one's mind: the other answer replaces it.
    await second.get_by_role("button", name="Looks OK").click()
    await expect(second.get_by_role("button", name="Looks OK")).to_have_attribute("aria-pressed", "true")
    await expect(looks_bad).to_have_attribute("aria-pressed", "false")
    assert [f.answer for f in await feedbacks_of(farm, print_.id)][1] == "LOOKS_OK"

    verdict = page.get_by_role("group", name="Did this print fail?")
    await verdict.get_by_role("button", name="Failed", exact=True).click()
    await expect(verdict.get_by_role("button", name="Failed", exact=True)).to_have_attribute("aria-pressed", "true")
    await expect(page.locator("#verdict-text")).to_have_text("Failed")

    async def overwrite(session: Any) -> str | None:
        return (await session.get(Print, print_.id)).alert_overwrite

    assert await farm.run(overwrite) == "FAILED"


async def test_a_viewer_sees_the_print_but_is_told_it_cannot_answer(
        live_url: str, farm: Farm, settings: Settings, page: Page) -> None:  # noqa: F811 (the fixture)
    owner = await farm.member()
    print_ = await failing_print(farm, settings, owner)
    viewer = await farm.member(Role.VIEWER)  # the same organization, "Farm A"

    await sign_in(page, live_url, viewer.user.email, then=f"/prints/{print_.id}/")
    looks_bad = page.get_by_role("group", name="Your answer for frame 1").get_by_role("button", name="Looks bad")
    await looks_bad.click()
    await expect(page.get_by_role("alert")).to_contain_text("You do not have permission")
    await expect(looks_bad).to_have_attribute("aria-pressed", "false")
    assert [f.answer for f in await feedbacks_of(farm, print_.id)] == ["UNANSWERED"] * 3


async def signed_in(client: httpx.AsyncClient, member: Member) -> httpx.AsyncClient:
    answer = await client.post("/accounts/login/", data={"email": member.user.email, "password": PASSWORD})
    assert answer.status_code == 303
    return client


async def test_pages_need_a_session_and_hide_other_organizations_prints(
        client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    mine = await farm.print(await farm.printer(owner), filename="mine.gcode")
    stranger = await farm.member(organization="Farm B")
    theirs = await farm.print(await farm.printer(stranger), filename="secret-part.gcode")

    for path in ("/prints/", f"/prints/{mine.id}/"):
        answer = await client.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/accounts/login/?next={path}"

    await signed_in(client, owner)
    assert "mine.gcode" in (await client.get(f"/prints/{mine.id}/")).text
    for path in (f"/prints/{theirs.id}/", "/prints/999999/", "/prints/not-a-number/", "/prints/99999999999/",
                 "/prints/²/", f"/prints/{'9' * 5000}/"):
        answer = await client.get(path)
        assert answer.status_code == 404, path
        assert "Print not found" in answer.text and "secret-part" not in answer.text

    history = (await client.get("/prints/")).text
    assert "mine.gcode" in history and "secret-part" not in history


async def test_unknown_filters_and_pages_are_explained(client: httpx.AsyncClient, farm: Farm) -> None:
    await signed_in(client, await farm.member())
    answer = await client.get("/prints/", params={"filter": "<b>broken</b>"})
    assert answer.status_code == 400
    assert "There is no filter called “&lt;b&gt;broken&lt;/b&gt;”" in answer.text
    for query in ({"start": "-1"}, {"start": "²"}, {"start": "9" * 5000}, {"limit": "0"}, {"limit": "many"}):
        answer = await client.get("/prints/", params=query)
        assert answer.status_code == 400 and 'class="error"' in answer.text, query
    empty = await client.get("/prints/", params={"filter": "need_print_shot_feedback"})
    assert empty.status_code == 200 and "No print is waiting for feedback" in empty.text



def test_a_long_print_is_thinned_for_the_graph_without_losing_its_peak() -> None:
    start = utcnow() - timedelta(days=1)
    print_ = Print(started_at=start)
    frames = [PredictionFrame(frame_number=n, taken_at=start + timedelta(seconds=10 * n),
                              normalized_p=0.9 if n == 4321 else 0.1, temperatures=None) for n in range(8640)]
    points = prints_page.chart_data(print_, frames)["likelihood"]
    assert len(points) <= prints_page.MAX_CHART_POINTS
    assert [43210.0, 0.9] in points
