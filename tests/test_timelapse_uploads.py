"""Uploaded timelapses: checked by the detector with a live print's rules (alerts, prediction
JSON, tagged video, poster, feedback shots); bad uploads refused with nothing kept."""

from __future__ import annotations

import asyncio
import io
import os
import random
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from conftest import Farm
from layerfleet.config import Settings
from layerfleet.detection.models import Alert, AlertKind, PredictionFrame
from layerfleet.jobs import InProcessJobQueue
from layerfleet.media import media_root
from layerfleet.prints.models import Print, PrintShotFeedback
from layerfleet.simulator.render import Scene, render_frame
from layerfleet.timelapses.jobs import TimelapseJobs
from layerfleet.timelapses.models import TimelapseJob, TimelapseStatus

FRAMES = 70
SPAGHETTI_FROM = 36  # past the detector's first 30 frames, in which it never alerts
SPEED = 300  # print seconds per video second: at 30 fps, each video frame is 10 s of print


def encode_video(frames: int, *, spaghetti_from: int | None = None, size: tuple[int, int] = (640, 480),
                 fps: int = 30, faststart: bool = False) -> bytes:
    """An MP4 of simulator frames; spaghetti from frame ``spaghetti_from`` on."""
    scene = Scene.random(random.Random(7))
    options = {"movflags": "+faststart"} if faststart else {}
    # A file, not memory: the faststart pass reopens what it wrote.
    handle, name = tempfile.mkstemp(suffix=".mp4")
    os.close(handle)
    with av.open(name, mode="w", format="mp4", options=options) as container:
        stream: Any = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = Fraction(1, fps)
        for n in range(frames):
            failing = spaghetti_from is not None and n >= spaghetti_from
            amount = min(1.0, 0.5 + 0.05 * (n - (spaghetti_from or 0))) if failing else 0.0
            image, _ = render_frame(scene, 0.2 + 0.6 * n / frames, spaghetti=amount, seed=11, width=size[0],
                                    height=size[1])
            frame = av.VideoFrame.from_image(image)
            frame.pts = n
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = Path(name).read_bytes()
    os.unlink(name)
    return data


async def run_jobs(farm: Farm, settings: Settings, print_id: int, within: float = 120) -> TimelapseJob:
    jobs = TimelapseJobs(farm.sessionmaker, InProcessJobQueue(), settings, workers=1, sole_worker=True)
    await jobs.start()
    try:
        deadline = time.monotonic() + within
        while True:
            async def look(session: Any) -> TimelapseJob:
                return (await session.execute(select(TimelapseJob).where(
                    TimelapseJob.print_id == print_id))).scalar_one()

            job: TimelapseJob = await farm.run(look)
            if job.status not in (TimelapseStatus.QUEUED.value, TimelapseStatus.IN_PROGRESS.value):
                return job
            assert time.monotonic() < deadline, "the job did not end in time"
            await asyncio.sleep(0.3)
    finally:
        await jobs.close()


async def test_an_uploaded_timelapse_is_checked_like_a_live_print(
        client: httpx.AsyncClient, farm: Farm, settings: Settings) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, name="Old MK3")
    video = encode_video(FRAMES, spaghetti_from=SPAGHETTI_FROM)
    answer = await client.post("/api/v1/prints/upload/", headers=owner.headers,
                               files={"file": ("benchy.mp4", video, "video/mp4")},
                               data={"printer_id": str(printer.id), "speed": str(SPEED)})
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["uploaded_at"] is not None and created["printer"] == printer.id
    assert created["filename"] == "benchy.mp4" and created["video_url"] is None

    job = await run_jobs(farm, settings, created["id"])
    assert job.status == TimelapseStatus.DONE.value, job.error

    async def evidence(session: Any) -> tuple[list[Alert], list[PredictionFrame], int]:
        alerts = list((await session.execute(select(Alert).where(Alert.print_id == created["id"]))).scalars())
        frames = list((await session.execute(select(PredictionFrame).where(
            PredictionFrame.print_id == created["id"]).order_by(PredictionFrame.frame_number))).scalars())
        shots = (await session.execute(select(func.count()).select_from(PrintShotFeedback).where(
            PrintShotFeedback.print_id == created["id"]))).scalar_one()
        return alerts, frames, shots

    alerts, frames, shots = await farm.run(evidence)
    assert len(frames) == FRAMES  # one frame per 10 s of print time
    failures = [a for a in alerts if a.kind == AlertKind.FAILURE.value]
    assert len(failures) == 1 and failures[0].paused is False
    # Frame numbers count from 1; the spaghetti shows from video frame SPAGHETTI_FROM (0-based).
    assert SPAGHETTI_FROM + 1 <= failures[0].details["frame_number"] <= SPAGHETTI_FROM + 12
    assert all(a.details["frame_number"] > SPAGHETTI_FROM for a in alerts)
    assert shots >= 1

    shown = (await client.get(f"/api/v1/prints/{created['id']}/", headers=owner.headers)).json()
    assert shown["alerted_at"] is not None and shown["paused_at"] is None
    for key in ("video_url", "tagged_video_url", "poster_url", "prediction_json_url"):
        assert shown[key], key
        assert (await client.get(shown[key], headers=owner.headers)).status_code == 200
    assert len((await client.get(shown["prediction_json_url"], headers=owner.headers)).json()) == FRAMES
    assert shown["printshotfeedback_set"]
    # The poster of a failed print is its most suspicious frame, one with spaghetti.
    worst = max(frames, key=lambda f: f.p)
    assert worst.frame_number > SPAGHETTI_FROM
    poster = np.asarray(Image.open(io.BytesIO((await client.get(shown["poster_url"], headers=owner.headers)).content)),
                        dtype=float)

    def unlike(frame: PredictionFrame) -> float:
        picture = np.asarray(Image.open(media_root(settings.data_dir) / frame.image_path).convert("RGB"), dtype=float)
        return float(np.abs(picture - poster).mean())

    assert unlike(worst) < 2 < unlike(frames[0])
    # The uploaded file itself is not kept once checked.
    folder = media_root(settings.data_dir) / f"orgs/{owner.user.organization_id}/prints/{created['id']}"
    assert not (folder / "upload").exists() or not any((folder / "upload").iterdir())

    async with httpx.AsyncClient(transport=client._transport, base_url="http://testserver") as other_client:
        stranger = await farm.member(organization="Farm B")
        assert (await other_client.get(shown["tagged_video_url"], headers=stranger.headers)).status_code == 404


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


