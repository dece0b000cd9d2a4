"""The farm's lists as an API pages through them: an organization's builds, printers, print
jobs, printed parts and members, filtered, sorted and cut into pages from typed criteria.

Each list names the fields it can filter and sort on; the API dialect decides which of them
it offers and turns its query parameters into ``ListCriteria``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, and_, false, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import Organization, User
from layerfleet.fleet.models import Printer
from layerfleet.library.models import Build
from layerfleet.scheduling.models import PrintedPart, PrintJob

Row = TypeVar("Row")
# A field's condition from an operator ("eq", "ne", "lt", "le", "gt", "ge") and a typed value.
Condition = Callable[[str, Any], ColumnElement[bool]]

# Pages beyond this offset are empty without asking the database (OFFSET is a 64-bit integer).
MAX_OFFSET = 2**62


@dataclass(frozen=True)
class Criterion:
    """``field op value``; a value of None asks whether the field has no value ("eq") or has one."""

    field: str
    op: str
    value: Any


@dataclass
class ListCriteria:
    where: list[Criterion] = field(default_factory=list)
    sort: str | None = None  # a field of the list's sorts; None: in the order rows were made
    descending: bool = False
    page_size: int = 100
    page_number: int = 1


@dataclass
class Page(Generic[Row]):
    items: Sequence[Row]
    has_more_items: bool


def compare(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    if value is None:
        presence: ColumnElement[bool] = column.is_(None) if op == "eq" else column.is_not(None)
        return presence
    comparisons: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
        "eq": lambda c, v: c == v, "ne": lambda c, v: c != v, "lt": lambda c, v: c < v,
        "le": lambda c, v: c <= v, "gt": lambda c, v: c > v, "ge": lambda c, v: c >= v,
    }
    condition = comparisons[op](column, value)
    # "not equal" keeps rows without a value, as a person reading "state ≠ X" expects.
    return condition | column.is_(None) if op == "ne" else condition


def _compared(column: Any) -> Condition:
    return lambda op, value: compare(column, op, value)


@dataclass(frozen=True)
class _Fields:
    conditions: Mapping[str, Condition]
    sorts: Mapping[str, Any]


async def _page(session: AsyncSession, query: Select[Any], criteria: ListCriteria, fields: _Fields,
                tiebreak: Any, order_by: Sequence[Any] = ()) -> Page[Any]:
    if (criteria.page_number - 1) * criteria.page_size > MAX_OFFSET:
        return Page([], False)  # far beyond the last page of any list
    conditions = [fields.conditions[c.field](c.op, c.value) for c in criteria.where]
    if conditions:
        query = query.where(and_(*conditions))
    ordering = list(order_by)
    if criteria.sort is not None:
        column = fields.sorts[criteria.sort]
        # Rows without a value (a job not started yet) last either way, on every database.
        ordering = [(column.desc() if criteria.descending else column.asc()).nulls_last()]
    # One row more than the page, to tell whether more follow.
    query = (query.order_by(*ordering, tiebreak).offset((criteria.page_number - 1) * criteria.page_size)
             .limit(criteria.page_size + 1))
    rows = list((await session.execute(query)).unique().scalars())
    return Page(rows[: criteria.page_size], len(rows) > criteria.page_size)


# --- builds ---------------------------------------------------------------------------------------

def _build_fields(organization: Organization) -> _Fields:
    def approved(op: str, value: bool | None) -> ColumnElement[bool]:
        # With approvals off, every build counts as approved.
        effective: Any = Build.approved if organization.build_approvals_enabled else true()
        if value is None:
            return false() if op == "eq" else true()
        condition: ColumnElement[bool] = (effective == value) if op == "eq" else (effective != value)
        return condition

    def sliced(_op: str, value: bool | None) -> ColumnElement[bool]:
        return Build.gcode_path.is_not(None) if value else Build.gcode_path.is_(None)

    return _Fields(
        conditions={
            "title": _compared(Build.title), "created_at": _compared(Build.created_at),
            "updated_at": _compared(Build.updated_at), "part_count": _compared(Build.part_count),
            "sliced": sliced, "blacksmith_enabled": _compared(Build.blacksmith_enabled), "approved": approved,
        },
        sorts={"created_at": Build.created_at, "title": Build.title},
    )


async def builds(session: AsyncSession, organization: Organization, criteria: ListCriteria) -> Page[Build]:
    return await _page(session, select(Build).where(Build.organization_id == organization.id), criteria,
                       _build_fields(organization), Build.id)


async def approved_builds(session: AsyncSession, organization: Organization, criteria: ListCriteria) -> Page[Build]:
    """The builds approved for printing, newest first (only the page of ``criteria`` counts)."""
    return await _page(session, select(Build).where(
        Build.organization_id == organization.id, Build.approved.is_(True)),
        ListCriteria(page_size=criteria.page_size, page_number=criteria.page_number),
        _Fields({}, {}), Build.id, order_by=[Build.created_at.desc()])


# --- printers -------------------------------------------------------------------------------------

PRINTER_FIELDS = _Fields(
    conditions={"name": _compared(Printer.name), "created_at": _compared(Printer.created_at),
                "updated_at": _compared(Printer.updated_at)},
    sorts={"name": Printer.name, "created_at": Printer.created_at, "updated_at": Printer.updated_at},
)


async def printers(session: AsyncSession, organization_id: int, criteria: ListCriteria) -> Page[Printer]:
    return await _page(session, select(Printer).where(
        Printer.organization_id == organization_id, Printer.archived_at.is_(None)), criteria, PRINTER_FIELDS,
        Printer.id)


# --- print jobs and printed parts -----------------------------------------------------------------

def _by_uuid(model_uuid: Any, model_id: Any, column: Any) -> Condition:
    def condition(_op: str, value: str) -> ColumnElement[bool]:
        among: ColumnElement[bool] = column.in_(select(model_id).where(model_uuid == value))
        return among
    return condition


PRINT_JOB_FIELDS = _Fields(
    conditions={
        "state": _compared(PrintJob.state), "created_at": _compared(PrintJob.created_at),
        "started_at": _compared(PrintJob.started_at), "ended_at": _compared(PrintJob.ended_at),
        "updated_at": _compared(PrintJob.updated_at),
        "build": _by_uuid(Build.uuid, Build.id, PrintJob.build_id),
        "printer": _by_uuid(Printer.uuid, Printer.id, PrintJob.printer_id),
    },
    sorts={"created_at": PrintJob.created_at, "started_at": PrintJob.started_at,
           "updated_at": PrintJob.updated_at, "ended_at": PrintJob.ended_at},
)


async def print_jobs(session: AsyncSession, organization_id: int, criteria: ListCriteria) -> Page[PrintJob]:
    return await _page(session, select(PrintJob).where(PrintJob.organization_id == organization_id), criteria,
                       PRINT_JOB_FIELDS, PrintJob.id)


PRINTED_PART_FIELDS = _Fields(
    conditions={"state": _compared(PrintedPart.state), "notes": _compared(PrintedPart.notes)},
    sorts={"printed_at": PrintedPart.printed_at, "updated_at": PrintedPart.updated_at},
)


async def printed_parts(session: AsyncSession, organization_id: int, criteria: ListCriteria) -> Page[PrintedPart]:
    return await _page(session, select(PrintedPart).where(PrintedPart.organization_id == organization_id),
                       criteria, PRINTED_PART_FIELDS, PrintedPart.id)


# --- members --------------------------------------------------------------------------------------

MEMBER_FIELDS = _Fields(
    conditions={"name": _compared(User.name), "email": _compared(User.email),
                "created_at": _compared(User.created_at), "updated_at": _compared(User.updated_at)},
    sorts={"name": User.name, "email": User.email, "created_at": User.created_at},
)


async def members(session: AsyncSession, organization_id: int, criteria: ListCriteria) -> Page[User]:
    return await _page(session, select(User).where(User.organization_id == organization_id), criteria,
                       MEMBER_FIELDS, User.id)
