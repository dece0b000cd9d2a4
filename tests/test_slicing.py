"""STL checks and slicing with the real PrusaSlicer CLI (layerfleet.slicer).

The STL files are made here: a 20 mm cube (binary and ASCII), the same cube with its top face
missing (not manifold), models too big for the bed, and files that are no STL at all.
PrusaSlicer comes from Debian (scripts/install-prusaslicer). Without it the tests that slice are
skipped on a developer machine but fail in CI, like the PostgreSQL policy in conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from layerfleet.slicer import (
    DEFAULT_PROFILE,
    BadStl,
    SliceCanceled,
    SlicerError,
    SliceResult,
    SlicerNotFound,
    SlicerTimeout,
    find_prusaslicer,
    inspect_stl,
    parse_duration,
    parse_gcode_summary,
    slice_stl,
)
from layerfleet.slicer.prusaslicer import ENVIRONMENT_VARIABLE, slicer_message


def _prusaslicer() -> Path | None:
    found = find_prusaslicer()
    if found is None and os.environ.get("CI"):
        raise RuntimeError("PrusaSlicer is not installed; CI must slice with it (run scripts/install-prusaslicer)")
    return found


PRUSASLICER = _prusaslicer()
needs_prusaslicer = pytest.mark.skipif(PRUSASLICER is None, reason="PrusaSlicer is not installed")

Triangles = npt.NDArray[np.float64]  # shape (n, 3, 3): n triangles of three (x, y, z) corners


# --- Making STL files ------------------------------------------------------------------------


def box_triangles(size: tuple[float, float, float], *, origin: tuple[float, float, float] = (0, 0, 0),
                  open_top: bool = False) -> Triangles:
    """A box as 12 triangles, counter-clockwise seen from outside (outward normals)."""
    sx, sy, sz = size
    ox, oy, oz = origin

    def corner(i: int, j: int, k: int) -> tuple[float, float, float]:
        return (ox + i * sx, oy + j * sy, oz + k * sz)

    # Each face's corners in counter-clockwise order seen from outside.
    faces = {
        "bottom": [corner(0, 0, 0), corner(0, 1, 0), corner(1, 1, 0), corner(1, 0, 0)],
        "top": [corner(0, 0, 1), corner(1, 0, 1), corner(1, 1, 1), corner(0, 1, 1)],
        "front": [corner(0, 0, 0), corner(1, 0, 0), corner(1, 0, 1), corner(0, 0, 1)],
        "back": [corner(0, 1, 0), corner(0, 1, 1), corner(1, 1, 1), corner(1, 1, 0)],
        "left": [corner(0, 0, 0), corner(0, 0, 1), corner(0, 1, 1), corner(0, 1, 0)],
        "right": [corner(1, 0, 0), corner(1, 1, 0), corner(1, 1, 1), corner(1, 0, 1)],
    }
    triangles = []
    for name, (a, b, c, d) in faces.items():
        if open_top and name == "top":
            continue
        triangles += [(a, b, c), (a, c, d)]
    return np.array(triangles, dtype=np.float64)


def cube_triangles(edge: float = 20.0, **options: object) -> Triangles:
    return box_triangles((edge, edge, edge), **options)  # type: ignore[arg-type]


def write_binary_stl(path: Path, triangles: Triangles, *, header: bytes = b"layerfleet test") -> Path:
    with path.open("wb") as stl:
        stl.write(header.ljust(80, b" "))
        stl.write(struct.pack("<I", len(triangles)))
        for a, b, c in triangles:
            normal = np.cross(b - a, c - a)
            normal /= np.linalg.norm(normal) or 1.0
            stl.write(struct.pack("<12fH", *normal, *a, *b, *c, 0))
    return path


def write_ascii_stl(path: Path, triangles: Triangles, name: str = "cube") -> Path:
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    facet = ("  facet normal {:e} {:e} {:e}\n    outer loop\n" + "      vertex {:.6f} {:.6f} {:.6f}\n" * 3
             + "    endloop\n  endfacet\n")
    rows = np.concatenate([normals, triangles.reshape(-1, 9)], axis=1).tolist()
    path.write_text(f"solid {name}\n" + "".join(facet.format(*row) for row in rows) + f"endsolid {name}\n")
    return path


# --- inspect_stl -----------------------------------------------------------------------------


def test_binary_cube_is_measured(tmp_path: Path) -> None:
    info = inspect_stl(write_binary_stl(tmp_path / "cube.stl", cube_triangles()))
    assert info.format == "binary"
    assert info.triangles == 12
    assert info.min_mm == (0, 0, 0) and info.max_mm == (20, 20, 20)
    assert info.size_mm == (20, 20, 20)
    assert info.volume_mm3 == pytest.approx(8000)
    assert info.file_bytes == 84 + 12 * 50


def test_binary_stl_whose_header_says_solid_is_still_binary(tmp_path: Path) -> None:
    # SolidWorks and others start binary headers with "solid"; the size decides.
    path = write_binary_stl(tmp_path / "cube.stl", cube_triangles(), header=b"solid made by some CAD")
    assert inspect_stl(path).format == "binary"


def test_ascii_cube_far_from_the_origin_is_measured(tmp_path: Path) -> None:
    path = write_ascii_stl(tmp_path / "cube.stl", cube_triangles(origin=(1000, -500, 3)))
    info = inspect_stl(path)
    assert info.format == "ascii"
    assert info.triangles == 12
    assert info.min_mm == pytest.approx((1000, -500, 3))
    assert info.max_mm == pytest.approx((1020, -480, 23))
    assert info.volume_mm3 == pytest.approx(8000, rel=1e-9)


def test_open_cube_volume_is_not_the_solid_volume(tmp_path: Path) -> None:
    # inspect_stl does not judge manifoldness; its volume is only meaningful for closed meshes.
    info = inspect_stl(write_binary_stl(tmp_path / "open.stl", cube_triangles(open_top=True)))
    assert info.triangles == 10
    assert info.max_mm == (20, 20, 20)
    assert info.volume_mm3 == pytest.approx(8000 * 2 / 3)


def many_cubes(count: int) -> Triangles:
    """``count`` disjoint 2 mm cubes in a row: a mesh with a known volume and bounding box."""
    cube = cube_triangles(2.0)
    offsets = np.zeros((count, 1, 1, 3))
    offsets[:, 0, 0, 0] = np.arange(count) * 3.0
    return (cube[None] + offsets).reshape(-1, 3, 3)


def test_large_binary_stl_is_read_in_chunks(tmp_path: Path) -> None:
    triangles = many_cubes(20_000)  # 240,000 triangles: several 65,536-triangle chunks
    records = np.zeros(len(triangles), dtype=[("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("a", "<u2")])
    records["vertices"] = triangles
    path = tmp_path / "many.stl"
    path.write_bytes(b" " * 80 + struct.pack("<I", len(triangles)) + records.tobytes())
    info = inspect_stl(path)
    assert info.triangles == 240_000
    assert info.volume_mm3 == pytest.approx(20_000 * 8, rel=1e-6)
    assert info.max_mm == pytest.approx((19_999 * 3 + 2, 2, 2))


def test_large_ascii_stl_is_read_in_chunks(tmp_path: Path) -> None:
    # About 12 MB: triangles straddle the reader's 8 MiB chunk border.
    path = write_ascii_stl(tmp_path / "many.stl", many_cubes(4_000))
    assert path.stat().st_size > 9 * 1024 * 1024
    info = inspect_stl(path)
    assert info.triangles == 48_000
    assert info.volume_mm3 == pytest.approx(4_000 * 8, rel=1e-6)


def _truncated_binary(path: Path) -> None:
    write_binary_stl(path, cube_triangles())
    path.write_bytes(path.read_bytes()[:-30])


def _padded_binary(path: Path) -> None:
    write_binary_stl(path, cube_triangles())
    path.write_bytes(path.read_bytes() + b"\0" * 7)


def _truncated_ascii(path: Path) -> None:
    write_ascii_stl(path, cube_triangles())
    text = path.read_text()
    path.write_text(text[: text.rindex("vertex")])


def _ascii_cut_between_triangles(path: Path) -> None:
    write_ascii_stl(path, cube_triangles())
    text = path.read_text()
    path.write_text(text[: text.rindex("facet normal")])


def _nan_binary(path: Path) -> None:
    triangles = cube_triangles()
    triangles[5, 1, 2] = np.nan
    write_binary_stl(path, triangles)


def _infinite_ascii(path: Path) -> None:
    write_ascii_stl(path, cube_triangles())
    path.write_text(path.read_text().replace("vertex 20.000000 20.000000 20.000000", "vertex inf 20 20", 1))


BAD_FILES = {
    "empty": (lambda p: p.write_bytes(b""), "The file is empty."),
    "png": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "looks like a PNG image"),
    "zip / 3mf": (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 200), "ZIP archive"),
    "text": (lambda p: p.write_text("hello\nthis is not a mesh\n"), "text that does not start with 'solid'"),
    "short binary": (lambda p: p.write_bytes(b"\x01\x02\x03" * 10), "too short"),
    "truncated binary": (_truncated_binary, "header declares 12 triangles"),
    "padded binary": (_padded_binary, "7 bytes more than its 12 triangles need"),
    "zero triangles": (lambda p: p.write_bytes(b" " * 80 + struct.pack("<I", 0)), "no triangles"),
    "ascii without facets": (lambda p: p.write_text("solid nothing\nendsolid nothing\n"), "no triangles"),
    "truncated ascii": (_truncated_ascii, "truncated"),
    "ascii cut between two triangles": (_ascii_cut_between_triangles, "no 'endsolid' line"),
    "ascii vertex with two numbers": (
        lambda p: p.write_text("solid x\nfacet normal 0 0 1\nouter loop\nvertex 1 2\nvertex 1 2 3\nvertex 3 2 1\n"
                               "endloop\nendfacet\nendsolid x\n"),
        "not three numbers",
    ),
    "ascii vertex not a number": (
        lambda p: p.write_text("solid x\nfacet normal 0 0 1\nouter loop\nvertex a b c\nvertex 1 2 3\nvertex 3 2 1\n"
                               "endloop\nendfacet\nendsolid x\n"),
        "not three numbers",
    ),
    "NaN coordinate": (_nan_binary, "not finite numbers (NaN or infinity) near triangle 6"),
    "infinite ascii coordinate": (_infinite_ascii, "not finite"),
    "flat square": (lambda p: write_binary_stl(p, box_triangles((20, 20, 1))[:2]), "flat: it has no thickness along Z"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_stl_is_refused_with_a_clear_message(tmp_path: Path, kind: str) -> None:
    make, expected = BAD_FILES[kind]
    path = tmp_path / "part.stl"
    make(path)
    with pytest.raises(BadStl) as refused:
        inspect_stl(path)
    assert expected in str(refused.value)


def test_too_large_file_is_refused_without_being_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.stl"
    with path.open("wb") as sparse:  # 600 MiB that take no disk space
        sparse.truncate(600 * 1024 * 1024)

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("inspect_stl opened a file that is too large")

    monkeypatch.setattr(Path, "open", no_reading)
    with pytest.raises(BadStl, match=r"The file is 600 MiB; the limit is 500 MiB\."):
        inspect_stl(path)
    with pytest.raises(BadStl, match=r"the limit is 1000 bytes"):
        inspect_stl(path, max_bytes=1000)


# --- Reading PrusaSlicer's G-code comments ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("59s", 59), ("13m 45s", 825), ("2h 0m 5s", 7205), ("1d 2h 3m 4s", 93784), ("3d 0h 0m 0s", 259200)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "12", "1h 2x", "-3m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def _gcode(path: Path, summary: str, *, config_bytes: int = 2000, layers: int = 3) -> Path:
    body = "".join(f";LAYER_CHANGE\n;Z:{0.2 * (n + 1):.1f}\n;HEIGHT:0.2\nG1 X1 Y1 E1\n" for n in range(layers))
    config = "".join(f"; key_{n} = {'x' * 60}\n" for n in range(config_bytes // 70))
    path.write_text(
        "; generated by PrusaSlicer 2.7.1+linux on 2026-01-01 at 00:00:00 UTC\n\nG28\n" + body + summary
        + "\n; prusaslicer_config = begin\n" + config + "; max_print_height = 210\n; prusaslicer_config = end\n"
    )
    return path


def test_summary_of_a_multi_extruder_print(tmp_path: Path) -> None:
    path = _gcode(tmp_path / "a.gcode", "; filament used [mm] = 1000.50, 20.25\n; filament used [cm3] = 2.40, 0.05\n"
                  "; filament used [g] = 2.98, 0.06\n; total filament used [g] = 3.04\n"
                  "; estimated printing time (normal mode) = 1h 2m 3s\n"
                  "; estimated printing time (silent mode) = 1h 9m 0s\n; total layers count = 42\n")
    summary = parse_gcode_summary(path)
    assert summary.estimated_print_seconds == 3723  # normal mode, not silent mode
    assert summary.filament_mm == pytest.approx(1020.75)
    assert summary.filament_cm3 == pytest.approx(2.45)
    assert summary.filament_g == pytest.approx(3.04)
    assert summary.layers == 42  # PrusaSlicer 2.6+ states it; preferred over counting
    assert summary.top_z_mm == pytest.approx(0.6)
    assert summary.max_print_height_mm == 210
    assert summary.slicer_version == "2.7.1+linux"


def test_summary_without_density_has_no_weight_and_counts_layers(tmp_path: Path) -> None:
    # PrusaSlicer 2.5 with filament_density = 0, behind a long config dump (custom G-code).
    path = _gcode(tmp_path / "b.gcode", "; filament used [mm] = 1491.16\n; filament used [cm3] = 3.59\n"
                  "; total filament used [g] = 0.00\n; estimated printing time (normal mode) = 13m 45s\n",
                  config_bytes=600_000, layers=7)
    summary = parse_gcode_summary(path)
    assert (summary.estimated_print_seconds, summary.filament_g, summary.layers) == (825, None, 7)


def test_gcode_without_estimates_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "other.gcode"
    path.write_text("; generated by Cura\nG28\nG1 X10\n")
    with pytest.raises(SlicerError, match="no PrusaSlicer summary"):
        parse_gcode_summary(path)
    path.write_bytes(b"GCDE\x01\x00\x00\x00" + bytes(100))
    with pytest.raises(SlicerError, match="binary G-code"):
        parse_gcode_summary(path)


def test_slicer_messages_are_cleaned_up() -> None:
    # Real PrusaSlicer 2.5 output: stderr, then stdout.
    log = (
        "[2026-11-21 23:34:36.143455] [0x00007fd10b1d3d80] [trace]   Initializing StaticPrintConfigs\n"
        "[2026-11-21 23:34:36.158095] [0x00007fd10b1d3d80] [error]   stl_open_count_facets: "
        "The input is an empty file: /srv/parts/p.stl\n"
    )
    assert slicer_message("/srv/parts/p.stl: Loading of a model file failed.", log,
                          replacements={"/srv/parts/p.stl": "p.stl"}) == (
        "p.stl: Loading of a model file failed. The input is an empty file: p.stl."
    )
    crash = "terminate called after throwing an instance of 'Slic3r::RuntimeError'\n  what():  Objects could not fit " \
            "on the bed\n"
    assert slicer_message(crash, "10 => Processing triangulated mesh\n") == "Objects could not fit on the bed."
    usage = "PrusaSlicer-2.5.0+UNKNOWN based on Slic3r (with GUI support)\n\nUsage: prusa-slicer [ ACTIONS ]\n"
    assert slicer_message("Unknown option --binary-gcode", usage) == "Unknown option --binary-gcode."
    assert slicer_message("error: The selected fill pattern is not supposed to work at 100% density") == (
        "The selected fill pattern is not supposed to work at 100% density."
    )
    assert len(slicer_message("x" * 5000)) == 1000


# --- Finding PrusaSlicer ---------------------------------------------------------------------


def test_environment_variable_chooses_the_slicer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "my-slicer"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, str(fake))
    assert find_prusaslicer() == fake


async def test_missing_slicer_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, str(tmp_path / "not-installed"))
    assert find_prusaslicer() is None
    stl = write_binary_stl(tmp_path / "cube.stl", cube_triangles())
    with pytest.raises(SlicerNotFound, match="PrusaSlicer is not installed"):
        await slice_stl(stl, DEFAULT_PROFILE, tmp_path / "cube.gcode")


@pytest.mark.parametrize("option", ["--output=/tmp/x.gcode", "--load=other.ini", "--post-process=/bin/sh",
                                    "--export-stl", "--datadir=/", "fill-density=20%", "--fill-density 20%"])
async def test_unsafe_or_malformed_options_are_refused(tmp_path: Path, option: str) -> None:
    stl = write_binary_stl(tmp_path / "cube.stl", cube_triangles())
    with pytest.raises(ValueError, match="Slicer option"):
        await slice_stl(stl, DEFAULT_PROFILE, tmp_path / "cube.gcode", extra_options=[option])


# --- Slicing with PrusaSlicer ----------------------------------------------------------------


def gcode_comment(gcode: Path, name: str) -> str:
    """A summary comment's value, read independently of layerfleet's parser."""
    match = re.search(rf"^; {re.escape(name)} = (.+)$", gcode.read_text(), re.MULTILINE)
    assert match is not None, f"no '; {name}' comment in {gcode.name}"
    return match.group(1)


def seconds_of(duration: str) -> int:
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(int(amount) * units[unit] for amount, unit in re.findall(r"(\d+)([dhms])", duration))


def files_in(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


@pytest.fixture(scope="module")
def cube_slice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SliceResult]:
    """The 20 mm cube sliced once with the default profile, shared by the checks below."""
    if PRUSASLICER is None:
        pytest.skip("PrusaSlicer is not installed")
    directory = tmp_path_factory.mktemp("cube")
    stl = write_binary_stl(directory / "cube.stl", cube_triangles())
    result = asyncio.run(slice_stl(stl, DEFAULT_PROFILE, directory / "cube.gcode"))
    return directory, result


@needs_prusaslicer
def test_cube_estimates_equal_prusaslicers_gcode_comments(cube_slice: tuple[Path, SliceResult]) -> None:
    directory, result = cube_slice
    gcode = directory / "cube.gcode"
    assert result.gcode_path == gcode
    assert files_in(directory) == {"cube.stl", "cube.gcode"}  # no temporary files left
    assert result.estimated_print_seconds == seconds_of(
        gcode_comment(gcode, "estimated printing time (normal mode)"))
    assert result.filament_cm3 == float(gcode_comment(gcode, "filament used [cm3]"))
    assert result.filament_mm == float(gcode_comment(gcode, "filament used [mm]"))
    assert result.filament_g == float(gcode_comment(gcode, "filament used [g]"))
    assert result.layers == len(re.findall(r"^;LAYER_CHANGE$", gcode.read_text(), re.MULTILINE))


@needs_prusaslicer
def test_cube_estimates_are_plausible(cube_slice: tuple[Path, SliceResult]) -> None:
    _, result = cube_slice
    # 2.5.0 says 21m 49s and 2.98 cm³ for this cube; other versions differ a little.
    assert 5 * 60 <= result.estimated_print_seconds <= 60 * 60
    # Perimeters, solid top and bottom and 15 % infill: well below the solid 8 cm³, above the shell.
    assert 1.5 < result.filament_cm3 < 8000 / 1000 * 1.2
    assert result.filament_cm3 < 8.0 * 0.6
    # Length × cross-section of 1.75 mm filament, and weight with PLA's 1.24 g/cm³.
    mm, cm3 = result.filament_mm, result.filament_cm3
    assert mm * np.pi * 1.75**2 / 4 / 1000 == pytest.approx(cm3, abs=0.01)
    assert result.filament_g == pytest.approx(cm3 * 1.24, abs=0.02)
    assert result.layers == 100  # 20 mm in 0.2 mm layers
    assert result.slicer_version is not None and result.slicer_version.startswith("2.")


@needs_prusaslicer
async def test_ascii_cube_slices_like_the_binary_cube(tmp_path: Path, cube_slice: tuple[Path, SliceResult]) -> None:
    _, binary_result = cube_slice
    stl = write_ascii_stl(tmp_path / "cube.stl", cube_triangles())
    result = await slice_stl(stl, DEFAULT_PROFILE, tmp_path / "cube.gcode")
    assert result.estimated_print_seconds == binary_result.estimated_print_seconds
    assert result.filament_cm3 == binary_result.filament_cm3


@needs_prusaslicer
async def test_open_cube_is_closed_by_the_slicer(tmp_path: Path, cube_slice: tuple[Path, SliceResult]) -> None:
    # PrusaSlicer (2.5) closes each layer's outline itself, so a cube without its top face
    # slices into the same print as the closed cube; it is not refused.
    _, closed = cube_slice
    stl = write_binary_stl(tmp_path / "open.stl", cube_triangles(open_top=True))
    result = await slice_stl(stl, DEFAULT_PROFILE, tmp_path / "open.gcode")
    assert result.estimated_print_seconds == pytest.approx(closed.estimated_print_seconds, rel=0.02)
    assert result.filament_cm3 == pytest.approx(closed.filament_cm3, abs=0.05)
    assert result.layers == closed.layers


@needs_prusaslicer
async def test_extra_options_override_the_profile(tmp_path: Path, cube_slice: tuple[Path, SliceResult]) -> None:
    _, default = cube_slice
    stl = write_binary_stl(tmp_path / "cube.stl", cube_triangles())
    result = await slice_stl(stl, DEFAULT_PROFILE, tmp_path / "dense.gcode",
                             extra_options=["--fill-density=60%", "--fill-pattern=rectilinear"])
    assert result.filament_cm3 > default.filament_cm3 + 1


@needs_prusaslicer
async def test_post_processing_scripts_of_a_profile_do_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "post-processed"
    profile = tmp_path / "evil.ini"
    profile.write_text(DEFAULT_PROFILE.read_text() + f"post_process = /usr/bin/touch {marker}\n")
    stl = write_binary_stl(tmp_path / "cube.stl", cube_triangles())
    await slice_stl(stl, profile, tmp_path / "cube.gcode")
    assert not marker.exists()


SLICER_FAILURES = {
    # 260 mm along X on a 250 mm bed: PrusaSlicer aborts (SIGABRT) with this message.
    "longer than the bed": (box_triangles((260, 20, 20)), "Objects could not fit on the bed."),
    # PrusaSlicer 2.5 does not check the height; layerfleet does, from the G-code's last layer.
    "taller than the printer": (
        box_triangles((20, 20, 220)),
        "The object is too tall for the printer: it is 220 mm high, the maximum print height is 210 mm.",
    ),
    "thinner than a layer": (cube_triangles(0.05), "No layers were detected."),
}


@needs_prusaslicer
@pytest.mark.parametrize("kind", SLICER_FAILURES)
async def test_models_the_slicer_refuses(tmp_path: Path, kind: str) -> None:
    triangles, expected = SLICER_FAILURES[kind]
    stl = write_binary_stl(tmp_path / "part.stl", triangles)
    with pytest.raises(SlicerError) as failed:
        await slice_stl(stl, DEFAULT_PROFILE, tmp_path / "part.gcode")
    assert expected in failed.value.message
    assert files_in(tmp_path) == {"part.stl"}


@needs_prusaslicer
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "part.stl: Loading of a model file failed. The input is an empty file: part.stl."),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
         "part.stl: Loading of a model file failed. The file part.stl has the wrong size."),
    ],
)
async def test_files_that_are_no_stl_get_prusaslicers_message(tmp_path: Path, content: bytes, expected: str) -> None:
    # inspect_stl stops these before slicing; the slicer's own message is still readable.
    stl = tmp_path / "part.stl"
    stl.write_bytes(content)
    with pytest.raises(SlicerError) as failed:
        await slice_stl(stl, DEFAULT_PROFILE, tmp_path / "part.gcode")
    assert failed.value.message == expected  # without the server's directories
    assert failed.value.exit_code == 1
    assert files_in(tmp_path) == {"part.stl"}


# A slice that takes PrusaSlicer 20 s or more: a 150 mm solid cube in 0.05 mm layers.
SLOW_OPTIONS = ["--layer-height=0.05", "--first-layer-height=0.05", "--fill-density=100%",
                "--fill-pattern=rectilinear"]


def slicer_processes(directory: Path) -> list[int]:
    """Processes whose command line mentions ``directory`` (the slicer writes below it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command_line = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if os.fsencode(directory) in command_line:
                pids.append(int(entry.name))
    return pids


async def wait_for_slicer(directory: Path) -> None:
    for _ in range(200):
        if slicer_processes(directory):
            await asyncio.sleep(0.5)  # let it get into slicing
            return
        await asyncio.sleep(0.05)
    raise AssertionError("PrusaSlicer did not start")


@needs_prusaslicer
async def test_cancel_kills_the_slicer_and_leaves_no_output(tmp_path: Path) -> None:
    stl = write_binary_stl(tmp_path / "big.stl", cube_triangles(200))
    cancel = asyncio.Event()
    slicing = asyncio.create_task(
        slice_stl(stl, DEFAULT_PROFILE, tmp_path / "big.gcode", cancel=cancel, extra_options=SLOW_OPTIONS))
    await wait_for_slicer(tmp_path)
    started = asyncio.get_running_loop().time()
    cancel.set()
    with pytest.raises(SliceCanceled):
        await slicing
    assert asyncio.get_running_loop().time() - started < 5
    assert slicer_processes(tmp_path) == []
    assert files_in(tmp_path) == {"big.stl"}


@needs_prusaslicer
async def test_timeout_kills_the_slicer_and_leaves_no_output(tmp_path: Path) -> None:
    # 4,000 layers of solid infill: 3.4 s on a quiet 2-core machine (150 mm took 1.8 s, too
    # close to a 2 s limit), so a 1 s limit always cuts it off.
    stl = write_binary_stl(tmp_path / "big.stl", cube_triangles(200))
    with pytest.raises(SlicerTimeout, match="did not finish within 1 seconds"):
        await slice_stl(stl, DEFAULT_PROFILE, tmp_path / "big.gcode", timeout=1, extra_options=SLOW_OPTIONS)
    assert slicer_processes(tmp_path) == []
    assert files_in(tmp_path) == {"big.stl"}


@needs_prusaslicer
async def test_canceling_the_task_kills_the_slicer(tmp_path: Path) -> None:
    stl = write_binary_stl(tmp_path / "big.stl", cube_triangles(200))
    slicing = asyncio.create_task(
        slice_stl(stl, DEFAULT_PROFILE, tmp_path / "big.gcode", extra_options=SLOW_OPTIONS))
    await wait_for_slicer(tmp_path)
    slicing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slicing
    assert slicer_processes(tmp_path) == []
    assert files_in(tmp_path) == {"big.stl"}


@needs_prusaslicer
async def test_option_prusaslicer_does_not_know_is_its_error(tmp_path: Path) -> None:
    stl = write_binary_stl(tmp_path / "cube.stl", cube_triangles())
    with pytest.raises(SlicerError) as failed:
        await slice_stl(stl, DEFAULT_PROFILE, tmp_path / "cube.gcode", extra_options=["--no-such-setting=1"])
    assert failed.value.message == "Unknown option --no-such-setting."  # not PrusaSlicer's usage text
    assert files_in(tmp_path) == {"cube.stl"}


async def test_slice_canceled_before_it_starts_runs_nothing(tmp_path: Path) -> None:
    stl = write_binary_stl(tmp_path / "cube.stl", cube_triangles())
    cancel = asyncio.Event()
    cancel.set()
    with pytest.raises(SliceCanceled):
        await slice_stl(stl, DEFAULT_PROFILE, tmp_path / "cube.gcode", cancel=cancel, executable="/bin/false")
    assert files_in(tmp_path) == {"cube.stl"}


def test_the_slicer_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A worker killed with SIGKILL runs no cleanup: the kernel must stop its slicer."""
    pid_file = tmp_path / "slicer.pid"
    fake = tmp_path / "slow-slicer"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 120\n")
    fake.chmod(0o755)
    worker = subprocess.Popen([sys.executable, "-c", (
        "import asyncio\nfrom layerfleet.slicer.prusaslicer import _run\n"
        f"asyncio.run(_run([{str(fake)!r}], time_limit=120, cancel=None))\n")])
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline, "the fake slicer did not start"
            time.sleep(0.05)
        slicer_pid = int(pid_file.read_text())
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _running(slicer_pid):
            assert time.monotonic() < deadline, "the slicer outlived the process that started it"
            time.sleep(0.05)
    finally:
        worker.kill()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie is dead, only not yet collected by its new parent


def test_what_a_killed_slice_left_behind_is_removed_at_start(tmp_path: Path) -> None:
    from layerfleet.library.service import gcode_dir, stl_dir
    from layerfleet.library.slice_jobs import remove_leftovers

    work = gcode_dir(tmp_path) / ".slicing-abc123"
    work.mkdir(parents=True)
    (work / "output.gcode").write_text("G1 X1\n")
    profile = gcode_dir(tmp_path) / ".profile-x1.ini"
    profile.write_text("layer_height = 0.2\n")
    upload = stl_dir(tmp_path) / ".upload-y2.stl"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"solid")
    kept = gcode_dir(tmp_path) / "1f0c.gcode"
    kept.write_text("G1 X1\n")
    # Beside other workers, a fresh leftover may be a slice running elsewhere: it stays.
    assert remove_leftovers(tmp_path, older_than_seconds=3600) == 0
    assert remove_leftovers(tmp_path, older_than_seconds=None) == 3
    assert not work.exists() and not profile.exists() and not upload.exists() and kept.exists()
