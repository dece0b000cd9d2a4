"""Inspection reports of printed parts (the Eiger dialect's "scan reports"): one self-contained
HTML page per printed part with the job's timeline, the heaters' temperatures over the print
(kept with each frame the failure detector scored) and as last reported, the detector's graph
over the print and key frames. Rendered in a worker thread on
first request; served through a signed link valid for about an hour."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.database import utcnow
from layerfleet.detection.models import PredictionFrame
from layerfleet.fleet.models import Printer, PrinterEvent
from layerfleet.media import media_root
from layerfleet.prints.models import Print
from layerfleet.scheduling.models import PrintedPart
from layerfleet.signed_links import signed_link

log = logging.getLogger(__name__)

REPORT_LINK_SECONDS = 3600
KEY_FRAMES = 4
MAX_GRAPH_POINTS = 600


def reports_dir(data_dir: Path) -> Path:
    return data_dir / "reports"


def report_path_for(part_uuid: str) -> str:
    return f"/api/v3/files/reports/{part_uuid}.html"


def report_url(part: PrintedPart, secret: str, base_url: str) -> str | None:
    """The report's signed link (about an hour), None until it is generated."""
    if part.report_path is None:
        return None
    return signed_link(secret, base_url, report_path_for(part.uuid), REPORT_LINK_SECONDS)


@dataclass
class ReportData:
    part_uuid: str
    title: str
    build_title: str
    state: str
    notes: str | None
    printer_name: str | None
    timeline: list[tuple[datetime, str]]
    temperatures: dict[str, tuple[Any, Any]]
    points: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the print, normalized_p)
    # heater → [(seconds into the print, actual °C)], from the temperatures kept with scored frames
    heat: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    frames: list[tuple[str, float, bytes]] = field(default_factory=list)  # (caption, p, JPEG), last
    # The print's timelapse poster (JPEG), and its videos as (label, link for a signed-in member).
    poster: bytes | None = None
    videos: list[tuple[str, str]] = field(default_factory=list)


