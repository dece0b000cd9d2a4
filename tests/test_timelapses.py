"""Video evidence: a print's frames kept, compiled into a timelapse, a tagged timelapse and a
poster at its end; served with byte ranges to its organization only; played in Chromium."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from browser import browser, page, sign_in  # noqa: F401  (fixtures)
from conftest import Farm
from layerfleet import media
from layerfleet.config import Settings
from layerfleet.database import utcnow
from layerfleet.media import media_root
from layerfleet.printer_agent.runner import AgentRunner, Cadence, Stopped
from layerfleet.prints.models import Print
from layerfleet.simulator.printer import SimulatedCamera, SimulatedPrinter, SimulationOptions
from layerfleet.simulator.render import Scene, render_frame
from layerfleet.timelapses import service as timelapses
from layerfleet.timelapses.jobs import TimelapseJobs
from layerfleet.timelapses.models import TimelapseJob, TimelapseStatus
from live_server import LiveServer

FAST = Cadence(idle_status=1.0, active_status=0.3, watched_picture=0.3, unwatched_picture=0.3,
               min_backoff=0.1, max_backoff=0.5, http_timeout=5.0)
FAILING_PRINT = SimulationOptions(speed=10.0, fail_rate=1.0, min_print_minutes=4, max_print_minutes=4,
                                  idle_seconds=(3600.0, 3600.0), heating_rate=20.0, first_print_preheated=True)
VIDEO_WITHIN = 90.0


async def until(check: Any, within: float) -> Any:
    deadline = time.monotonic() + within
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s")
        await asyncio.sleep(0.3)
    return result


def timelapse_settings(settings: Settings, data_dir: Path, **changes: Any) -> Settings:
    """The test database, a data folder of the test's own, quick scoring and no minimum length."""
    return settings.model_copy(update={
        "data_dir": data_dir, "detection_enabled": True, "detection_interval_seconds": 0.2,
        "unlimited_detection_hours": True, "timelapse_frame_interval_seconds": 0.2,
        "timelapse_min_finished_seconds": 0.0, "timelapse_min_cancelled_seconds": 0.0,
        "timelapse_stale_seconds": 3.0, **changes})


@pytest.fixture
def video_settings(settings: Settings, tmp_path: Path) -> Settings:
    return timelapse_settings(settings, tmp_path / "data")


@pytest.fixture
def video_server(video_settings: Settings, app: Any) -> Iterator[str]:
    # `app` too: its fixture empties the tables after the test.
    with LiveServer(video_settings) as url:
        yield url


