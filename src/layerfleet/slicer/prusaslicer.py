"""Running PrusaSlicer's command line and reading what it reports.

``slice_stl`` runs ``prusa-slicer --export-gcode`` as an asyncio subprocess, so a worker's event
loop keeps serving while a part slices; it kills the slicer on cancel or timeout. PrusaSlicer's
CLI needs no display when it is given an action such as ``--export-gcode``.

The G-code is written into a private temporary directory beside ``output_path`` and moved into
place only after it was read back successfully, so a failed, canceled or timed-out slice leaves
neither a half-written G-code file nor PrusaSlicer's own ``.tmp`` files behind.

The estimates come from the comments PrusaSlicer writes at the end of the G-code, for example::

    ; filament used [mm] = 1237.74
    ; filament used [cm3] = 2.98
    ; filament used [g] = 3.69
    ; total filament used [g] = 3.69
    ; estimated printing time (normal mode) = 21m 49s
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from layerfleet.errors import Conflict, DomainError

ENVIRONMENT_VARIABLE = "LAYERFLEET_PRUSASLICER"
DEFAULT_PROFILE = Path(__file__).resolve().parent / "profiles" / "default.ini"

# Names the executable has in Debian's package, in PrusaSlicer's own Linux builds and on Windows.
_EXECUTABLE_NAMES = ("prusa-slicer", "PrusaSlicer", "prusa-slicer-console")

# Options a caller may not pass in ``extra_options``: they would change what is read or written,
# where, or (post-processing) run arbitrary programs.
_FORBIDDEN_OPTIONS = frozenset(
    {
        "config-compatibility", "datadir", "g", "gcode", "gcodeviewer", "help", "help-fff", "help-sla",
        "ignore-nonexistent-config", "info", "load", "loglevel", "o", "output", "post-process", "s", "save",
        "single-instance", "sla", "slice",
    }
)
_OPTION = re.compile(r"--(?:no-)?([a-z0-9][a-z0-9-]*)(?:=.*)?", re.DOTALL)

_MAX_MESSAGE_CHARS = 1000

# How much of the G-code's end is read for the summary comments: they sit just before
# PrusaSlicer's config dump (about 9 KB with the default profile; long custom G-code makes it larger).
_TAIL_BYTES = 256 * 1024
_MAX_TAIL_BYTES = 16 * 1024 * 1024
_SCAN_CHUNK_BYTES = 4 * 1024 * 1024


class SlicerError(DomainError):
    """Slicing failed. ``message`` is PrusaSlicer's own explanation, cleaned up for people."""

    def __init__(self, message: str, *, exit_code: int | None = None, output: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.output = output  # the slicer's full stdout and stderr, for logs


class SlicerNotFound(SlicerError):
    """PrusaSlicer is not installed (or ``LAYERFLEET_PRUSASLICER`` points nowhere)."""


class SlicerTimeout(SlicerError):
    """PrusaSlicer took longer than the timeout and was killed."""


class SliceCanceled(Conflict):
    """The slice was canceled through its ``cancel`` event and PrusaSlicer was killed."""


@dataclass(frozen=True)
class GcodeSummary:
    """What PrusaSlicer's comments in a G-code file say about the print."""

    estimated_print_seconds: int
    filament_mm: float
    filament_cm3: float
    filament_g: float | None  # None when the profile has no filament density
    layers: int | None
    top_z_mm: float | None  # height of the last layer, from the ";Z:" comments
    max_print_height_mm: float | None  # the printer's build height from the config dump
    slicer_version: str | None


@dataclass(frozen=True)
class SliceResult:
    estimated_print_seconds: int
    filament_mm: float
    filament_cm3: float
    filament_g: float | None
    layers: int | None
    gcode_path: Path
    slicer_version: str | None
    slicing_seconds: float


def find_prusaslicer() -> Path | None:
    """The PrusaSlicer executable: ``$LAYERFLEET_PRUSASLICER`` if set (a path or a command name),
    otherwise the first of PrusaSlicer's usual names on ``PATH``."""
    configured = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    candidates = (configured,) if configured else _EXECUTABLE_NAMES
    for candidate in candidates:
        found = shutil.which(os.path.expanduser(candidate))
        if found:
            return Path(found)
    return None


async def slice_stl(
    stl_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    profile_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    timeout: float = 600,  # noqa: ASYNC109 - on timeout the slicer must be killed, not just abandoned
    cancel: asyncio.Event | None = None,
    extra_options: Sequence[str] = (),
    executable: str | os.PathLike[str] | None = None,
) -> SliceResult:
    """Slice ``stl_path`` with the PrusaSlicer profile ``profile_path`` into ``output_path``.

    Several STL paths (a build's plate; one path per part instance) are arranged on the bed by
    PrusaSlicer and sliced into one G-code file.

    ``extra_options`` are PrusaSlicer config options written ``--name=value`` or ``--flag``
    (e.g. ``--fill-density=30%``); they override the profile. Raises ``SlicerError`` (with
    PrusaSlicer's message), ``SlicerTimeout``, ``SliceCanceled`` or ``SlicerNotFound``.
    """
    started = time.monotonic()
    options = _checked_options(extra_options)
    if cancel is not None and cancel.is_set():
        raise SliceCanceled("The slice was canceled.")
    program = Path(executable) if executable is not None else find_prusaslicer()
    if program is None:
        raise SlicerNotFound(f"PrusaSlicer is not installed: no prusa-slicer on PATH and {ENVIRONMENT_VARIABLE} "
                             "is not set (Debian: apt-get install prusa-slicer).")
    stls = [stl_path] if isinstance(stl_path, str | os.PathLike) else list(stl_path)
    if not stls:
        raise SlicerError("Nothing to slice: no STL file given.")
    job = await asyncio.to_thread(_SliceJob.prepare, [Path(p) for p in stls], Path(profile_path),
                                  Path(output_path))
    try:
        command = [
            str(program),
            # Level 1 keeps errors in the log but drops PrusaSlicer's informational chatter.
            "--loglevel", "1",
            "--load", str(job.profile),
            *options,
            # A profile's post_process scripts would run any program as this server; clear them.
            "--post-process", "",
            # Several objects: arranged on the bed as one plate (without it PrusaSlicer exports
            # only the first object's G-code).
            *(["--merge"] if len(job.stls) > 1 else []),
            "--export-gcode",
            "--output", str(job.partial),
            *(str(stl) for stl in job.stls),
        ]
        exit_code, stdout, stderr = await _run(command, time_limit=timeout, cancel=cancel)
        summary = await asyncio.to_thread(job.finish, exit_code, stdout, stderr)
    finally:
        await asyncio.to_thread(shutil.rmtree, job.work_dir, True)
    return SliceResult(
        estimated_print_seconds=summary.estimated_print_seconds,
        filament_mm=summary.filament_mm,
        filament_cm3=summary.filament_cm3,
        filament_g=summary.filament_g,
        layers=summary.layers,
        gcode_path=job.output,
        slicer_version=summary.slicer_version,
        slicing_seconds=time.monotonic() - started,
    )


@dataclass(frozen=True)
class _SliceJob:
    """The file-system side of one slice (run in a thread: these are blocking calls)."""

    stls: tuple[Path, ...]
    profile: Path
    output: Path
    work_dir: Path  # private directory beside the output, removed after the slice

    @property
    def partial(self) -> Path:
        return self.work_dir / "output.gcode"

    @classmethod
    def prepare(cls, stls: list[Path], profile: Path, output: Path) -> _SliceJob:
        for path, what in (*((stl, "STL file") for stl in stls), (profile, "slicer profile")):
            if not path.is_file():
                raise SlicerError(f"The {what} {path.name} does not exist.")
        output = output.resolve()
        work_dir = Path(tempfile.mkdtemp(prefix=".slicing-", dir=output.parent))
        return cls(tuple(stl.resolve() for stl in stls), profile.resolve(), output, work_dir)

    def finish(self, exit_code: int, stdout: str, stderr: str) -> GcodeSummary:
        """Check the slicer's outcome and move the G-code into place (same directory, so it
        appears whole or not at all)."""
        if exit_code != 0 or not self.partial.is_file():
            paths = {**{str(stl): stl.name for stl in self.stls}, str(self.partial): self.output.name}
            message = slicer_message(stderr, stdout, replacements=paths)
            raise SlicerError(message or _exit_description(exit_code), exit_code=exit_code,
                              output=stderr + stdout)
        summary = parse_gcode_summary(self.partial)
        _check_height(summary)
        self.partial.replace(self.output)
        return summary


def _checked_options(extra_options: Sequence[str]) -> list[str]:
    options = []
    for option in extra_options:
        match = _OPTION.fullmatch(option)
        if match is None:
            raise ValueError(f"Slicer option {option!r} must be written --name=value or --flag")
        name = match.group(1)
        if name in _FORBIDDEN_OPTIONS or name.startswith("export-"):
            raise ValueError(f"Slicer option --{name} is not allowed")
        options.append(option)
    return options


def _check_height(summary: GcodeSummary) -> None:
    # PrusaSlicer refuses parts that overhang the bed but (2.5) happily slices parts taller than
    # the printer's max_print_height, which would drive the nozzle into the gantry's end stop.
    if summary.top_z_mm is None or summary.max_print_height_mm is None or summary.max_print_height_mm <= 0:
        return
    if summary.top_z_mm > summary.max_print_height_mm + 1e-6:
        raise SlicerError(f"The object is too tall for the printer: it is {summary.top_z_mm:g} mm high, "
                          f"the maximum print height is {summary.max_print_height_mm:g} mm.")


async def _run(command: list[str], *, time_limit: float, cancel: asyncio.Event | None) -> tuple[int, str, str]:
    """Run the slicer; return its exit code, stdout and stderr. Kills it on cancel or timeout."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Its own process group, so a kill also reaches anything it started (e.g. a wrapper
        # script given as LAYERFLEET_PRUSASLICER, or xvfb-run).
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    finished = asyncio.ensure_future(process.communicate())
    canceled = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    try:
        waiting: set[asyncio.Future[Any]] = {finished} if canceled is None else {finished, canceled}
        await asyncio.wait(waiting, timeout=time_limit, return_when=asyncio.FIRST_COMPLETED)
        if not finished.done():
            _kill(process)
            await finished
            if canceled is not None and canceled.done():
                raise SliceCanceled("The slice was canceled.")
            raise SlicerTimeout(f"PrusaSlicer did not finish within {time_limit:g} seconds.")
        stdout, stderr = finished.result()
    except BaseException:
        # Also when the task running this is itself canceled: never leave the slicer running.
        if process.returncode is None:
            _kill(process)
            with contextlib.suppress(BaseException):
                await asyncio.shield(finished)
        raise
    finally:
        if canceled is not None:
            canceled.cancel()
        if not finished.done():
            finished.cancel()
    assert process.returncode is not None
    return process.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")


def _die_with_parent() -> None:
    """In the slicer, before it starts: when our process dies (even by ``kill -9``), the kernel
    kills the slicer too, so no slice outlives its worker and runs again beside its retry."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _exit_description(exit_code: int) -> str:
    if exit_code < 0:
        with contextlib.suppress(ValueError):
            return f"PrusaSlicer crashed ({signal.Signals(-exit_code).name})."
    return f"PrusaSlicer failed with exit code {exit_code} and no message."


# "[2026-11-21 23:34:36.158095] [0x00007fd10b1d3d80] [error]   stl_open_count_facets: The input is ..."
_LOG_LINE = re.compile(r"^\[[^\]]*\] \[[^\]]*\] \[(?P<level>\w+)\]\s*(?P<text>.*)$")
_FUNCTION_PREFIX = re.compile(r"^[a-z_][a-z0-9_]*: (?=[A-Z])")  # "stl_open_count_facets: The input ..."
_UNCAUGHT = re.compile(r"^terminate called after throwing an instance of ")
_WHAT = re.compile(r"^what\(\):\s*")
_ERROR_PREFIX = re.compile(r"^error:\s*", re.IGNORECASE)


def slicer_message(stderr: str, stdout: str = "", *, replacements: dict[str, str] | None = None) -> str:
    """PrusaSlicer's error text from its output, without log decoration.

    Its messages come in three shapes: plain lines on stderr ("No layers were detected. ...",
    "Unknown option --x"), an uncaught exception on stderr ("terminate called ...", then
    "what():  Objects could not fit on the bed"), and log lines on stdout ("[time] [thread]
    [error]   function: text"). The rest of stdout (progress, or the usage text after a bad
    option) is left out. Server paths are replaced by the names in ``replacements`` so the
    message can be shown to users.
    """
    lines: list[str] = []
    candidates = [line.strip() for line in stderr.splitlines()]
    for line in stdout.splitlines():
        log = _LOG_LINE.match(line.strip())
        if log is not None and log.group("level").lower() in {"error", "fatal"}:
            candidates.append(_FUNCTION_PREFIX.sub("", log.group("text").strip()))
    for line in candidates:
        if not line or _UNCAUGHT.match(line) or _LOG_LINE.match(line):
            continue
        line = _ERROR_PREFIX.sub("", _WHAT.sub("", line))
        for path, name in (replacements or {}).items():
            line = line.replace(path, name)
        if line and line not in lines:
            lines.append(line)
    message = " ".join(line if line[-1] in ".!?" else line + "." for line in lines)
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 1] + "…"
    return message


