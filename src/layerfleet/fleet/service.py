"""Printers of an organization: lookup, creation, changes, deletion.

Every lookup is scoped to an organization, so an object of another organization is
indistinguishable from one that does not exist.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.interfaces import LoaderOption

from layerfleet.accounts.models import User
from layerfleet.fleet.models import Printer, default_printer_settings
from layerfleet.fleet.rules import PrinterChanges
from layerfleet.prints.models import Print

# A printer read on the picture path (agents' calls, the detector's worker) is read in one
# SELECT: its owner (joined by the model), its current print joined too, and not that print's
# feedback shots, which nothing there reads (by default they cost two more SELECTs). Touching
# them on such a printer raises rather than quietly querying.
HOT_PATH_LOAD: tuple[LoaderOption, ...] = (joinedload(Printer.current_print).raiseload(Print.feedbacks),)


def new_printer_token() -> str:
    return secrets.token_hex(20)


async def list_printers(
    session: AsyncSession, organization_id: int, *, with_archived: bool = False, ids: Iterable[int] | None = None,
) -> list[Printer]:
    query = select(Printer).where(Printer.organization_id == organization_id).order_by(Printer.id)
    if not with_archived:
        query = query.where(Printer.archived_at.is_(None))
    if ids is not None:
        query = query.where(Printer.id.in_(list(ids)))
    return list((await session.execute(query)).scalars())


async def get_printer(session: AsyncSession, organization_id: int, printer_id: int) -> Printer | None:
    query = select(Printer).where(Printer.id == printer_id, Printer.organization_id == organization_id)
    return (await session.execute(query)).scalar_one_or_none()


async def create_printer(session: AsyncSession, owner: User, name: str) -> Printer:
    printer = Printer(
        organization_id=owner.organization_id,
        user_id=owner.id,
        name=name,
        auth_token=new_printer_token(),
        settings=default_printer_settings(),
    )
    session.add(printer)
    await session.flush()
    await session.refresh(printer, ["owner", "current_print"])
    return printer


def rotate_agent_token(printer: Printer) -> str:
    """Give the printer a new agent token; the agent holding the old one must be told
    (``commands.bus.TokenRevoked``) once this is committed."""
    printer.auth_token = new_printer_token()
    return printer.auth_token


def apply_changes(printer: Printer, changes: PrinterChanges) -> None:
    for field, value in changes.given().items():
        setattr(printer, field, value)


# What the farm knows of a machine that its agent cannot tell (the Eiger devices' fields).
MACHINE_FIELDS = frozenset({"device_type", "device_series", "loaded_primary_material",
                            "loaded_secondary_material", "ccs_primary_remaining", "ccs_secondary_remaining"})
UNKNOWN_MACHINE = "Unknown"


def apply_machine_facts(printer: Printer, given: Mapping[str, Any]) -> None:
    """Set what the farm knows of a machine: a type or series cleared is Unknown again, a
    material cleared or blank means none is loaded."""
    for name, value in given.items():
        if name not in MACHINE_FIELDS:
            raise ValueError(f"{name} is not a machine fact")
        if name in ("device_type", "device_series") and value is None:
            value = UNKNOWN_MACHINE
        elif name.startswith("loaded_") and isinstance(value, str):
            value = value.strip() or None
        setattr(printer, name, value)


async def delete_printer(session: AsyncSession, printer: Printer) -> None:
    # The printer's prints go with it; its reference to the current print goes first so
    # the two rows can be removed in either order on every backend.
    printer.current_print_id = None
    await session.flush()
    await session.delete(printer)


async def printer_names(session: AsyncSession, organization_id: int, printer_ids: Iterable[int]) -> dict[int, str]:
    """The names of these printers of the organization (archived ones too: history names them)."""
    wanted = list(printer_ids)
    if not wanted:
        return {}
    rows = await session.execute(select(Printer.id, Printer.name).where(
        Printer.organization_id == organization_id, Printer.id.in_(wanted)))
    return {printer_id: name for printer_id, name in rows}
