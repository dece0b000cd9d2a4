"""Webcam snapshots: an HTTP snapshot URL, or one frame grabbed from an MJPEG stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import httpx

MAX_PICTURE_BYTES = 8 * 1024 * 1024
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"


class Camera(Protocol):
    async def snapshot(self) -> bytes | None:
        """A JPEG of the printer now, or None when the camera has nothing to give."""
        ...


class _HttpCamera:
    def __init__(self, url: str, *, timeout: float = 10.0, client: httpx.AsyncClient | None = None) -> None:
        self.url = url
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=True)

    async def _chunks(self) -> AsyncIterator[bytes]:
        async with self._client.stream("GET", self.url) as response:
            if not response.is_success:
                raise OSError(f"the camera URL answered {response.status_code}")
            async for chunk in response.aiter_bytes():
                yield chunk


class SnapshotUrlCamera(_HttpCamera):
    """A camera that serves a JPEG at a URL (mjpg-streamer's `?action=snapshot`, crowsnest, go2rtc)."""

    async def snapshot(self) -> bytes | None:
        body = bytearray()
        async for chunk in self._chunks():
            body += chunk
            if len(body) > MAX_PICTURE_BYTES:
                raise OSError("the snapshot is larger than 8 MiB")
        return bytes(body) if body.startswith(JPEG_START) else None


class MjpegStreamCamera(_HttpCamera):
    """One frame grabbed from a multipart MJPEG stream, for cameras without a snapshot URL."""

    async def snapshot(self) -> bytes | None:
        buffer = bytearray()
        async for chunk in self._chunks():
            buffer += chunk
            # Scanning for the JPEG markers works whatever boundary or headers the parts carry.
            start = buffer.find(JPEG_START)
            if start >= 0:
                end = buffer.find(JPEG_END, start + 2)
                if end >= 0:
                    return bytes(buffer[start:end + 2])
                if start > 0:
                    del buffer[:start]
            if len(buffer) > MAX_PICTURE_BYTES:
                raise OSError("no complete JPEG frame within 8 MiB of the stream")
        return None


def camera_at(snapshot_url: str | None, stream_url: str | None) -> Camera | None:
    """The camera that serves at whichever URL is given."""
    if snapshot_url:
        return SnapshotUrlCamera(snapshot_url)
    if stream_url:
        return MjpegStreamCamera(stream_url)
    return None


@dataclass(frozen=True)
class NamedCamera:
    """One of the printer's cameras besides the primary, sent as moonraker-obico sends its
    cameras: by name, with its nozzle flag."""

    name: str
    camera: Camera
    nozzle: bool = False
