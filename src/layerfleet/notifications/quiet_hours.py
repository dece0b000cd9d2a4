"""Quiet hours of a target: "HH:MM" to "HH:MM" in its time zone (over midnight when the end
comes first); non-critical events wait until they end."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def zone_problem(name: str) -> str | None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"Unknown time zone {name[:64]!r}; use a name like Europe/Berlin or UTC."
    return None


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def quiet_until(start: str | None, end: str | None, zone: str, now: datetime) -> datetime | None:
    """When the quiet hours that hold at ``now`` end; None when ``now`` is not in them."""
    if not start or not end or start == end:
        return None
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    begin, finish, clock = _clock(start), _clock(end), local.time().replace(second=0, microsecond=0)
    inside = begin <= clock < finish if begin < finish else (clock >= begin or clock < finish)
    if not inside:
        return None
    ending = local.replace(hour=finish.hour, minute=finish.minute, second=0, microsecond=0)
    if ending <= local:
        ending += timedelta(days=1)
    return ending
