"""The PrintWatch rules: which status code each call earns, and what a scored picture tells the
client. The table of codes and their conditions is in `layerfleet.api.printwatch.protocol`.

An inference call is checked in this order, the first failing check giving the answer:
the key (217), the payload (215), the device — a printer another key holds, or a new printer
beyond the key's plan (212); a new printer otherwise is registered (214) —, the device within the
plan (212), the call interval (212), the printer printing (216), its print time known (218) and
at least 300 s (213), the picture (210), the detector (211).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.detection.imaging import BadImage
from layerfleet.media import organization_prefix, store_media
from layerfleet.notifications import outbox
from layerfleet.notifications.models import NotificationEvent
from layerfleet.printwatch import api_keys, payloads, scoring
from layerfleet.printwatch.codes import Refusal, StatusCode
from layerfleet.printwatch.inference import InferenceFailed, PrintWatchInference, decode_and_check
from layerfleet.printwatch.models import PrintWatchDevice, PrintWatchFeedback, PrintWatchKey, PrintWatchNotification
from layerfleet.printwatch.payloads import Payload

# Clients send a picture about every 10 s and back off after a bad answer; 5 s leaves room for
# their timing jitter while keeping one device from taking more than its share of the detector.
MIN_INFER_INTERVAL = timedelta(seconds=5)
# "Inferencing begins after 5 minutes into the print jobs" (seed 000): the first layers are
# too small to judge.
MIN_PRINT_SECONDS = 300.0
# A device silent this long has finished its print (or been paused for long): its next picture
# starts a new history, as a new ticket_id or an empty `scores` list from the client also does.
HISTORY_GAP = timedelta(minutes=30)


@dataclass(frozen=True)
class Box:
    """A failure box in the picture's own pixels."""

    xc: float
    yc: float
    w: float
    h: float
    confidence: float


@dataclass(frozen=True)
class InferResult:
    score: float
    defect_detected: bool
    boxes: list[Box]  # those at or above the client's confidence
    width: int  # of the picture, which the boxes are in
    height: int
    levels: tuple[bool, bool]
    smoothed: scoring.Smoothed
    action: scoring.Action | None
    # The quality-defect output (None: the model has none); it never drives levels or actions.
    defect_score: float | None = None
    defect_boxes: list[Box] = field(default_factory=list)  # those at or above the client's confidence


async def authenticate(session: AsyncSession, payload: Payload, now: datetime) -> PrintWatchKey:
    plain = payloads.api_key(payload)
    key = await api_keys.key_for_api_key(session, plain, now) if plain is not None else None
    if key is None:
        raise Refusal(StatusCode.INVALID_KEY, "the API key is missing, unknown or revoked")
    return key


def _in_use() -> Refusal:
    return Refusal(StatusCode.SETTINGS_CHECK_FAILED, "this printer_id is in use with another API key")


async def claim_device(
    session: AsyncSession, key: PrintWatchKey, printer_id: str, now: datetime
) -> tuple[PrintWatchDevice, bool]:
    """The key's device for ``printer_id``, and whether this call registered it."""
    device = (
        await session.execute(select(PrintWatchDevice).where(PrintWatchDevice.printer_id == printer_id))
    ).scalar_one_or_none()
    if device is not None:
        if device.key_id != key.id:
            raise _in_use()
        earlier = await session.execute(
            select(func.count()).select_from(PrintWatchDevice)
            .where(PrintWatchDevice.key_id == key.id, PrintWatchDevice.id < device.id)
        )
        if earlier.scalar_one() >= key.device_limit:
            # The plan was lowered below the devices already registered: the first ones keep it.
            raise Refusal(StatusCode.SETTINGS_CHECK_FAILED,
                          f"this device is beyond the key's plan of {key.device_limit} device(s)")
        return device, False

    # Writing the key's row first locks it (PostgreSQL) or takes the write lock (SQLite), so two
    # new printers arriving together cannot both take the plan's last place.
    await session.execute(update(PrintWatchKey).where(PrintWatchKey.id == key.id).values(last_used_at=now))
    if await api_keys.device_count(session, key.id) >= key.device_limit:
        raise Refusal(StatusCode.SETTINGS_CHECK_FAILED,
                      f"the key's plan allows {key.device_limit} device(s) and all are in use; "
                      "release one or raise the key's device limit")
    device = PrintWatchDevice(key_id=key.id, printer_id=printer_id, first_seen_at=now, scores=[])
    session.add(device)
    try:
        await session.flush()
    except IntegrityError:
        # Another key registered the same printer_id a moment ago.
        await session.rollback()
        raise _in_use() from None
    return device, True


def _registered() -> Refusal:
    return Refusal(StatusCode.NEW_DEVICE, "this printer is now registered with the API key; send the request again")