def decoded_frames(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def box_of(record: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """The most confident box of a prediction_json record, as x0, y0, x1, y1."""
    boxes = [d for d in record["detections"] if d[1] > 0.2]
    if not boxes:
        return None
    xc, yc, w, h = max(boxes, key=lambda d: d[1])[2]
    return xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2


def redness(frame: np.ndarray, xs: slice, ys: slice) -> float:
    region = frame[ys, xs].astype(float)
    return float((region[..., 0] - (region[..., 1] + region[..., 2]) / 2).mean())


async def test_a_picture_stored_as_another_with_the_same_bytes_is_a_link_and_counted_once(tmp_path: Path) -> None:
    kept, scored = "orgs/1/prints/5/video-frames/0000000000001.jpg", "orgs/1/prints/5/frames/000001.jpg"
    await media.store_media(tmp_path, kept, b"picture")
    await media.store_media(tmp_path, scored, b"picture", same_as=kept)
    root = media_root(tmp_path)
    assert (root / scored).stat().st_ino == (root / kept).stat().st_ino
    assert timelapses.folder_bytes(root / "orgs/1/prints") == len(b"picture")
    # Other bytes, or no file to link: a copy of its own.
    await media.store_media(tmp_path, "orgs/1/prints/5/frames/000002.jpg", b"another", same_as=kept)
    await media.store_media(tmp_path, "orgs/1/prints/5/frames/000003.jpg", b"third", same_as="orgs/1/nothing.jpg")
    assert (root / "orgs/1/prints/5/frames/000002.jpg").read_bytes() == b"another"
    assert (root / "orgs/1/prints/5/frames/000002.jpg").stat().st_nlink == 1
    assert timelapses.folder_bytes(root / "orgs/1/prints") == len(b"picture" + b"another" + b"third")
    # Removing either name leaves the other whole (the video's frames go once it is made).
    await media.remove_media(tmp_path, kept)
    assert (root / scored).read_bytes() == b"picture" and not list(root.rglob("*.part"))


async def test_a_simulated_print_ends_with_both_videos_a_poster_and_ranges(
        video_server: str, video_settings: Settings, farm: Farm) -> None:
    owner = await farm.member()
    stranger = await farm.member(organization="Farm B")
    printer = await farm.printer(owner, name="Sim")
    simulated = SimulatedPrinter("Sim", FAILING_PRINT, seed=21)
    simulated.idle_left = 0.5
    runner = AgentRunner(video_server, printer.auth_token, simulated, SimulatedCamera(simulated), cadence=FAST)
    task = asyncio.create_task(runner.run())
    try:
        async with httpx.AsyncClient(base_url=video_server, headers=owner.headers, timeout=20) as api:
            async def the_print() -> dict[str, Any] | None:
                found = (await api.get("/api/v1/prints/")).json()
                return found[0] if found else None

            started = await until(the_print, 30)

            async def failing_frames() -> bool:
                records = (await api.get(f"/api/v1/prints/{started['id']}/prediction_json")).json()
                return sum(1 for r in records if box_of(r)) >= 3

            await until(failing_frames, 60)
            # A scored frame that is also the picture kept for the video is one file with two names.
            folder = media_root(video_settings.data_dir) / media.print_folder(printer.organization_id, started["id"])
            kept = {p.stat().st_ino for p in (folder / media.KEPT_FRAMES).glob("*.jpg")}
            scored = [p.stat() for p in (folder / "frames").glob("*.jpg")]
            assert kept and scored
            assert any(s.st_ino in kept and s.st_nlink == 2 for s in scored)
            # Paused by the detector, or still printing: cancelling ends it either way.
            current = (await api.get(f"/api/v1/prints/{started['id']}/")).json()
            if current["finished_at"] is None and current["cancelled_at"] is None:
                assert (await api.post(f"/api/v1/printers/{printer.id}/cancel_print/")).json()["succeeded"]
            ended_at = time.monotonic()

            async def compiled() -> dict[str, Any] | None:
                found = (await api.get(f"/api/v1/prints/{started['id']}/")).json()
                return found if found["tagged_video_url"] else None

            done = await until(compiled, VIDEO_WITHIN)
            assert time.monotonic() - ended_at < VIDEO_WITHIN
            assert done["video_url"].startswith(f"{video_server}/media/orgs/")
            assert done["poster_url"].endswith(".jpg") and done["prediction_json_url"].endswith(".json")

            video = (await api.get(done["video_url"])).content
            tagged = (await api.get(done["tagged_video_url"])).content
            poster = await api.get(done["poster_url"])
            assert poster.status_code == 200 and Image.open(io.BytesIO(poster.content)).format == "JPEG"
            stored = (await api.get(done["prediction_json_url"])).json()
            assert stored == (await api.get(f"/api/v1/prints/{started['id']}/prediction_json")).json()

            # Byte ranges: a browser seeks with them.
            head = await api.get(done["video_url"], headers={"Range": "bytes=100-1099"})
            assert head.status_code == 206 and head.content == video[100:1100]
            assert head.headers["content-range"] == f"bytes 100-1099/{len(video)}"
            assert head.headers["accept-ranges"] == "bytes"
            tail = await api.get(done["video_url"], headers={"Range": "bytes=-64"})
            assert tail.status_code == 206 and tail.content == video[-64:]
            beyond = await api.get(done["video_url"], headers={"Range": f"bytes={len(video)}-"})
            assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(video)}"

        async with httpx.AsyncClient(base_url=video_server, headers=stranger.headers, timeout=20) as other:
            for url in (done["video_url"], done["tagged_video_url"], done["poster_url"]):
                assert (await other.get(url)).status_code == 404
                assert (await other.get(url, headers={"Range": "bytes=0-10"})).status_code == 404
            assert (await other.get(f"/api/v1/prints/{started['id']}/")).status_code == 404
        async with httpx.AsyncClient(timeout=20) as anonymous:
            assert (await anonymous.get(done["video_url"])).status_code == 401
    finally:
        runner.stop()
        assert await asyncio.wait_for(task, 30) is Stopped.REQUESTED

    # The tagged video's boxes sit where prediction_json says.
    plain_frames, tagged_frames = decoded_frames(video), decoded_frames(tagged)
    assert len(plain_frames) == len(tagged_frames) >= 10
    times = json.loads((media_root(video_settings.data_dir) / done["video_url"].split("/media/", 1)[1])
                       .with_name(timelapses.FRAME_TIMES).read_text())
    assert len(times) == len(plain_frames)
    by_time = {round(_epoch(r["time"]), 2): r for r in stored}
    checked = 0
    for index, moment in enumerate(times):
        record = by_time.get(round(moment, 2))
        box = box_of(record) if record else None
        if box is None:
            continue
        x0, y0, x1, y1 = (round(v) for v in box)
        height, width = plain_frames[index].shape[:2]
        if not (x0 >= 4 and x1 < width - 4 and y0 >= 4 and y1 < height - 4 and y1 - y0 > 20 and x1 - x0 > 20):
            continue
        edge = (slice(x0, x0 + 2), slice(y0 + 6, y1 - 6))  # the box's left edge
        inside = (slice(x0 + 8, x0 + 12), slice(y0 + 6, y1 - 6))  # a little within it
        assert redness(tagged_frames[index], *edge) > redness(plain_frames[index], *edge) + 40
        assert abs(redness(tagged_frames[index], *inside) - redness(plain_frames[index], *inside)) < 25
        checked += 1
    assert checked >= 2


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# --- a print with frames, compiled by the job (no agent) -----------------------------------------

async def print_with_frames(farm: Farm, owner: Any, data_dir: Path, count: int, *, size: tuple[int, int] = (320, 240),
                            spaghetti_from: int | None = None) -> Print:
    printer = await farm.printer(owner, name="Framed")
    start = utcnow() - timedelta(hours=1)
    # An hour long, past the shortest print that gets a video (10 min).
    print_ = await farm.print(printer, started_at=start, finished_at=start + timedelta(hours=1))
    # Ids start over after each test on PostgreSQL: an earlier test's files must not join in.
    timelapses.remove_print_folder(data_dir, print_.organization_id, print_.id)
    scene = Scene.random(__import__("random").Random(3))
    for n in range(count):
        image, _ = render_frame(scene, n / count, spaghetti=1.0 if spaghetti_from is not None and n >= spaghetti_from
                                else 0.0, seed=5, width=size[0], height=size[1])
        path = media_root(data_dir) / media.kept_frame_path(print_.organization_id, print_.id,
                                                                  start + timedelta(seconds=10 * n))
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, "JPEG", quality=85)
    return print_


