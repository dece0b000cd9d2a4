"""Turning untrusted picture bytes into the detector's input, cheaply and safely.

JPEGs are decoded in Pillow's draft mode, which lets libjpeg scale by 1/2, 1/4 or 1/8 while
decoding: a 1280×720 frame costs a fraction of a full decode. Every limit is checked before
pixels are decoded, so a hostile file cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from layerfleet.errors import Invalid

MAX_IMAGE_BYTES = 25 * 1024 * 1024
MAX_SIDE = 8192
MAX_PIXELS = 40_000_000
PAD_VALUE = 114


class BadImage(Invalid):
    """The bytes are not a picture the detector can read; the message says why."""


@dataclass(frozen=True)
class Letterboxed:
    pixels: np.ndarray  # (size, size, 3) uint8 RGB
    scale: float  # input pixels per original pixel
    pad_x: int
    pad_y: int
    original_width: int
    original_height: int

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map boxes from the letterboxed input back to original-image pixels."""
        out = boxes_xyxy.astype(np.float32).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.original_width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.original_height)
        return out


def open_image(data: bytes, target: int) -> tuple[Image.Image, int, int]:
    """Decode ``data`` to RGB, shrinking while decoding where the format allows. Returns the
    image and the original width and height."""
    if not data:
        raise BadImage("the image is empty (0 bytes)")
    if len(data) > MAX_IMAGE_BYTES:
        raise BadImage(f"the image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    with _readable():
        image: Image.Image = Image.open(io.BytesIO(data))
        width, height = image.size
        _check_size(width, height)
        if image.format == "JPEG":
            scale = target / max(width, height)
            image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
        image = image.convert("RGB")
        image.load()
    return image, width, height


def letterbox(image: Image.Image, size: int, original: tuple[int, int] | None = None) -> Letterboxed:
    """Fit ``image`` into a ``size``×``size`` square, keeping its aspect, padded with grey."""
    width, height = image.size
    original_width, original_height = original or (width, height)
    fit = size / max(width, height)
    new_w, new_h = max(1, round(width * fit)), max(1, round(height * fit))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = np.asarray(image, dtype=np.uint8)
    return Letterboxed(canvas, new_w / original_width, pad_x, pad_y, original_width, original_height)


def prepare(data: bytes, size: int) -> Letterboxed:
    image, width, height = open_image(data, size)
    return letterbox(image, size, (width, height))


# Pictures agents upload: checked to be real, bounded JPEGs before they are kept.
MAX_PICTURE_BYTES = 10 * 1024 * 1024
_JPEG_MAGIC = b"\xff\xd8\xff"
_END_OF_IMAGE = b"\xff\xd9"
_START_OF_SCAN = 0xDA
# Markers that stand alone, without a length: TEM and the restart markers RST0–7.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})


def _scan_offset(data: bytes) -> int:
    """Where the image data begins, after walking the marker segments before it (tables, frame
    header, metadata — an embedded thumbnail included, as a whole segment)."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise BadImage("the image is damaged or truncated: a marker was expected")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
        elif marker == _START_OF_SCAN:
            return at
        elif marker in _STANDALONE_MARKERS:
            at += 2
        else:
            length = int.from_bytes(data[at + 2:at + 4], "big")
            if length < 2:
                raise BadImage("the image is damaged or truncated: a segment has no length")
            at += 2 + length
    raise BadImage("the image is damaged or truncated: it has no image data")


def _check(data: bytes) -> None:
    """What a picture that is only stored needs: a JPEG by its structure (every segment before
    the image data well formed, and the image data ended by the end-of-image marker, so a cut
    upload is refused) whose header (read by Pillow) is within the size limits. Its pixels are
    not decoded here: the detector decodes the pictures it scores, with the same limits, and
    says of one it cannot read that it was not scored. Trailing bytes after the end marker,
    which some cameras add, are accepted, as a decoder accepts them."""
    if len(data) > MAX_PICTURE_BYTES:
        raise BadImage(f"the picture is larger than {MAX_PICTURE_BYTES // (1024 * 1024)} MB")
    if not data.startswith(_JPEG_MAGIC):
        raise BadImage("the picture is not a JPEG")
    if data.rfind(_END_OF_IMAGE, _scan_offset(data)) < 0:
        raise BadImage("the image is damaged or truncated: its image data does not end")
    _open_checked(data)


def _open_checked(data: bytes) -> None:
    with _readable(), Image.open(io.BytesIO(data)) as image:
        if image.format != "JPEG":
            raise BadImage("the picture is not a JPEG")
        _check_size(*image.size)


@contextlib.contextmanager
def _readable() -> Iterator[None]:
    """Pillow's refusals as :class:`BadImage`, with a decompression bomb an error, not a warning."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"the image is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        # Pillow's message names the in-memory file object, which means nothing to a client.
        raise BadImage("not a readable image (JPEG, PNG or another common format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"the image is damaged or truncated: {exc}") from None


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1 or max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise BadImage(f"the image is {width}×{height} pixels; at most {MAX_SIDE} per side "
                       f"and {MAX_PIXELS // 1_000_000} megapixels are accepted")


async def check_picture(data: bytes) -> None:
    """Raise :class:`BadImage` unless ``data`` is a well-formed JPEG within the size limits."""
    await asyncio.to_thread(_check, data)
