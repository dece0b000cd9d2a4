"""The failure detector behind the PrintWatch API, kept off the event loop.

One `Detector` serves every PrintWatch client: the live watching pipeline's when the server runs
one (``borrow``), else one loaded on first use, in a worker thread. A picture is decoded (base64,
then the image) and scored in a worker thread, at most ``max_concurrent`` at a time, so that a burst
of clients queues instead of crowding the CPU that the detector already spreads over every core.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable

from layerfleet.detection.imaging import BadImage, open_image
from layerfleet.detection.runtime import Detector, FrameResult
from layerfleet.errors import Unavailable

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_CONCURRENT = 2
# The protocol sends JPEG; PNG costs nothing to accept. Other formats are refused before any
# decoder sees them, so only these two well-worn decoders ever read untrusted bytes.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
_CHECK_SIZE = 64


class InferenceFailed(Unavailable):
    """The detector could not score a readable picture (no model, a runtime error)."""


def decode_image_array(value: object) -> bytes:
    """The picture bytes of an ``image_array`` (base64, optionally as a data: URL)."""
    if not isinstance(value, str):
        raise BadImage("image_array must be a base64 string of the picture")
    text = value.strip()
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadImage("image_array is a data URL without base64 data")
    if not text:
        raise BadImage("image_array is empty")
    if len(text) > (MAX_IMAGE_BYTES + 2) // 3 * 4:
        raise BadImage(f"the picture is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage("image_array is not valid base64") from None
    if not data.startswith(_IMAGE_MAGIC):
        raise BadImage("the picture is not a JPEG (nor a PNG)")
    return data


def check_image(data: bytes) -> None:
    """Raise `BadImage` unless ``data`` decodes within the detector's limits (cheaply: JPEGs are
    decoded at a fraction of their size)."""
    open_image(data, _CHECK_SIZE)


def decode_and_check(value: object) -> bytes:
    data = decode_image_array(value)
    check_image(data)
    return data


def _decode_and_score(detector: Detector, image_array: object) -> FrameResult:
    [result] = detector.detect([decode_image_array(image_array)])
    if isinstance(result, BadImage):
        raise result
    return result


class PrintWatchInference:
    def __init__(
        self,
        borrow: Callable[[], Detector | None] | None = None,
        *,
        load: Callable[[], Detector] = Detector,
        max_concurrent: int = MAX_CONCURRENT,
    ) -> None:
        self._borrow = borrow
        self._load = load
        self._own: Detector | None = None
        self._loading = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_concurrent)

    async def detector(self) -> Detector:
        borrowed = self._borrow() if self._borrow is not None else None
        if borrowed is not None:
            return borrowed
        async with self._loading:
            if self._own is None:
                try:
                    self._own = await asyncio.to_thread(self._load)
                except Exception as exc:
                    log.exception("the PrintWatch detector could not be loaded")
                    raise InferenceFailed(f"the detector could not be loaded: {exc}") from exc
        return self._own

    async def score(self, image_array: object) -> FrameResult:
        """Score one picture; raises `BadImage` (the picture) or `InferenceFailed` (the detector)."""
        detector = await self.detector()
        async with self._slots:
            try:
                return await asyncio.to_thread(_decode_and_score, detector, image_array)
            except BadImage:
                raise
            except Exception as exc:
                log.exception("the PrintWatch detector failed on a picture")
                raise InferenceFailed(f"the detector failed: {type(exc).__name__}") from exc
