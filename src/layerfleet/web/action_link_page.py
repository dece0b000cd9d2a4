"""One-tap links of alert messages (``/a/{token}``). Opening a link (GET) only shows what it
would do, with one button: mail scanners that fetch links must never resume or cancel a
print. Pressing the button (POST) acts through :class:`PrinterActions`, like the v1 API's
``resume_print`` / ``cancel_print`` / ``mute_current_print``, and uses the link up."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response

from layerfleet.api.deps import Bus, Db, printer_changed
from layerfleet.errors import Conflict, DomainError, NotFound
from layerfleet.fleet import service as fleet
from layerfleet.fleet.actions import PrinterActions
from layerfleet.fleet.models import Printer
from layerfleet.notifications import action_links
from layerfleet.notifications.action_links import BUTTON_TEXT, LinkAction
from layerfleet.notifications.models import ActionLink
from layerfleet.web.pages import templates

router = APIRouter(include_in_schema=False)
Token = Annotated[str, Path(min_length=20, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")]

DONE_TEXT = {LinkAction.RESUME: "The print is resuming.", LinkAction.CANCEL: "The print is being cancelled.",
             LinkAction.MUTE: "Failure detection is muted for the rest of this print."}


def _page(request: Request, status_code: int = 200, **context: object) -> Response:
    # The link is the credential: these pages show no one's navigation.
    return templates.TemplateResponse(request, "action_link.html", {"user": None, **context},
                                      status_code=status_code, headers={"Cache-Control": "no-store",
                                                                        "Referrer-Policy": "no-referrer"})


async def _link_and_printer(db: Db, token: str) -> tuple[ActionLink, Printer]:
    link = await action_links.find(db, token)
    printer = await fleet.get_printer(db, link.organization_id, link.printer_id)
    if printer is None:
        raise NotFound("The printer of this link no longer exists.")
    if link.print_id is not None and printer.current_print_id != link.print_id:
        raise Conflict("The print this link was about has ended.")
    return link, printer


def _refusal(request: Request, exc: DomainError) -> Response:
    status = 404 if isinstance(exc, NotFound) else 410
    return _page(request, status, refused=str(exc))


@router.get("/a/{token}", response_class=HTMLResponse)
async def show_link(request: Request, db: Db, token: Token) -> Response:
    try:
        link, printer = await _link_and_printer(db, token)
    except DomainError as exc:
        return _refusal(request, exc)
    action = LinkAction(link.action)
    filename = printer.current_print.filename if printer.current_print is not None else ""
    return _page(request, printer=printer.name, filename=filename, button=BUTTON_TEXT[action], action=action.value)


@router.post("/a/{token}", response_class=HTMLResponse)
async def use_link(request: Request, db: Db, bus: Bus, token: Token) -> Response:
    try:
        link, printer = await _link_and_printer(db, token)
    except DomainError as exc:
        return _refusal(request, exc)
    action = LinkAction(link.action)
    actions = PrinterActions(db, bus)
    if action is LinkAction.RESUME:
        done = await actions.resume(printer)
    elif action is LinkAction.CANCEL:
        done = await actions.cancel(printer)
    else:
        done = await actions.mute_current_print(printer, muted=True)
    if not done:
        # Nothing changed (see fleet.actions); the link stays usable for another try.
        return _page(request, 409, printer=printer.name, button=BUTTON_TEXT[action], action=action.value,
                     failed="The printer did not take the command: its agent is offline or the print is "
                            "not in a state for it. Nothing was changed; try again, or open the dashboard.")
    try:
        await action_links.use(db, link)
    except DomainError as exc:
        await db.rollback()
        return _refusal(request, exc)
    await db.commit()
    printer_changed(request, printer.organization_id, printer.id)
    return _page(request, printer=printer.name, done=DONE_TEXT[action])