async def compile_now(farm: Farm, settings: Settings, print_: Print) -> TimelapseJob:
    """Ask for the print's videos as its end does and run the job to its end."""
    from layerfleet.jobs import InProcessJobQueue

    async def ask(session: Any) -> None:
        found = await session.get(Print, print_.id)
        await timelapses.print_ended(session, found)
        await session.commit()

    await farm.run(ask)
    jobs = TimelapseJobs(farm.sessionmaker, InProcessJobQueue(), settings, workers=1, sole_worker=True)
    await jobs.start()
    try:
        async def finished() -> TimelapseJob | None:
            from sqlalchemy import select

            async def look(session: Any) -> TimelapseJob | None:
                job = (await session.execute(select(TimelapseJob).where(
                    TimelapseJob.print_id == print_.id))).scalar_one()
                return job if job.status not in (TimelapseStatus.QUEUED.value,
                                                 TimelapseStatus.IN_PROGRESS.value) else None

            return await farm.run(look)

        return await until(finished, 60)
    finally:
        await jobs.close()


async def test_the_print_page_plays_the_timelapse_and_seeks_with_ranges(
        live_url: str, farm: Farm, settings: Settings, page: Any) -> None:  # noqa: F811 (the fixture)
    owner = await farm.member()
    print_ = await print_with_frames(farm, owner, settings.data_dir, 90)
    job = await compile_now(farm, settings, print_)
    assert job.status == TimelapseStatus.DONE.value, job.error
    ranges: list[int] = []
    page.on("response", lambda response: ranges.append(response.status)
            if "/media/" in response.url and response.url.endswith(".mp4") else None)
    await sign_in(page, live_url, owner.user.email, then=f"/prints/{print_.id}/")
    video = page.locator("video#timelapse")
    await video.wait_for()
    await page.wait_for_function("document.querySelector('video#timelapse').readyState >= 2", timeout=20_000)
    duration = await video.evaluate("v => v.duration")
    assert duration == pytest.approx(90 / 30, abs=0.1)
    await video.evaluate("v => new Promise(done => { v.addEventListener('seeked', done, {once: true}); "
                         "v.currentTime = 2.5; })")
    assert await video.evaluate("v => v.currentTime") == pytest.approx(2.5, abs=0.05)
    await video.evaluate("v => v.play()")
    await page.wait_for_function("document.querySelector('video#timelapse').currentTime > 2.6", timeout=10_000)
    assert 206 in ranges
    poster = await video.get_attribute("poster")
    assert poster is not None and poster.endswith("poster.jpg")


