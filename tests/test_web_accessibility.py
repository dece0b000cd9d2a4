"""Every dashboard page, checked in Chromium for what assistive technology and keyboard users
need: a label for every field, a name for every button and link, alt text on every picture,
text contrast of at least 4.5:1 (WCAG AA), no horizontal scrolling on a phone; and a print
paused from the keyboard alone."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Browser, Page, expect

from agent_helpers import until
from browser import browser, page, sign_in  # noqa: F401  (fixtures)
from conftest import PRINTING, Farm
from layerfleet.printer_agent.connector import PrinterState
from layerfleet.printer_agent.runner import AgentRunner
from layerfleet.simulator.printer import SimulatedPrinter
from test_web_fleet import FAST, LONG_PRINTS

# Run in the page: the problems found, as sentences naming the element.
AUDIT = """() => {
  const problems = [];
  const visible = (el) => { const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== "hidden" && s.display !== "none"; };
  const describe = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
                           + (el.name ? "[name=" + el.name + "]" : "");
  const named = (el) => (el.getAttribute("aria-label") || el.getAttribute("aria-labelledby") || el.getAttribute("title")
                         || el.textContent.trim() || el.querySelector("img[alt]:not([alt=''])"));
  for (const field of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
    const labelled = field.labels?.length || field.getAttribute("aria-label") || field.getAttribute("aria-labelledby");
    if (!labelled) problems.push(`${describe(field)} has no label`);
  }
  for (const control of document.querySelectorAll("button, a[href]")) {
    if (visible(control) && !named(control)) problems.push(`${describe(control)} has no accessible name`);
  }
  for (const img of document.querySelectorAll("img")) {
    if (!img.hasAttribute("alt")) problems.push(`${describe(img)} has no alt attribute`);
  }
  const rgb = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const luminance = (c) => c.map(channel).reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (el) => {
    for (let node = el; node; node = node.parentElement) {
      const style = getComputedStyle(node);
      if (style.backgroundImage !== "none") return null;  // over a picture or gradient: not judged
      const c = rgb(style.backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] === 1)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  for (const el of document.querySelectorAll("body *")) {
    const ownText = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!ownText || !visible(el) || el.closest("svg, dialog:not([open]), .hidden, [disabled]")) continue;
    const bg = background(el);
    if (!bg) continue;
    const fg = rgb(getComputedStyle(el).color).slice(0, 3);
    const [hi, lo] = [luminance(fg), luminance(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const text = el.textContent.trim().slice(0, 30);
    if (ratio < 4.5) problems.push(`${describe(el)} "${text}" contrast ${ratio.toFixed(2)}:1`);
  }
  if (document.documentElement.scrollWidth > window.innerWidth + 1)
    problems.push(`the page is ${document.documentElement.scrollWidth}px wide in a ${window.innerWidth}px window`);
  return problems;
}"""


async def _audit(page: Page, path: str) -> list[str]:  # noqa: F811
    await page.goto(path)
    await page.wait_for_load_state("networkidle")
    problems: list[str] = await page.evaluate(AUDIT)
    return [f"{path}: {problem}" for problem in problems]


@pytest.mark.parametrize("width", [1280, 390])
async def test_every_page_is_labelled_named_and_readable(
        live_url: str, farm: Farm, browser: Browser, width: int) -> None:  # noqa: F811
    owner = await farm.member()
    printing = await farm.printer(owner, "Voron 2.4", status=PRINTING)
    await farm.printer(owner, "Ender 3")
    done = await farm.print(printing, feedback=2, filename="bracket.gcode")
    await farm.print(printing, current=True, filename="gear.gcode")
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()  # noqa: F811
    try:
        await sign_in(page, live_url, owner.user.email)
        problems: list[str] = []
        for path in ("/", f"/printers/{printing.id}/", "/prints/", f"/prints/{done.id}/", "/library/",
                     "/link/", "/keys/"):
            problems += await _audit(page, f"{live_url}{path}")
        await page.goto(f"{live_url}/accounts/logout/")
        assert problems == []
    finally:
        await context.close()


async def test_a_print_is_paused_from_the_keyboard_alone(live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811
    owner = await farm.member()
    printer = await farm.printer(owner, "Voron 2.4")
    simulated = SimulatedPrinter("Voron 2.4", LONG_PRINTS, seed=1)
    runner = AgentRunner(live_url, printer.auth_token, simulated, cadence=FAST)
    task = asyncio.create_task(runner.run())
    try:
        await sign_in(page, live_url, owner.user.email)
        pause = page.get_by_role("button", name="Pause")
        await expect(pause).to_be_visible(timeout=30_000)
        # From the top of the page, Tab to the card's Pause button.
        for _ in range(30):
            await page.keyboard.press("Tab")
            if await pause.evaluate("b => b === document.activeElement"):
                break
        else:
            raise AssertionError("Tab never reached the Pause button")
        await page.keyboard.press("Enter")
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_be_visible()
        # The safe choice has the focus; Tab moves to the action, Enter confirms.
        await expect(dialog.get_by_role("button", name="Go back")).to_be_focused()
        await page.keyboard.press("Tab")
        await expect(dialog.get_by_role("button", name="Pause print")).to_be_focused()
        await page.keyboard.press("Enter")
        await until(lambda: _true(simulated.state is PrinterState.PAUSED), 15)
        await expect(page.locator("#cards .badge")).to_have_text("Paused")
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)


async def _true(value: bool) -> bool:
    return value