async def _take_call_slot(session: AsyncSession, device: PrintWatchDevice, now: datetime) -> None:
    """At most one inference call per device per `MIN_INFER_INTERVAL`. The claim is a conditional
    UPDATE, so it holds across server processes; calls refused here do not move the window."""
    claimed = await session.execute(
        update(PrintWatchDevice)
        .where(PrintWatchDevice.id == device.id,
               or_(PrintWatchDevice.last_call_at.is_(None), PrintWatchDevice.last_call_at <= now - MIN_INFER_INTERVAL))
        .values(last_call_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        raise Refusal(StatusCode.SETTINGS_CHECK_FAILED,
                      f"calls too frequent: at most one picture per printer every "
                      f"{MIN_INFER_INTERVAL.total_seconds():g} s")
    # Committed before the picture is scored: no transaction stays open while the detector runs.
    await session.commit()


async def infer(session: AsyncSession, detector: PrintWatchInference, payload: Payload, now: datetime) -> InferResult:
    key = await authenticate(session, payload, now)
    request = payloads.read_infer(payload)
    device, created = await claim_device(session, key, request.printer_id, now)
    if request.version is not None:
        device.client_version = request.version
    if created:
        await session.commit()
        raise _registered()
    await _take_call_slot(session, device, now)

    if request.state != payloads.PRINTING:
        raise Refusal(StatusCode.NO_INFERENCE_CRITERIA,
                      f"the printer is not printing (state {request.state}); pictures are scored only while printing")
    if request.print_time is None:
        raise Refusal(StatusCode.PRINT_TIME_UNAVAILABLE, "printTime (seconds into the print) is not known yet")
    if request.print_time < MIN_PRINT_SECONDS:
        raise Refusal(StatusCode.PRINT_TIME_TOO_SOON,
                      f"scoring begins {MIN_PRINT_SECONDS:g} s into a print; this one is at {request.print_time:g} s")
    try:
        frame = await detector.score(request.image)
    except BadImage as exc:
        raise Refusal(StatusCode.BAD_IMAGE, str(exc)) from None
    except InferenceFailed as exc:
        raise Refusal(StatusCode.INFERENCE_FAILED, str(exc)) from None

    await session.refresh(device)  # a heartbeat may have changed its settings meanwhile
    starts_print = (
        request.new_history
        or (request.ticket_id is not None and request.ticket_id != device.ticket_id)
        or device.last_scored_at is None
        or now - device.last_scored_at > HISTORY_GAP
    )
    if starts_print:
        device.ticket_id = request.ticket_id
        device.action_sent_at = None
    history = scoring.remember([] if starts_print else device.scores, frame.score, request.buffer_length)
    smoothed = scoring.smooth(history, request.buffer_length)
    reached = scoring.levels(smoothed, request.thresholds)
    action = scoring.decide_action(
        reached=reached, share=scoring.defect_share(history, request.buffer_length, request.conf),
        buffer_percent=request.buffer_percent, already_acted=device.action_sent_at is not None,
        settings=device.settings,
    )
    device.scores = history
    device.last_score = history[-1]
    device.last_scored_at = now
    device.frames_scored += 1
    if action is not None:
        device.action_sent_at = now
    await session.commit()

    return InferResult(
        score=frame.score,
        defect_detected=frame.score >= request.conf,
        boxes=[Box(*box) for box in frame.boxes if box[4] >= request.conf],
        width=frame.width,
        height=frame.height,
        levels=reached,
        smoothed=smoothed,
        action=action,
        defect_score=frame.defect_score,
        defect_boxes=[Box(*box) for box in frame.defect_boxes if box[4] >= request.conf],
    )


async def heartbeat(session: AsyncSession, payload: Payload, now: datetime) -> None:
    """Record that the client is alive, with its settings when it sends them. A new printer is
    registered (214), and its settings are kept even then: clients send them only once."""
    key = await authenticate(session, payload, now)
    request = payloads.read_heartbeat(payload)
    device, created = await claim_device(session, key, request.printer_id, now)
    device.last_heartbeat_at = now
    if request.version is not None:
        device.client_version = request.version
    if request.settings is not None:
        device.settings = request.settings
    await session.commit()
    if created:
        raise _registered()


def _notification_email(request: payloads.NotifyRequest, device: PrintWatchDevice, key: PrintWatchKey) -> str:
    """The request's address, else the one the client's settings gave, else the key holder's."""
    if request.email is not None:
        return request.email
    configured = (device.settings or {}).get("email_address")
    if isinstance(configured, str) and "@" in configured:
        return configured
    return key.user.email


async def notify(session: AsyncSession, payload: Payload, now: datetime) -> PrintWatchNotification:
    """Record a request for a notification; the organization's targets that want PrintWatchNotify
    get it (layerfleet.notifications)."""
    key = await authenticate(session, payload, now)
    request = payloads.read_notify(payload)
    device, created = await claim_device(session, key, request.printer_id, now)
    if created:
        await session.commit()
        raise _registered()
    notification = PrintWatchNotification(
        key_id=key.id, printer_id=device.printer_id, level=request.level,
        email=_notification_email(request, device, key), created_at=now, details=request.details,
    )
    session.add(notification)
    await outbox.record(session, organization_id=key.organization_id, event=NotificationEvent.PRINTWATCH_NOTIFY,
                        payload={"printer_name": device.printer_id, "level": request.level,
                                 "email": notification.email, "text": f"PrintWatch {request.level} notification"})
    await session.commit()
    return notification


def feedback_image_path(organization_id: int, key_id: int, data: bytes) -> str:
    suffix = "png" if data.startswith(b"\x89PNG") else "jpg"
    return f"{organization_prefix(organization_id)}printwatch/keys/{key_id}/feedback/{uuid.uuid4().hex}.{suffix}"


async def feedback(session: AsyncSession, payload: Payload, now: datetime, *, data_dir: Path) -> PrintWatchFeedback:
    """Record a user's verdict on a detection, with the picture when the client allows it."""
    key = await authenticate(session, payload, now)
    request = payloads.read_feedback(payload)
    device, created = await claim_device(session, key, request.printer_id, now)
    if created:
        await session.commit()
        raise _registered()
    image_path: str | None = None
    if request.image is not None:
        try:
            data = await asyncio.to_thread(decode_and_check, request.image)
        except BadImage as exc:
            raise Refusal(StatusCode.BAD_IMAGE, str(exc)) from None
        if request.keep_image:
            image_path = feedback_image_path(key.organization_id, key.id, data)
            await store_media(data_dir, image_path, data)
    record = PrintWatchFeedback(
        key_id=key.id, printer_id=device.printer_id, classification=request.classification,
        image_path=image_path, created_at=now, details=request.details,
    )
    session.add(record)
    await session.commit()
    return record