# --- Reading the G-code ------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+)\s*([dhms])")
_DURATION = re.compile(r"\s*(?:\d+\s*[dhms]\s*)+")
_SECONDS_PER_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_COMMENT = re.compile(r"^;\s*(?P<key>[^=\n]+?)\s*=\s*(?P<value>[^\n]*?)\s*$", re.MULTILINE)
_VERSION = re.compile(rb"^; generated by PrusaSlicer (\S+)", re.MULTILINE)
_BINARY_GCODE_MAGIC = b"GCDE"  # PrusaSlicer 2.7+'s .bgcode format


def parse_duration(text: str) -> int:
    """Seconds in PrusaSlicer's duration format: "1d 2h 3m 4s", "13m 45s", "59s"."""
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a PrusaSlicer duration: {text!r}")
    return sum(int(amount) * _SECONDS_PER_UNIT[unit] for amount, unit in _DURATION_PART.findall(text))


def parse_gcode_summary(path: str | os.PathLike[str]) -> GcodeSummary:
    """Read PrusaSlicer's summary comments from a G-code file.

    Only the file's start (version) and end (estimates, config) are read, plus, for PrusaSlicer
    versions before 2.6 that write no "; total layers count", a fast byte count of the
    ";LAYER_CHANGE" markers. Raises ``SlicerError`` when the estimates are missing.
    """
    path = Path(path)
    with path.open("rb") as gcode:
        size = gcode.seek(0, os.SEEK_END)
        gcode.seek(0)
        head = gcode.read(4096)
        if head.startswith(_BINARY_GCODE_MAGIC):
            raise SlicerError("The profile makes PrusaSlicer write binary G-code (binary_gcode = 1); "
                              "Layerfleet needs text G-code.")
        version_match = _VERSION.search(head)
        comments = _tail_comments(gcode, size)
        layers = _int_or_none(comments.get("total layers count"))
        if layers is None:
            layers = _count(gcode, b"\n;LAYER_CHANGE\n") or None
        top_z = _last_layer_z(gcode, size)

    time_text = comments.get("estimated printing time (normal mode)")
    filament_mm = comments.get("filament used [mm]")
    filament_cm3 = comments.get("filament used [cm3]")
    if time_text is None or filament_mm is None or filament_cm3 is None:
        raise SlicerError(f"{path.name} has no PrusaSlicer summary (estimated printing time and filament used).")
    # Weight is only meaningful with a filament density; without one PrusaSlicer writes only a
    # "total ... = 0.00" line.
    filament_g = None
    if "filament used [g]" in comments:
        filament_g = _sum_of(comments.get("total filament used [g]") or comments["filament used [g]"])
    return GcodeSummary(
        estimated_print_seconds=parse_duration(time_text),
        filament_mm=_sum_of(filament_mm),
        filament_cm3=_sum_of(filament_cm3),
        filament_g=filament_g,
        layers=layers,
        top_z_mm=top_z,
        max_print_height_mm=_float_or_none(comments.get("max_print_height")),
        slicer_version=version_match.group(1).decode("ascii", "replace") if version_match else None,
    )


