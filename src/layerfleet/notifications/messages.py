"""What a message says: a title and text for people, JSON for machines, from an event's payload.

Payload keys emitters fill (all optional): ``printer_name``, ``filename``, ``normalized_p``
(0–1), ``paused``, ``image_path`` (the frame under DATA_DIR/media) with ``boxes``
(``[xc, yc, w, h, confidence]``), ``text`` (a detail in words), and anything else the event
has (kept in the JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from layerfleet.database import iso_z
from layerfleet.notifications.action_links import BUTTON_TEXT, IssuedLink
from layerfleet.notifications.models import NotificationEvent, OutboxEvent

HEADLINES = {
    NotificationEvent.PRINT_STARTED: "print started",
    NotificationEvent.PRINT_DONE: "print done",
    NotificationEvent.PRINT_CANCELLED: "print cancelled",
    NotificationEvent.PRINT_PAUSED: "print paused",
    NotificationEvent.PRINT_RESUMED: "print resumed",
    NotificationEvent.FILAMENT_CHANGE: "filament change needed",
    NotificationEvent.HEATER_TARGET_REACHED: "heater reached its target",
    NotificationEvent.HEATER_COOLED_DOWN: "heater cooled down",
    NotificationEvent.FAILURE_WARNING: "the print may be failing",
    NotificationEvent.FAILURE_ALERT: "the print is failing",
    NotificationEvent.QUALITY_WARNING: "print-quality defect seen",
    NotificationEvent.PRINTER_OFFLINE: "printer offline while printing",
    NotificationEvent.SLICE_FINISHED: "slice finished",
    NotificationEvent.SLICE_FAILED: "slice failed",
    NotificationEvent.PRINT_JOB_COMPLETED: "print job completed",
    NotificationEvent.PRINT_JOB_FAILED: "print job failed",
    NotificationEvent.PRINTWATCH_NOTIFY: "PrintWatch notification",
    NotificationEvent.TEST: "test message",
}


def event_kind(event: OutboxEvent) -> NotificationEvent:
    try:
        return NotificationEvent(event.kind)
    except ValueError:
        return NotificationEvent.TEST


def title_of(event: OutboxEvent) -> str:
    kind = event_kind(event)
    payload = event.payload or {}
    subject = str(payload.get("printer_name") or payload.get("subject") or "Layerfleet")
    headline = HEADLINES[kind]
    if kind is NotificationEvent.FAILURE_ALERT:
        headline += ", paused" if payload.get("paused") else ", NOT paused"
    return f"{subject}: {headline}"


def lines_of(event: OutboxEvent) -> list[str]:
    payload = event.payload or {}
    lines = []
    if payload.get("printer_name"):
        lines.append(f"Printer: {payload['printer_name']}")
    if payload.get("filename"):
        lines.append(f"File: {payload['filename']}")
    if isinstance(payload.get("normalized_p"), int | float):
        lines.append(f"Likelihood of failure: {round(100 * float(payload['normalized_p']))}%")
    if event_kind(event) in (NotificationEvent.FAILURE_ALERT, NotificationEvent.FAILURE_WARNING):
        lines.append("The print was paused." if payload.get("paused") else "The print was not paused.")
    if event_kind(event) is NotificationEvent.QUALITY_WARNING:
        if isinstance(payload.get("defect_score"), int | float):
            lines.append(f"Likelihood of a quality defect: {round(100 * float(payload['defect_score']))}%")
        lines.append("The print goes on: check it (warping, stringing, extrusion or surface problems).")
    if payload.get("text"):
        lines.append(str(payload["text"]))
    return lines


def data_of(event: OutboxEvent, links: Sequence[IssuedLink] = ()) -> dict[str, Any]:
    payload = {k: v for k, v in (event.payload or {}).items() if k not in ("image_path",)}
    data: dict[str, Any] = {
        "event": event.kind, "idempotency_key": event.idempotency_key, "created_at": iso_z(event.created_at),
        "organization_id": event.organization_id, "printer_id": event.printer_id, "print_id": event.print_id,
        "title": title_of(event), **payload,
    }
    if links:
        data["actions"] = {link.action.value: link.url for link in links}
    return data


def body_of(event: OutboxEvent, links: Sequence[IssuedLink] = ()) -> str:
    lines = lines_of(event)
    if links:
        lines.append("")
        lines.extend(f"{BUTTON_TEXT[link.action]}: {link.url}" for link in links)
    return "\n".join(lines) or title_of(event)


def digest_title(count: int) -> str:
    return f"Layerfleet: {count} events"


def digest_body(events: Sequence[OutboxEvent]) -> str:
    rows = [f"{iso_z(e.created_at)}  {title_of(e)}" + (f" ({e.payload['filename']})"
                                                      if (e.payload or {}).get("filename") else "")
            for e in events]
    return f"{len(events)} events since the last message:\n" + "\n".join(rows)


def digest_data(key: str, events: Sequence[OutboxEvent]) -> dict[str, Any]:
    return {"event": "Digest", "idempotency_key": key, "count": len(events),
            "events": [data_of(e) for e in events], "title": digest_title(len(events))}