async def _counts(farm: Farm) -> tuple[int, int]:
    async def count(session: Any) -> tuple[int, int]:
        prints = (await session.execute(select(func.count()).select_from(Print))).scalar_one()
        jobs = (await session.execute(select(func.count()).select_from(TimelapseJob))).scalar_one()
        return prints, jobs

    result: tuple[int, int] = await farm.run(count)
    return result


def _truncated() -> bytes:
    # The index first (as a camera app writes it for streaming), the frames cut off after it.
    whole = encode_video(40, faststart=True)
    return whole[: len(whole) * 2 // 3]


def _truncated_index() -> bytes:
    # The index last (as most recorders write it), cut off with the end of the file.
    whole = encode_video(40)
    return whole[: len(whole) - 200]


def _no_frames() -> bytes:
    handle, name = tempfile.mkstemp(suffix=".mp4")
    os.close(handle)
    with av.open(name, mode="w", format="mp4") as container:
        stream: Any = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        container.start_encoding()  # a header, and not one frame
    data = Path(name).read_bytes()
    os.unlink(name)
    assert data
    return data


BAD_UPLOADS = {
    "not a video": (lambda: b"%PDF-1.7 this is a document, not a video\n" * 50, "not a video"),
    "truncated": (_truncated, "truncated"),
    "truncated before its index": (_truncated_index, "not a video"),
    "no frames": (_no_frames, "no video frames"),
    "absurd resolution": (lambda: encode_video(2, size=(4200, 16)), "4200×16"),
    "empty": (lambda: b"", "empty"),
}


@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
async def test_a_bad_upload_is_refused_and_nothing_is_kept(
        client: httpx.AsyncClient, farm: Farm, settings: Settings, kind: str) -> None:
    owner = await farm.member()
    make, words = BAD_UPLOADS[kind]
    body = make()
    root = media_root(settings.data_dir)
    before_files, before_rows = _files(root), await _counts(farm)
    answer = await client.post("/api/v1/prints/upload/", headers=owner.headers,
                               files={"file": ("print.mp4", body, "video/mp4")}, data={"speed": "100"})
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and words in detail
    assert _files(root) == before_files
    assert await _counts(farm) == before_rows


async def test_an_upload_over_the_limit_is_refused_by_its_length_before_reading(
        client: httpx.AsyncClient, farm: Farm, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    owner = await farm.member()
    monkeypatch.setattr(settings, "timelapse_upload_max_bytes", 200_000)
    read = 0

    async def body() -> Any:
        nonlocal read
        for _ in range(10):
            read += 1
            yield os.urandom(100_000)

    root = media_root(settings.data_dir)
    before_files, before_rows = _files(root), await _counts(farm)
    boundary = "timelapse-boundary"
    answer = await client.post(
        "/api/v1/prints/upload/", content=body(),
        headers={**owner.headers, "Content-Type": f"multipart/form-data; boundary={boundary}",
                 "Content-Length": str(1_000_000 + 200)})
    assert answer.status_code == 400 and "larger than" in answer.json()["detail"]
    assert read <= 1  # refused on the header: the body was never read (a first chunk may be primed)
    assert _files(root) == before_files and await _counts(farm) == before_rows
    assert (await client.post("/api/v1/prints/upload/", files={"file": ("a.mp4", b"x")})).status_code == 401


async def test_uploading_needs_an_operator_and_a_printer_of_ones_own(
        client: httpx.AsyncClient, farm: Farm) -> None:
    from layerfleet.accounts.models import Role

    viewer = await farm.member(Role.VIEWER)
    video = encode_video(3)
    refused = await client.post("/api/v1/prints/upload/", headers=viewer.headers,
                                files={"file": ("a.mp4", video, "video/mp4")})
    assert refused.status_code == 403
    owner = await farm.member(organization="Farm C")
    other = await farm.member(organization="Farm D")
    theirs = await farm.printer(other)
    before = await _counts(farm)
    wrong = await client.post("/api/v1/prints/upload/", headers=owner.headers,
                              files={"file": ("a.mp4", video, "video/mp4")}, data={"printer_id": str(theirs.id)})
    assert wrong.status_code == 400 and "printer_id" in wrong.json()
    assert await _counts(farm) == before