class ReportService:
    """Renders reports on request, one at a time per part, in a worker thread."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], data_dir: Path) -> None:
        self._sessionmaker = sessionmaker
        self._data_dir = data_dir
        self._running: dict[str, asyncio.Task[None]] = {}

    async def request(self, part_uuid: str) -> None:
        if part_uuid in self._running:
            return
        task = asyncio.create_task(self._generate(part_uuid), name=f"report-{part_uuid}")
        self._running[part_uuid] = task
        task.add_done_callback(lambda _t: self._running.pop(part_uuid, None))

    async def wait(self) -> None:
        if self._running:
            await asyncio.wait(set(self._running.values()), timeout=30)

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()

    async def _generate(self, part_uuid: str) -> None:
        try:
            async with self._sessionmaker() as session:
                data = await self._collect(session, part_uuid)
                if data is None:
                    return
                target = reports_dir(self._data_dir) / f"{part_uuid}.html"
                await asyncio.to_thread(_write, target, render(data))
                part = (await session.execute(select(PrintedPart).where(PrintedPart.uuid == part_uuid))) \
                    .unique().scalar_one()
                part.report_path = str(target.relative_to(self._data_dir))
                part.report_generated_at = utcnow()
                await session.commit()
        except Exception:
            log.exception("inspection report of printed part %s failed", part_uuid)

    async def _collect(self, session: AsyncSession, part_uuid: str) -> ReportData | None:
        part = (await session.execute(select(PrintedPart).where(PrintedPart.uuid == part_uuid))) \
            .unique().scalar_one_or_none()
        if part is None:
            return None
        job = part.print_job
        printer = await session.get(Printer, job.printer_id) if job.printer_id is not None else None
        print_ = await session.get(Print, job.print_id) if job.print_id is not None else None
        timeline: list[tuple[datetime, str]] = [(job.created_at, "Job created")]
        if job.queued_at is not None:
            timeline.append((job.queued_at, f"Sent to {printer.name if printer else 'the printer'}"))
        if job.started_at is not None:
            timeline.append((job.started_at, "Print started"))
        points: list[tuple[float, float]] = []
        heat: dict[str, list[tuple[float, float]]] = {}
        frames: list[tuple[str, float, bytes]] = []
        if print_ is not None:
            for event in (await session.execute(select(PrinterEvent).where(
                    PrinterEvent.print_id == print_.id).order_by(PrinterEvent.created_at))).scalars():
                timeline.append((event.created_at, event.event_title or event.event_type))
            if print_.alerted_at is not None:
                timeline.append((print_.alerted_at, "Failure detector alerted"))
            predictions = list((await session.execute(select(PredictionFrame).where(
                PredictionFrame.print_id == print_.id).order_by(PredictionFrame.frame_number))).scalars())
            step = max(1, len(predictions) // MAX_GRAPH_POINTS)
            points = [((f.taken_at - print_.started_at).total_seconds(), f.normalized_p)
                      for f in predictions[::step]]
            for f in predictions[::step]:
                for heater, (actual, _target) in (f.temperatures or {}).items():
                    if actual is not None:
                        heat.setdefault(heater, []).append(((f.taken_at - print_.started_at).total_seconds(), actual))
            frames = await asyncio.to_thread(self._key_frames, predictions)
        if job.ended_at is not None:
            timeline.append((job.ended_at, f"Job {job.state.lower()}"))
        temperatures = _temperatures(printer.status if printer is not None else None)
        timeline.sort(key=lambda entry: entry[0])
        title = part.build_item.part_version.title if part.build_item is not None else job.build.title
        poster, videos = await self._timelapse(print_)
        return ReportData(part.uuid, title, job.build.title, part.state, part.notes,
                          printer.name if printer else None, timeline, temperatures, points, heat, frames,
                          poster, videos)

    async def _timelapse(self, print_: Print | None) -> tuple[bytes | None, list[tuple[str, str]]]:
        if print_ is None:
            return None, []
        poster = None
        if print_.poster_path is not None:
            with contextlib.suppress(OSError):
                poster = await asyncio.to_thread((media_root(self._data_dir) / print_.poster_path).read_bytes)
        videos = [(label, f"/media/{path}") for label, path in (
            ("Timelapse", print_.video_path), ("Timelapse with the detector's boxes", print_.tagged_video_path))
            if path is not None]
        return poster, videos

    def _key_frames(self, predictions: list[PredictionFrame]) -> list[tuple[str, float, bytes]]:
        """The highest-scoring frames, and the last one, in print order."""
        if not predictions:
            return []
        chosen = sorted(predictions, key=lambda f: f.normalized_p, reverse=True)[:KEY_FRAMES - 1]
        if predictions[-1] not in chosen:
            chosen.append(predictions[-1])
        frames = []
        for frame in sorted(chosen, key=lambda f: f.frame_number):
            picture = frame.tagged_image_path or frame.image_path
            if picture is None:  # removed by retention (``watching.retention``)
                continue
            path = media_root(self._data_dir) / picture
            try:
                frames.append((f"Frame {frame.frame_number}, {frame.taken_at:%H:%M:%S} UTC", frame.normalized_p,
                               path.read_bytes()))
            except OSError:
                continue
        return frames


def _temperatures(status: dict[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    reported = (status or {}).get("temperatures")
    if not isinstance(reported, dict):
        return {}
    found = {}
    for name, values in reported.items():
        if isinstance(values, dict):
            found[str(name)] = (values.get("actual"), values.get("target"))
    return found


def _write(target: Path, content: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{time.monotonic_ns()}.tmp")
    partial.write_text(content, encoding="utf-8")
    partial.replace(target)


def _graph(points: list[tuple[float, float]]) -> str:
    if len(points) < 2:
        return "<p>The failure detector did not score this print.</p>"
    width, height = 640, 160
    end = max(t for t, _ in points) or 1.0
    path = " ".join(f"{'M' if n == 0 else 'L'}{t / end * width:.1f},{height - min(1.0, p) * height:.1f}"
                    for n, (t, p) in enumerate(points))
    return (f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-label="Failure likelihood over the print">'
            f'<rect width="{width}" height="{height}" fill="#f6f8fa"/>'
            f'<line x1="0" x2="{width}" y1="{height * (1 - 0.33):.0f}" y2="{height * (1 - 0.33):.0f}" '
            'stroke="#d4a72c" stroke-dasharray="4"/>'
            f'<line x1="0" x2="{width}" y1="{height * (1 - 0.66):.0f}" y2="{height * (1 - 0.66):.0f}" '
            'stroke="#cf222e" stroke-dasharray="4"/>'
            f'<path d="{path}" fill="none" stroke="#0969da" stroke-width="2"/></svg>'
            f"<p>Failure likelihood (normalized_p) over {end / 60:.0f} min of printing; dashed lines: "
            "warning and failure zones.</p>")


HEATER_COLOURS = ("#cf222e", "#0969da", "#1a7f37", "#8250df")


def _temperature_graph(heat: dict[str, list[tuple[float, float]]]) -> str:
    series = {name: points for name, points in heat.items() if len(points) >= 2}
    if not series:
        return ""
    width, height = 640, 160
    end = max(t for points in series.values() for t, _ in points) or 1.0
    top = max(v for points in series.values() for _, v in points) * 1.1 or 1.0
    lines, legend = [], []
    for n, (name, points) in enumerate(sorted(series.items())):
        colour = HEATER_COLOURS[n % len(HEATER_COLOURS)]
        path = " ".join(f"{'M' if i == 0 else 'L'}{t / end * width:.1f},{height - v / top * height:.1f}"
                        for i, (t, v) in enumerate(points))
        lines.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        legend.append(f'<span style="color:{colour}">■</span> {html.escape(name)} '
                      f"(last {points[-1][1]:.0f} °C)")
    return (f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="Temperatures over the print">'
            f'<rect width="{width}" height="{height}" fill="#f6f8fa"/>{"".join(lines)}</svg>'
            f"<p>Temperatures over {end / 60:.0f} min of printing (0–{top:.0f} °C): {', '.join(legend)}.</p>")


def render(data: ReportData) -> str:
    esc = html.escape
    rows = "".join(f"<tr><td>{when:%Y-%m-%d %H:%M:%S} UTC</td><td>{esc(what)}</td></tr>"
                   for when, what in data.timeline)
    temps = "".join(f"<tr><td>{esc(name)}</td><td>{esc(str(actual))} °C</td><td>{esc(str(target))} °C</td></tr>"
                    for name, (actual, target) in data.temperatures.items()) or \
        '<tr><td colspan="3">No temperatures reported.</td></tr>'
    frames = "".join(
        f'<figure><img alt="{esc(caption)}" src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}">'
        f"<figcaption>{esc(caption)} — failure likelihood {p:.2f}</figcaption></figure>"
        for caption, p, jpeg in data.frames) or "<p>No webcam frames were kept for this print.</p>"
    timelapse = "".join(f'<li><a href="{esc(link)}">{esc(label)}</a> (MP4; for members signed in to Layerfleet)</li>'
                        for label, link in data.videos)
    poster = (f'<figure><img alt="Poster of the print\'s timelapse" src="data:image/jpeg;base64,'
              f'{base64.b64encode(data.poster).decode()}"><figcaption>The timelapse\'s poster</figcaption></figure>'
              if data.poster else "")
    video_section = (f"<h2>Timelapse</h2>{poster}<ul>{timelapse}</ul>" if poster or timelapse
                     else "<h2>Timelapse</h2><p>No timelapse of this print.</p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Inspection report: {esc(data.title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1f2328}}
table{{border-collapse:collapse}}td,th{{padding:.25rem .75rem;border-bottom:1px solid #d0d7de;text-align:left}}
figure{{display:inline-block;margin:.5rem}}img{{max-width:18rem;border:1px solid #d0d7de}}</style></head>
<body><h1>Inspection report: {esc(data.title)}</h1>
<p>Printed part <code>{esc(data.part_uuid)}</code> of build “{esc(data.build_title)}”
on {esc(data.printer_name or "an unknown printer")}. State: <strong>{esc(data.state)}</strong>
{f"({esc(data.notes)})" if data.notes else ""}.</p>
<h2>Timeline</h2><table><tr><th>When</th><th>What</th></tr>{rows}</table>
<h2>Temperatures</h2>{_temperature_graph(data.heat)}
<table><caption>Last reported</caption><tr><th>Heater</th><th>Actual</th><th>Target</th></tr>{temps}</table>
<h2>Failure detection</h2>{_graph(data.points)}
<h2>Key frames</h2>{frames}
{video_section}
</body></html>
"""