def _tail_comments(gcode: BinaryIO, size: int) -> dict[str, str]:
    """The "; key = value" comments in the file's last part, which holds the summary and config dump."""
    tail_bytes = _TAIL_BYTES
    while True:
        start = max(0, size - tail_bytes)
        gcode.seek(start)
        tail = gcode.read(size - start).decode("utf-8", "replace")
        if start > 0:
            tail = tail[tail.find("\n") + 1:]  # drop the partial first line
        comments: dict[str, str] = {}
        for match in _COMMENT.finditer(tail):
            comments.setdefault(match.group("key"), match.group("value"))
        if "estimated printing time (normal mode)" in comments or start == 0 or tail_bytes >= _MAX_TAIL_BYTES:
            return comments
        tail_bytes *= 4


def _count(gcode: BinaryIO, marker: bytes) -> int:
    """How often ``marker`` occurs in the file, read in chunks (overlapping by len(marker) - 1)."""
    gcode.seek(0)
    count = 0
    carry = b""
    while block := gcode.read(_SCAN_CHUNK_BYTES):
        data = carry + block
        count += data.count(marker)
        # Keep the last len(marker) - 1 bytes: they cannot hold a whole match already counted.
        carry = data[-(len(marker) - 1):]
    return count


def _last_layer_z(gcode: BinaryIO, size: int) -> float | None:
    """The Z of the last ";Z:" comment, found by reading backwards from the end."""
    end = size
    carry = b""
    while end > 0:
        start = max(0, end - _SCAN_CHUNK_BYTES)
        gcode.seek(start)
        data = gcode.read(end - start) + carry
        position = data.rfind(b"\n;Z:")
        if position >= 0:
            line_end = data.find(b"\n", position + 1)
            if line_end >= 0:
                return _float_or_none(data[position + 4: line_end].decode("ascii", "replace"))
        carry = data[:64]  # a marker line cut at the chunk border is completed by the next read
        end = start
    return None


def _sum_of(value: str) -> float:
    # Multi-extruder printers list one value per extruder: "1237.74, 52.10".
    return round(sum(float(part) for part in value.split(",") if part.strip()), 6)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