async def test_the_inspection_report_shows_the_poster_and_links_the_videos(
        farm: Farm, settings: Settings, tmp_path: Path) -> None:
    from layerfleet.scheduling.reports import ReportData, ReportService, render

    owner = await farm.member()
    print_ = await print_with_frames(farm, owner, settings.data_dir, 8)
    assert (await compile_now(farm, settings, print_)).status == TimelapseStatus.DONE.value
    compiled = await farm.run(lambda session: session.get(Print, print_.id))
    poster, videos = await ReportService(farm.sessionmaker, settings.data_dir)._timelapse(compiled)
    assert poster == (media_root(settings.data_dir) / compiled.poster_path).read_bytes()
    assert [link for _, link in videos] == [f"/media/{compiled.video_path}", f"/media/{compiled.tagged_video_path}"]
    report = render(ReportData("part", "Bracket", "Build", "PRINTED", None, "MK4", [], {}, poster=poster,
                               videos=videos))
    assert "data:image/jpeg;base64," in report.split("<h2>Timelapse</h2>", 1)[1]
    assert f'href="/media/{compiled.tagged_video_path}"' in report
    empty = render(ReportData("part", "Bracket", "Build", "PRINTED", None, "MK4", [], {}))
    assert "No timelapse of this print." in empty


async def test_pictures_are_kept_for_the_video_at_the_set_rate_and_a_full_disk_stops_it(
        farm: Farm, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from sqlalchemy import select

    from layerfleet.fleet.models import PrinterEvent
    from layerfleet.timelapses.recording import DISK_FULL_TITLE, FrameRecorder

    owner = await farm.member()
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, current=True)
    data_dir = tmp_path / "data"
    recorder = FrameRecorder(farm.sessionmaker, data_dir, interval_seconds=10, min_free_bytes=0)
    start = utcnow()
    picture = b"\xff\xd8 a JPEG \xff\xd9"
    kept = [await recorder.keep(printer.id, picture, start + timedelta(seconds=s)) for s in (0, 4, 9, 10, 15, 21)]
    # One per 10 s, whether the detector scores them or not.
    assert [path is not None for path in kept] == [True, False, False, True, False, True]
    frames = timelapses.kept_frames(data_dir, print_.organization_id, print_.id)
    assert [round(f.taken_at.timestamp() * 1000) for f in frames] == \
        [int((start + timedelta(seconds=s)).timestamp() * 1000) for s in (0, 10, 21)]  # named by the millisecond
    assert frames[0].path.read_bytes() == picture

    full = FrameRecorder(farm.sessionmaker, data_dir, interval_seconds=10, min_free_bytes=2**62)
    with caplog.at_level("WARNING"):
        assert await full.keep(printer.id, picture, start + timedelta(seconds=40)) is None
        assert await full.keep(printer.id, picture, start + timedelta(seconds=60)) is None
    assert "timelapse recording of print" in caplog.text and "disk is full" in caplog.text

    async def look(session: Any) -> tuple[Print, list[PrinterEvent]]:
        found = await session.get(Print, print_.id)
        events = list((await session.execute(select(PrinterEvent).where(
            PrinterEvent.print_id == print_.id))).scalars())
        return found, events

    stopped, events = await farm.run(look)
    assert stopped.timelapse_stopped_at is not None
    assert [e.event_title for e in events] == [DISK_FULL_TITLE]  # said once, not per picture
    # Stopped stays stopped for this print, even with room again.
    assert await recorder.keep(printer.id, picture, start + timedelta(seconds=90)) is None
    assert len(timelapses.kept_frames(data_dir, print_.organization_id, print_.id)) == 3


