"""Sending one message to one target: any Apprise URL (email, Discord, Telegram, Slack, ntfy,
Pushover, Matrix, MQTT, JSON webhooks…) or our own signed webhook. Everything here blocks
(Apprise, SMTP, HTTP): the delivery loop calls it in a thread with a timeout.

- Signed webhook: ``webhook+https://host/path`` (or ``webhook+http://``) is POSTed the JSON
  message with ``X-Layerfleet-Signature: sha256=<hex HMAC-SHA256 of the body with the target's
  secret>`` and ``Idempotency-Key``.
- MQTT (``mqtt://host:1883/<topic>``): ``{printer}`` in the topic becomes the printer's id and
  ``{printer_name}`` its name as a topic word, e.g. ``layerfleet/{printer}/event``; the payload
  is the message's JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import apprise
import httpx
from PIL import Image, ImageDraw, UnidentifiedImageError

WEBHOOK_PREFIXES = ("webhook+http://", "webhook+https://")
SIGNATURE_HEADER = "X-Layerfleet-Signature"
TOPIC_FIELDS = ("{printer}", "{printer_name}")
# Boxes at or below this confidence are not drawn (the detector's visualisation threshold).
DRAWN_CONFIDENCE = 0.2
MAX_PICTURE_BYTES = 16 * 1024 * 1024


class SendFailed(Exception):
    """The service refused or could not be reached; ``str()`` says why, in words."""


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    data: dict[str, Any]  # what webhooks and MQTT receive, as JSON
    idempotency_key: str
    printer_id: int | None = None
    printer_name: str = ""
    picture: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def is_webhook(url: str) -> bool:
    return url.lower().startswith(WEBHOOK_PREFIXES)


def is_mqtt(url: str) -> bool:
    return url.lower().startswith(("mqtt://", "mqtts://"))


def _for_apprise(url: str) -> str:
    # Apprise reads braces as nothing special but may refuse them in a topic; check with a word.
    for name in TOPIC_FIELDS:
        url = url.replace(name, "printer")
    return url


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a target (for a person), or None when it can."""
    if not url.strip():
        return "This field may not be blank."
    if is_webhook(url):
        target = url.split("+", 1)[1]
        parsed = httpx.URL(target)
        return None if parsed.host else "Enter a webhook URL like webhook+https://example.com/hook."
    if not apprise.Apprise().add(_for_apprise(url)):
        return "Not a notification URL Apprise understands (see https://github.com/caronc/apprise/wiki)."
    return None


def topic_word(text: str) -> str:
    """A name as one MQTT topic level: no wildcards or separators."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:64] or "printer"


def picture_with_boxes(jpeg: bytes, boxes: Sequence[Sequence[float]]) -> bytes:
    """The picture with the detector's boxes (``[xc, yc, w, h, confidence]`` in pixels) drawn."""
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    draw = ImageDraw.Draw(image)
    line = max(2, image.width // 320)
    for box in boxes:
        if len(box) < 5 or box[4] <= DRAWN_CONFIDENCE:
            continue
        xc, yc, w, h, confidence = (float(v) for v in box[:5])
        draw.rectangle((xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2), outline=(255, 40, 40), width=line)
        draw.text((xc - w / 2 + 3, yc - h / 2 + 2), f"{confidence:.2f}", fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def load_picture(path: str | None, boxes: Sequence[Sequence[float]]) -> bytes | None:
    """A stored frame, boxes drawn; None when it is gone or unreadable (the message goes without)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as stored:
            jpeg = stored.read(MAX_PICTURE_BYTES)
        return picture_with_boxes(jpeg, boxes) if boxes else jpeg
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(url: str, message: Message, *, webhook_secret: str | None, timeout: float) -> None:
    """Send ``message`` to the target at ``url``; raises :class:`SendFailed`."""
    if is_webhook(url):
        _send_webhook(url.split("+", 1)[1], message, webhook_secret or "", timeout)
    elif is_mqtt(url):
        topic_url = url.replace("{printer}", str(message.printer_id or 0)).replace(
            "{printer_name}", topic_word(message.printer_name))
        _send_apprise(topic_url, "", json.dumps(message.data, default=str), None)
    else:
        _send_apprise(url, message.title, message.body, message.picture)


@lru_cache(maxsize=1)
def _webhook_client() -> httpx.Client:
    # One client for every webhook: its connection pool and TLS context are made once
    # (httpx.Client is safe to share between the delivery threads).
    return httpx.Client(follow_redirects=False, limits=httpx.Limits(max_connections=64))


def _send_webhook(url: str, message: Message, secret: str, timeout: float) -> None:
    body = json.dumps(message.data, default=str, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, body),
               "Idempotency-Key": message.idempotency_key, "User-Agent": "Layerfleet"}
    try:
        answer = _webhook_client().post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise SendFailed(f"The webhook could not be reached: {exc or type(exc).__name__}") from exc
    if not answer.is_success:
        raise SendFailed(f"The webhook answered HTTP {answer.status_code}: {answer.text[:200]}")


def _send_apprise(url: str, title: str, body: str, picture: bytes | None) -> None:
    notifier = apprise.Apprise()
    if not notifier.add(url):
        raise SendFailed("Apprise does not understand this URL any more.")
    attachment_file: str | None = None
    try:
        attach = None
        if picture is not None:
            handle, attachment_file = tempfile.mkstemp(prefix="layerfleet-", suffix=".jpg")
            with os.fdopen(handle, "wb") as out:
                out.write(picture)
            attach = apprise.AppriseAttachment()
            attach.add(attachment_file)
        result = notifier.notify(title=title, body=body or title or " ", attach=attach)
    finally:
        if attachment_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(attachment_file)
    if not result:
        raise SendFailed(_apprise_error(result))


def _apprise_error(result: Any) -> str:
    words = []
    with contextlib.suppress(Exception):
        words = [entry.message for entry in result.logs() if entry.level in ("WARNING", "ERROR", "CRITICAL")]
    return "; ".join(dict.fromkeys(words))[:1000] or "The service did not accept the message."
