"""Pictures in, videos out: the CPU work of timelapses, run in a worker thread (never on the
event loop). PyAV (FFmpeg's libraries, with libx264, in its wheel) encodes H.264 in MP4.

Frames are read, encoded and dropped one at a time, so an eight-hour print of thousands of
frames compiles in the memory of a few pictures; the plain and the tagged video are encoded in
the same pass, each JPEG decoded once. Files are written aside and renamed into place, so a
crash never leaves a half video where a reader would find it."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
from PIL import Image, ImageDraw, UnidentifiedImageError

from layerfleet.detection import decisions

log = logging.getLogger(__name__)

BOX_COLOUR = (255, 40, 40)
GAUGE_COLOURS = {"green": (40, 190, 90), "yellow": (240, 200, 40), "red": (230, 50, 40)}
# x264 settings: fast enough for a small server, a keyframe every two seconds so a browser
# seeks without decoding far back.
PRESET = "veryfast"
CRF = "23"
KEYFRAME_SECONDS = 2


@dataclass(frozen=True)
class Tag:
    """What the detector said of the moment a frame shows."""

    boxes: Sequence[Sequence[float]]  # [xc, yc, w, h, confidence] in the scored picture's pixels
    normalized_p: float


@dataclass(frozen=True)
class Compiled:
    frames: int
    width: int
    height: int
    poster_index: int  # which frame became the poster


class NoFrames(Exception):
    """None of the frames could be read."""


def even_size(width: int, height: int) -> tuple[int, int]:
    """H.264 in 4:2:0 needs even sides."""
    return max(2, width - width % 2), max(2, height - height % 2)


def draw_tag(image: Image.Image, tag: Tag | None, source_size: tuple[int, int]) -> Image.Image:
    """The frame with the detector's boxes (above the visualisation threshold) and a small
    gauge of ``normalized_p``; boxes given in ``source_size`` pixels are scaled to the frame."""
    tagged = image.copy()
    draw = ImageDraw.Draw(tagged)
    width, height = tagged.size
    sx, sy = width / source_size[0], height / source_size[1]
    line = max(2, width // 320)
    p = 0.0
    if tag is not None:
        p = max(0.0, min(1.0, tag.normalized_p))
        for xc, yc, w, h, confidence in (tuple(box[:5]) for box in tag.boxes):
            if confidence <= decisions.VISUALIZATION_THRESH:
                continue
            draw.rectangle(((xc - w / 2) * sx, (yc - h / 2) * sy, (xc + w / 2) * sx, (yc + h / 2) * sy),
                           outline=BOX_COLOUR, width=line)
    # The gauge, bottom left: a dark track filled to normalized_p in its zone's colour.
    gauge_w, gauge_h = max(40, width // 6), max(6, height // 40)
    x0, y1 = max(4, width // 80), height - max(4, height // 60)
    y0 = y1 - gauge_h
    draw.rectangle((x0 - 2, y0 - 2, x0 + gauge_w + 2, y1 + 2), fill=(20, 20, 20))
    if p > 0:
        draw.rectangle((x0, y0, x0 + max(1, round(gauge_w * p)), y1), fill=GAUGE_COLOURS[decisions.gauge_zone(p)])
    return tagged


def _open_rgb(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as opened:
            opened.draft("RGB", opened.size)
            return opened.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError):
        log.warning("timelapse frame %s is unreadable; skipped", path)
        return None


def _readable(paths: Sequence[Path]) -> Iterator[tuple[int, Image.Image]]:
    for index, path in enumerate(paths):
        image = _open_rgb(path)
        if image is not None:
            yield index, image


class _Encoder:
    """One H.264 MP4 being written aside; ``finish`` moves it into place."""

    def __init__(self, target: Path, width: int, height: int, fps: int, threads: int) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".video-", suffix=".mp4", dir=target.parent)
        os.close(handle)
        self.target, self.temporary = target, Path(name)
        self.container: Any = av.open(name, mode="w", format="mp4", options={"movflags": "+faststart"})
        stream: Any = self.container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {"preset": PRESET, "crf": CRF, "g": str(fps * KEYFRAME_SECONDS)}
        stream.codec_context.thread_count = threads
        self.stream = stream
        self.size = (width, height)
        self.pts = 0

    def add(self, image: Image.Image) -> None:
        frame = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
        frame.pts = self.pts
        self.pts += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def finish(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        os.replace(self.temporary, self.target)

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()
        self.temporary.unlink(missing_ok=True)


def compile_videos(frames: Sequence[Path], tags: Sequence[Tag | None], *, video: Path, tagged_video: Path,
                   poster: Path, poster_index: int | None, fps: int = 30, threads: int = 1,
                   source_size: tuple[int, int] | None = None) -> Compiled:
    """Encode ``frames`` (JPEG files, in order) into ``video`` and, with ``tags`` drawn (one per
    frame), into ``tagged_video``; save the frame at ``poster_index`` (default: the last
    readable one) as the ``poster`` JPEG. ``source_size``: the pixels the tags' boxes are in
    (default: the first frame's)."""
    if len(tags) != len(frames):
        raise ValueError("one tag (or None) per frame")
    readable = _readable(frames)
    first = next(readable, None)
    if first is None:
        raise NoFrames("no frame could be read")
    first_size = first[1].size
    width, height = even_size(*first_size)
    plain = _Encoder(video, width, height, fps, threads)
    marked = _Encoder(tagged_video, width, height, fps, threads)
    count, last_index, poster_done = 0, first[0], False
    try:
        pending: Iterator[tuple[int, Image.Image]] = _chain(first, readable)
        for index, image in pending:
            original = image.size
            if original == first_size and original != (width, height):
                image = image.crop((0, 0, width, height))  # an odd side loses one pixel row
            elif original != (width, height):
                image = image.resize((width, height))  # the camera changed resolution mid-print
            plain.add(image)
            marked.add(draw_tag(image, tags[index], source_size or original))
            if poster_index is not None and index == poster_index:
                _save_jpeg(image, poster)
                poster_done = True
            count, last_index = count + 1, index
        plain.finish()
        marked.finish()
    except BaseException:
        plain.abandon()
        marked.abandon()
        raise
    if not poster_done:
        last = _open_rgb(frames[last_index])
        assert last is not None
        _save_jpeg(last, poster)
    return Compiled(frames=count, width=width, height=height,
                    poster_index=poster_index if poster_done and poster_index is not None else last_index)


def _chain(first: tuple[int, Image.Image],
           rest: Iterator[tuple[int, Image.Image]]) -> Iterator[tuple[int, Image.Image]]:
    yield first
    yield from rest


def _save_jpeg(image: Image.Image, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".poster-", suffix=".jpg", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            image.save(out, "JPEG", quality=85)
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


# --- uploaded timelapses --------------------------------------------------------------------------

class BadVideo(ValueError):
    """An upload that is not a video this server can check; the message says why."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    frames: int  # video packets found (each a frame)
    seconds: float


def probe_video(path: Path, *, max_side: int) -> VideoInfo:
    """Check an uploaded file all the way through without decoding it all: a container FFmpeg
    reads, with a video stream of sensible size, whose packets all demux (a truncated file
    fails here), and whose first frame decodes."""
    try:
        container: Any = av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise BadVideo("The file is not a video this server can read.") from exc
    try:
        streams = list(container.streams.video)
        if not streams:
            raise BadVideo("The file has no video frames in it.")
        stream = streams[0]
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if not (16 <= width <= max_side and 16 <= height <= max_side):
            raise BadVideo(f"The video is {width}×{height} pixels; each side must be 16 to {max_side}.")
        packets, first_frame, last_pts = 0, False, None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                packets += 1
                if packet.pts is not None:
                    last_pts = packet.pts if last_pts is None else max(last_pts, packet.pts)
                if not first_frame:
                    first_frame = bool(packet.decode())
        except (av.error.FFmpegError, ValueError) as exc:
            raise BadVideo("The video is truncated or damaged.") from exc
        declared = int(stream.frames or 0)
        if packets == 0:
            raise BadVideo("The file has no video frames in it.")
        if declared and packets < declared:
            raise BadVideo(f"The video is truncated: {packets} of its {declared} frames are in the file.")
        if not first_frame:
            raise BadVideo("The video's frames cannot be decoded.")
        seconds = float(last_pts * stream.time_base) if last_pts is not None and stream.time_base else 0.0
        return VideoInfo(width, height, packets, seconds)
    finally:
        container.close()


def sample_frames(path: Path, every_seconds: float) -> Generator[tuple[float, Image.Image]]:
    """Decode the video and yield ``(video time, picture)`` at one frame per ``every_seconds``
    of video (the first frame always), streaming."""
    container: Any = av.open(str(path), mode="r")
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_at = -math.inf
        index = 0
        rate = float(stream.average_rate or 30)
        for frame in container.decode(stream):
            at = float(frame.time) if frame.time is not None else index / rate
            index += 1
            if at + 1e-6 < next_at:
                continue
            next_at = (at if next_at == -math.inf else next_at) + every_seconds
            yield at, frame.to_image()
    finally:
        container.close()
