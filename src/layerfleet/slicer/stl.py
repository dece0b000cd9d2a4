"""Reading uploaded STL files before they go to the slicer.

``inspect_stl`` checks that a file really is a usable STL and measures it (triangle count,
bounding box, volume). It reads the file in bounded chunks, so a 500 MB upload never sits in
memory whole, and it raises ``BadStl`` with a message meant for the person who uploaded it.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import numpy.typing as npt

from layerfleet.errors import Invalid

DEFAULT_MAX_BYTES = 500 * 1024 * 1024

_BINARY_HEADER_BYTES = 80
_BINARY_PREFIX_BYTES = _BINARY_HEADER_BYTES + 4  # header + little-endian uint32 triangle count
_BINARY_TRIANGLE_BYTES = 50  # normal, three vertices (12 float32) and a uint16 attribute
_BINARY_TRIANGLE = np.dtype([("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])
_TRIANGLES_PER_CHUNK = 1 << 16  # 3.2 MB of binary STL at a time
_ASCII_CHUNK_BYTES = 8 << 20

# Signatures of files people upload by mistake instead of an STL, for a more helpful message.
_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (a 3MF project is one; export the part as STL)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"ply", "a PLY mesh"),
    (b"<?xml", "an XML file (AMF or 3MF?)"),
)

# The three coordinates of an ASCII "vertex x y z" line.
_ASCII_VERTEX = re.compile(rb"vertex[ \t]+([^\r\n]*)")


class BadStl(Invalid):
    """The file is not an STL that can be printed; ``str(error)`` says why, for the uploader."""


@dataclass(frozen=True)
class StlInfo:
    format: Literal["binary", "ascii"]
    triangles: int
    min_mm: tuple[float, float, float]
    max_mm: tuple[float, float, float]
    # Signed-tetrahedra volume; only meaningful for a closed mesh (its sign is the winding's).
    volume_mm3: float
    file_bytes: int

    @property
    def size_mm(self) -> tuple[float, float, float]:
        return (
            self.max_mm[0] - self.min_mm[0],
            self.max_mm[1] - self.min_mm[1],
            self.max_mm[2] - self.min_mm[2],
        )


class _Measure:
    """Accumulates bounding box and volume over chunks of triangles of shape (n, 3, 3)."""

    def __init__(self) -> None:
        self.triangles = 0
        self.low = np.full(3, np.inf)
        self.high = np.full(3, -np.inf)
        self.volume6 = 0.0  # six times the signed volume
        self.origin: npt.NDArray[np.float64] | None = None

    def add(self, triangles: npt.NDArray[np.floating]) -> None:
        if len(triangles) == 0:
            return
        if not np.isfinite(triangles).all():
            raise BadStl(f"The STL has coordinates that are not finite numbers (NaN or infinity) near triangle "
                         f"{self.triangles + _first_non_finite(triangles) + 1}.")
        corners = triangles.astype(np.float64)
        # Measuring the tetrahedra from a point on the mesh instead of (0, 0, 0) keeps the volume
        # exact for a part modelled far from the origin (the sum is translation invariant).
        if self.origin is None:
            self.origin = corners[0, 0].copy()
        corners -= self.origin
        self.volume6 += float(np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum())
        flat = corners.reshape(-1, 3)
        self.low = np.minimum(self.low, flat.min(axis=0) + self.origin)
        self.high = np.maximum(self.high, flat.max(axis=0) + self.origin)
        self.triangles += len(triangles)

    def result(self, stl_format: Literal["binary", "ascii"], file_bytes: int) -> StlInfo:
        if self.triangles == 0:
            raise BadStl("The STL contains no triangles.")
        low = (float(self.low[0]), float(self.low[1]), float(self.low[2]))
        high = (float(self.high[0]), float(self.high[1]), float(self.high[2]))
        flat_axes = [axis for axis, (a, b) in zip("XYZ", zip(low, high, strict=True), strict=True) if b - a <= 0]
        if flat_axes:
            # PrusaSlicer gives misleading messages for these ("could not fit on the bed").
            raise BadStl(f"The model is flat: it has no thickness along {' and '.join(flat_axes)}.")
        return StlInfo(stl_format, self.triangles, low, high, self.volume6 / 6.0, file_bytes)


def _first_non_finite(triangles: npt.NDArray[np.floating]) -> int:
    bad = ~np.isfinite(triangles.reshape(len(triangles), -1)).all(axis=1)
    return int(np.argmax(bad))


def inspect_stl(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> StlInfo:
    """Check and measure a binary or ASCII STL file. Raises ``BadStl`` when it is not usable.

    Blocking file I/O and numpy work (about 1 s per million binary triangles, 8 s per million
    ASCII ones): call it from async code through ``asyncio.to_thread``.
    """
    path = Path(path)
    file_bytes = path.stat().st_size  # before opening: an oversized upload is refused unread
    if file_bytes > max_bytes:
        raise BadStl(f"The file is {_megabytes(file_bytes)}; the limit is {_megabytes(max_bytes)}.")
    if file_bytes == 0:
        raise BadStl("The file is empty.")
    with path.open("rb") as stream:
        start = stream.read(_BINARY_PREFIX_BYTES)
        stream.seek(0)
        declared = int.from_bytes(start[80:84], "little") if len(start) == _BINARY_PREFIX_BYTES else None
        expected_bytes = None if declared is None else _BINARY_PREFIX_BYTES + declared * _BINARY_TRIANGLE_BYTES
        # Many CAD programs write "solid" at the start of binary STL headers too, so a size that
        # matches the declared triangle count is the stronger sign of a binary file.
        if expected_bytes == file_bytes:
            assert declared is not None
            return _read_binary(stream, declared, file_bytes)
        not_binary = _not_an_stl_reason(start, declared, expected_bytes, file_bytes)
        if start.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"solid") and _looks_like_text(start):
            return _read_ascii(stream, file_bytes, not_binary)
        raise BadStl(not_binary)


def _read_binary(stream: BinaryIO, declared: int, file_bytes: int) -> StlInfo:
    measure = _Measure()
    stream.seek(_BINARY_PREFIX_BYTES)
    remaining = declared
    while remaining:
        count = min(remaining, _TRIANGLES_PER_CHUNK)
        data = stream.read(count * _BINARY_TRIANGLE_BYTES)
        if len(data) != count * _BINARY_TRIANGLE_BYTES:  # the file shrank while we read it
            raise BadStl("The binary STL is truncated.")
        measure.add(np.frombuffer(data, dtype=_BINARY_TRIANGLE)["vertices"])
        remaining -= count
    return measure.result("binary", file_bytes)


def _read_ascii(stream: BinaryIO, file_bytes: int, not_binary: str) -> StlInfo:
    """``not_binary`` explains the file if it turns out to be a damaged binary STL with a "solid" header."""
    measure = _Measure()
    facets = endfacets = 0
    pending = np.empty((0, 3))  # corners of a triangle whose vertex lines straddle two chunks
    corners_read = 0
    saw_endsolid = False
    for chunk in _line_chunks(stream):
        if b"\0" in chunk:
            raise BadStl(not_binary)
        facets += chunk.count(b"facet normal")
        endfacets += chunk.count(b"endfacet")
        saw_endsolid = saw_endsolid or b"endsolid" in chunk
        rows = _ASCII_VERTEX.findall(chunk)
        if not rows:
            continue
        try:
            # numpy's C text reader converts the "x y z" rows faster than float() over split
            # strings would, and refuses rows that do not all have the same number of columns.
            corners = np.loadtxt(io.BytesIO(b"\n".join(rows)), dtype=np.float64, ndmin=2, comments=None)
        except ValueError:
            raise BadStl(f"The ASCII STL has a vertex line that is not three numbers "
                         f"(somewhere after vertex {corners_read}).") from None
        if corners.shape[1] != 3:
            raise BadStl(f"The ASCII STL has vertex lines that are not three numbers (after vertex {corners_read}).")
        corners_read += len(corners)
        corners = np.concatenate([pending, corners]) if len(pending) else corners
        whole = len(corners) - len(corners) % 3
        measure.add(corners[:whole].reshape(-1, 3, 3))
        pending = corners[whole:]
    if len(pending) or facets != endfacets or facets * 3 != corners_read:
        if not saw_endsolid:
            raise BadStl("The ASCII STL is truncated: it ends in the middle of a triangle.")
        raise BadStl(f"The ASCII STL is malformed: it has {facets} 'facet normal', {endfacets} 'endfacet' "
                     f"and {corners_read} 'vertex' lines.")
    if not saw_endsolid:
        # Cut off between two triangles: the model is missing whatever came after.
        raise BadStl("The ASCII STL is truncated: it has no 'endsolid' line.")
    return measure.result("ascii", file_bytes)


def _line_chunks(stream: BinaryIO) -> Iterator[bytes]:
    """The stream in pieces of about ``_ASCII_CHUNK_BYTES`` that end at line ends."""
    carry = b""
    while True:
        block = stream.read(_ASCII_CHUNK_BYTES)
        if not block:
            if carry:
                yield carry
            return
        block = carry + block
        cut = block.rfind(b"\n") + 1
        if cut == 0:
            if len(block) > _ASCII_CHUNK_BYTES:  # keeps a file without line breaks from filling memory
                raise BadStl("This is not an STL file: it has no line breaks.")
            carry = block
            continue
        carry = block[cut:]
        yield block[:cut]


def _looks_like_text(start: bytes) -> bool:
    # Bytes from 128 up are allowed: ASCII STLs often carry UTF-8 part names after "solid".
    return all(byte in b"\t\r\n" or 32 <= byte != 127 for byte in start)


def _not_an_stl_reason(start: bytes, declared: int | None, expected_bytes: int | None, file_bytes: int) -> str:
    for signature, description in _OTHER_FORMATS:
        if start.startswith(signature):
            return f"This is not an STL file: it looks like {description}."
    if _looks_like_text(start):
        return "This is not an STL file: it is text that does not start with 'solid'."
    if declared is None or expected_bytes is None:
        return f"This is not an STL file: {file_bytes} bytes is too short even for an empty binary STL."
    if declared == 0:
        return "The STL contains no triangles."
    if expected_bytes > file_bytes:
        return (f"The binary STL is truncated or not an STL: its header declares {declared} triangles "
                f"({_megabytes(expected_bytes)}), but the file has only {_megabytes(file_bytes)}.")
    return (f"The binary STL has {file_bytes - expected_bytes} bytes more than its {declared} triangles need; "
            f"it is damaged or not an STL.")


def _megabytes(size: int) -> str:
    if size < 1024 * 1024:
        return f"{size} bytes"
    return f"{size / (1024 * 1024):.{0 if size % (1024 * 1024) == 0 else 1}f} MiB"


__all__ = ["DEFAULT_MAX_BYTES", "BadStl", "StlInfo", "inspect_stl"]
