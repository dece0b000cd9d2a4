"""List parameters of the Eiger dialect: ``page[size]``/``page[number]``, ``filter[field][op]``
and ``sort[by]``/``sort[order]``. Each list declares what it accepts; any other parameter, and
any value that does not parse, answers 400 (a typo must not silently list everything). What
parses becomes the domain's ``ListCriteria``; the lists themselves are the domain's."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import QueryParams

from layerfleet.api.eiger_v3.errors import bad_request
from layerfleet.scheduling.queries import Criterion, ListCriteria

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
INT32_MAX = 2**31 - 1
COMPARISONS = ("eq", "ne", "lt", "le", "gt", "ge")
DATES = tuple(op for op in COMPARISONS if op not in ("eq", "ne"))


class Kind(enum.Enum):
    DATETIME = "date-time"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    TEXT = "string"
    UUID = "uuid"
    CHOICE = "one of the listed values"


@dataclass(frozen=True)
class Filter:
    """A filter parameter: the type of its values, the operators allowed, and the domain's name
    for the field when it is not the parameter's (``field``)."""

    kind: Kind
    ops: tuple[str, ...]
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    max_length: int | None = None
    nullable: bool = False
    field: str | None = None


@dataclass(frozen=True)
class ListSpec:
    filters: Mapping[str, Filter]
    sorts: tuple[str, ...]  # the domain's sort fields, by the same names
    default_sort: str
    default_order: str  # "asc" or "desc"
    paged: bool = True


def _single(params: QueryParams, name: str) -> str:
    values = params.getlist(name)
    if len(values) > 1:
        raise bad_request(f"{name} is given {len(values)} times; give it once")
    return values[0]


def _integer(name: str, raw: str, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise bad_request(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise bad_request(f"{name} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise bad_request(f"{name} must be at most {maximum}")
    return value


def parse_datetime(name: str, raw: str) -> datetime:
    text = raw.strip()
    if re.search(r"\d \d\d:\d\d$", text):
        # "+01:00" sent unencoded in a query string arrives as " 01:00".
        text = text[:-6] + "+" + text[-5:]
    try:
        value = datetime.fromisoformat(text)
        # Near year 1 or 9999 the conversion to UTC leaves the calendar.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except ValueError:
        raise bad_request(f"{name} must be an ISO 8601 date-time such as 2026-01-31T12:00:00Z, not {raw!r}") from None
    except OverflowError:
        raise bad_request(f"{name} is out of the range of dates this server handles: {raw!r}") from None


def _boolean(name: str, raw: str, nullable: bool) -> bool | None:
    lowered = raw.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    if nullable and lowered in ("null", ""):
        return None
    raise bad_request(f"{name} must be true or false, not {raw!r}")


def parse_uuid(name: str, raw: str) -> str:
    try:
        return str(uuid.UUID(raw.strip()))
    except ValueError:
        raise bad_request(f"{name} must be a UUID, not {raw!r}") from None


def _value(name: str, spec: Filter, raw: str) -> Any:
    match spec.kind:
        case Kind.DATETIME:
            return parse_datetime(name, raw)
        case Kind.INTEGER:
            # Counts are 32-bit columns: beyond that, comparing with the bound means the same.
            return max(-INT32_MAX, min(INT32_MAX, _integer(name, raw, spec.minimum)))
        case Kind.BOOLEAN:
            return _boolean(name, raw, spec.nullable)
        case Kind.UUID:
            return parse_uuid(name, raw)
        case Kind.CHOICE:
            if raw not in spec.choices:
                raise bad_request(f"{name} must be one of {', '.join(spec.choices)}; not {raw!r}")
            return raw
        case Kind.TEXT:
            if spec.max_length is not None and len(raw) > spec.max_length:
                raise bad_request(f"{name} must have at most {spec.max_length} characters")
            return raw
    raise AssertionError(spec.kind)


def _bracketed(name: str) -> list[str] | None:
    """``filter[a][b]`` → ``["filter", "a", "b"]``; None when the name has no brackets."""
    head, bracket, rest = name.partition("[")
    if not bracket:
        return None
    parts = [head]
    rest = "[" + rest
    while rest:
        if not rest.startswith("[") or "]" not in rest:
            return [head, rest]
        inner, _, rest = rest[1:].partition("]")
        parts.append(inner)
    return parts


def parse_list_query(params: QueryParams, spec: ListSpec) -> ListCriteria:
    criteria = ListCriteria(page_size=DEFAULT_PAGE_SIZE)
    sort_by, order = spec.default_sort, spec.default_order
    for name in dict.fromkeys(params.keys()):
        parts = _bracketed(name) or [name]
        raw = _single(params, name)
        if parts[0] == "page" and len(parts) == 2 and parts[1] in ("size", "number") and spec.paged:
            if parts[1] == "size":
                criteria.page_size = _integer(name, raw, 1, MAX_PAGE_SIZE)
            else:
                criteria.page_number = _integer(name, raw, 1)
        elif parts[0] == "sort" and len(parts) == 2 and parts[1] == "by" and spec.sorts:
            if raw not in spec.sorts:
                raise bad_request(f"sort[by] must be one of {', '.join(spec.sorts)}; not {raw!r}")
            sort_by = raw
        elif parts[0] == "sort" and len(parts) == 2 and parts[1] == "order" and spec.sorts:
            if raw not in ("asc", "desc"):
                raise bad_request(f"sort[order] must be asc or desc; not {raw!r}")
            order = raw
        elif parts[0] == "filter" and len(parts) == 3 and parts[1] in spec.filters \
                and parts[2] in spec.filters[parts[1]].ops:
            filter_ = spec.filters[parts[1]]
            criteria.where.append(Criterion(filter_.field or parts[1], parts[2], _value(name, filter_, raw)))
        else:
            raise bad_request(f"{name} is not a parameter of this list{_known(spec)}")
    if spec.sorts:
        criteria.sort, criteria.descending = sort_by, order == "desc"
    return criteria


def _known(spec: ListSpec) -> str:
    names = [f"filter[{f}][{op}]" for f, filt in spec.filters.items() for op in filt.ops]
    if spec.sorts:
        names += ["sort[by]", "sort[order]"]
    if spec.paged:
        names += ["page[size]", "page[number]"]
    return f"; it takes {', '.join(names)}" if names else ""