async def test_the_dashboard_switches_videos_jumps_to_moments_and_uploads_with_progress(
        live_url: str, farm: Farm, settings: Settings, page: Any, tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    from layerfleet.accounts.models import Role
    from layerfleet.detection.models import Alert, AlertKind, PredictionFrame
    from layerfleet.prints.models import PrintShotFeedback
    from test_timelapse_uploads import encode_video

    owner = await farm.member(Role.ADMIN)
    print_ = await print_with_frames(farm, owner, settings.data_dir, 90)
    start = print_.started_at

    async def detector_said(session: Any) -> None:
        # A scored frame at frame 60 of the video (10 s apart: 600 s in), a feedback shot of it,
        # and an alert at frame 45.
        image = f"orgs/{print_.organization_id}/prints/{print_.id}/frames/000001.jpg"
        session.add(PredictionFrame(print_id=print_.id, frame_number=1, taken_at=start + timedelta(seconds=600),
                                    p=0.9, ewm_mean=0.5, rolling_mean_short=0.1, rolling_mean_long=0.1,
                                    normalized_p=0.8, boxes=[], image_path=image))
        session.add(PrintShotFeedback(print_id=print_.id, image_path=image))
        session.add(Alert(organization_id=print_.organization_id, printer_id=print_.printer_id, print_id=print_.id,
                          kind=AlertKind.FAILURE.value, normalized_p=0.8, created_at=start + timedelta(seconds=450)))
        await session.commit()

    await farm.run(detector_said)
    assert (await compile_now(farm, settings, print_)).status == TimelapseStatus.DONE.value
    await sign_in(page, live_url, owner.user.email, then=f"/prints/{print_.id}/")
    video = page.locator("video#timelapse")
    await page.wait_for_function("document.querySelector('video#timelapse').readyState >= 1")

    await page.get_by_role("button", name="Show “Failure detected” in the video").click()
    await page.wait_for_function("Math.abs(document.querySelector('video#timelapse').currentTime - 1.5) < 0.05")
    await page.get_by_role("button", name="Show frame 1 in the video").click()
    await page.wait_for_function("Math.abs(document.querySelector('video#timelapse').currentTime - 2.0) < 0.05")

    tagged = page.get_by_role("button", name="With the detector's boxes")
    await tagged.click()
    assert await tagged.get_attribute("aria-pressed") == "true"
    await page.wait_for_function("document.querySelector('video#timelapse').src.endsWith('timelapse-tagged.mp4')")
    # The switch keeps the moment.
    await page.wait_for_function("document.querySelector('video#timelapse').readyState >= 1 && "
                                 "Math.abs(document.querySelector('video#timelapse').currentTime - 2.0) < 0.05")
    assert (await video.get_attribute("poster") or "").endswith("poster.jpg")

    # The history: the poster, the disk used (admins), and an upload with its progress.
    await page.goto(f"{live_url}/prints/")
    poster = page.locator(f"a[href='/prints/{print_.id}/'] img.poster")
    await poster.wait_for()
    assert await poster.evaluate("img => img.complete && img.naturalWidth > 0")
    used = await page.locator("#media-used").inner_text()
    assert re.search(r"use [1-9]\d* KB on the server", used), used  # a poster and two small videos
    clip = tmp_path / "old print.mp4"
    clip.write_bytes(encode_video(12))
    await page.locator("summary", has_text="Upload a timelapse").click()
    await page.get_by_label("Video file").set_input_files(str(clip))
    await page.get_by_label("How long the print ran, in hours (optional)").fill("2")
    # What the progress bar showed, kept across the page change that follows the upload.
    await page.evaluate("""() => {
      const bar = document.getElementById('upload-progress');
      new MutationObserver(() => sessionStorage.setItem('shown', JSON.stringify(
        [...JSON.parse(sessionStorage.getItem('shown') || '[]'), [bar.hidden, bar.value]]))
      ).observe(bar, {attributes: true});
    }""")
    await page.get_by_role("button", name="Upload", exact=True).click()
    await page.wait_for_url(f"{live_url}/prints/*/", timeout=20_000)
    shown = json.loads(await page.evaluate("sessionStorage.getItem('shown')"))
    assert [False, 100] in shown  # the bar was visible and reached 100 %
    assert "old print.mp4" in await page.locator("h1").inner_text()
    assert "Time-lapse uploaded" in await page.locator(".timeline").inner_text()


async def test_a_signed_link_reads_one_file_without_an_account(
        client: httpx.AsyncClient, farm: Farm, settings: Settings) -> None:
    from layerfleet.signed_links import signed_link

    owner = await farm.member()
    print_ = await print_with_frames(farm, owner, settings.data_dir, 6)
    assert (await compile_now(farm, settings, print_)).status == TimelapseStatus.DONE.value
    compiled = await farm.run(lambda session: session.get(Print, print_.id))
    link = signed_link(settings.effective_secret_key, "http://testserver", f"/media-signed/{compiled.video_path}", 60)
    whole = await client.get(link)
    stored = (media_root(settings.data_dir) / compiled.video_path).read_bytes()
    assert whole.status_code == 200 and whole.content == stored
    part = await client.get(link, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole.content[:10]
    other = link.replace(compiled.video_path, compiled.tagged_video_path)
    assert (await client.get(other)).status_code == 404  # the signature is for one path
    assert (await client.get(link[:-4] + "0000")).status_code == 404
    escape = signed_link(settings.effective_secret_key, "http://testserver", "/media-signed/../secret_key", 60)
    assert (await client.get(escape)).status_code == 404
