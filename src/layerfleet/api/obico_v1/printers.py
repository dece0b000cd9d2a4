"""Printer API (seed 003)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, StrictBool

from layerfleet.accounts.models import Role, User
from layerfleet.api.deps import AppSettings, Bus, CurrentUser, Db, base_url, ensure_role, printer_changed
from layerfleet.api.obico_v1.schemas import CommandResult, PrinterOut, printer_out
from layerfleet.commands.bus import TokenRevoked
from layerfleet.fleet import service as fleet
from layerfleet.fleet.actions import PrinterActions
from layerfleet.fleet.models import Printer
from layerfleet.fleet.rules import PrinterChanges
from layerfleet.prints.models import AlertOverwrite
from layerfleet.timelapses import service as timelapses

router = APIRouter(tags=["Obico v1: printers"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such printer in your organization"}}

PrinterId = Annotated[int, Path(ge=1, le=2**31 - 1)]


class MuteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    mute_alert: StrictBool = True


class AcknowledgeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    alert_overwrite: AlertOverwrite | None = None


def _is_admin(user: User) -> bool:
    # A printer's token is its agent's credential: with it anyone could stand in for the agent.
    return user.role_enum.allows(Role.ADMIN)


async def _printer_or_404(db: Db, user: User, printer_id: int) -> Printer:
    printer = await fleet.get_printer(db, user.organization_id, printer_id)
    if printer is None:
        raise HTTPException(404, detail="Not found.")
    return printer


@router.get("/printers/", response_model=list[PrinterOut])
async def list_printers(
    request: Request, db: Db, user: CurrentUser, with_archived: Annotated[bool, Query()] = False
) -> list[PrinterOut]:
    printers = await fleet.list_printers(db, user.organization_id, with_archived=with_archived)
    url = base_url(request)
    return [printer_out(p, url, with_token=_is_admin(user)) for p in printers]


@router.get("/printers/{printer_id}/", response_model=PrinterOut, responses=NOT_FOUND)
async def get_printer(request: Request, db: Db, user: CurrentUser, printer_id: PrinterId) -> PrinterOut:
    printer = await _printer_or_404(db, user, printer_id)
    return printer_out(printer, base_url(request), with_token=_is_admin(user))


@router.patch("/printers/{printer_id}/", response_model=PrinterOut, responses=NOT_FOUND)
async def update_printer(
    request: Request,
    db: Db,
    user: CurrentUser,
    printer_id: PrinterId,
    changes: Annotated[PrinterChanges | None, Body()] = None,
) -> PrinterOut:
    printer = await _printer_or_404(db, user, printer_id)
    ensure_role(user, Role.ADMIN)
    if changes is not None:
        fleet.apply_changes(printer, changes)
        await db.commit()
        printer_changed(request, printer.organization_id, printer.id)
    return printer_out(printer, base_url(request), with_token=True)


@router.delete("/printers/{printer_id}/", response_class=Response, responses={200: {"content": {}}, **NOT_FOUND})
async def delete_printer(request: Request, db: Db, user: CurrentUser, settings: AppSettings,
                         printer_id: PrinterId) -> Response:
    printer = await _printer_or_404(db, user, printer_id)
    ensure_role(user, Role.ADMIN)
    organization_id = printer.organization_id
    print_ids = await timelapses.prints_of_printer(db, printer_id)
    await fleet.delete_printer(db, printer)
    await db.commit()
    # After the commit: a failed delete must not have lost the pictures and videos.
    await timelapses.remove_printer_media(settings.data_dir, organization_id, printer_id, print_ids)
    printer_changed(request, organization_id, printer_id)
    return Response(status_code=200)


@dataclass
class Control:
    """A printer the caller may control, with the actions to control it by."""

    printer: Printer
    actions: PrinterActions
    user: User


async def _control(db: Db, bus: Bus, user: CurrentUser, printer_id: PrinterId) -> Control:
    printer = await _printer_or_404(db, user, printer_id)
    ensure_role(user, Role.OPERATOR)
    return Control(printer, PrinterActions(db, bus), user)


Controlled = Annotated[Control, Depends(_control)]


async def _result(request: Request, db: Db, control: Control, succeeded: bool) -> CommandResult:
    # An action that did not succeed has changed nothing (see fleet.actions).
    if succeeded:
        await db.commit()
        printer_changed(request, control.printer.organization_id, control.printer.id)
    printer = printer_out(control.printer, base_url(request), with_token=_is_admin(control.user))
    return CommandResult(succeeded=succeeded, printer=printer)


Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def _action(name: str, summary: str) -> Callable[[Endpoint], Endpoint]:
    path = f"/printers/{{printer_id}}/{name}"

    def register(endpoint: Endpoint) -> Endpoint:
        router.post(path, response_model=CommandResult, responses=NOT_FOUND, summary=summary)(endpoint)
        # The seed writes these without a trailing slash; Obico's server routes them with one.
        router.post(path + "/", response_model=CommandResult, include_in_schema=False)(endpoint)
        return endpoint

    return register


@_action("cancel_print", "Cancel the current print")
async def cancel_print(request: Request, db: Db, control: Controlled) -> CommandResult:
    return await _result(request, db, control, await control.actions.cancel(control.printer))


@_action("pause_print", "Pause the current print")
async def pause_print(request: Request, db: Db, control: Controlled) -> CommandResult:
    return await _result(request, db, control, await control.actions.pause(control.printer))


@_action("resume_print", "Resume the current print")
async def resume_print(request: Request, db: Db, control: Controlled) -> CommandResult:
    return await _result(request, db, control, await control.actions.resume(control.printer))


@_action("mute_current_print", "Stop failure detection for the rest of the current print")
async def mute_current_print(
    request: Request, db: Db, control: Controlled, body: Annotated[MuteRequest | None, Body()] = None
) -> CommandResult:
    muted = body.mute_alert if body is not None else True
    return await _result(request, db, control, await control.actions.mute_current_print(control.printer, muted=muted))


@_action("acknowledge_alert", "Acknowledge the failure alert of the current print")
async def acknowledge_alert(
    request: Request, db: Db, control: Controlled, body: Annotated[AcknowledgeRequest | None, Body()] = None
) -> CommandResult:
    overwrite = body.alert_overwrite if body is not None else None
    return await _result(request, db, control, await control.actions.acknowledge_alert(control.printer, overwrite))


@router.post("/printers/{printer_id}/rotate_token/", response_model=CommandResult, responses=NOT_FOUND,
             summary="Layerfleet extension: give the printer a new agent token (admins)")
async def rotate_token(request: Request, db: Db, bus: Bus, user: CurrentUser, printer_id: PrinterId) -> CommandResult:
    """The agent holding the old token is disconnected (4401) and must be given the new one."""
    printer = await _printer_or_404(db, user, printer_id)
    ensure_role(user, Role.ADMIN)
    fleet.rotate_agent_token(printer)
    await db.commit()
    await bus.send(printer.id, TokenRevoked())
    printer_changed(request, printer.organization_id, printer.id)
    return CommandResult(succeeded=True, printer=printer_out(printer, base_url(request), with_token=True))
