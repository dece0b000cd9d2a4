"""Timelapse jobs survive a killed server; frames and videos go on schedule; a deleted print
takes its media along."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from conftest import Farm
from layerfleet import media
from layerfleet.accounts.models import Role
from layerfleet.config import Settings
from layerfleet.media import media_root
from layerfleet.prints.models import Print
from layerfleet.timelapses import service as timelapses
from layerfleet.timelapses.jobs import apply_retention
from layerfleet.timelapses.models import TimelapseJob, TimelapseStatus
from test_cli_and_startup import free_port
from test_timelapses import compile_now, print_with_frames
from test_worker import REDIS_URL, _redis_answers


class ServeProcess:
    """`layerfleet serve` (or, given a Redis namespace, `layerfleet worker`) on the tests'
    database and a data folder of the test's own."""

    def __init__(self, database_url: str, data_dir: Path, redis_namespace: str | None = None) -> None:
        self.port = free_port()
        env = {**os.environ, "LAYERFLEET_DATA_DIR": str(data_dir), "LAYERFLEET_DATABASE_URL": database_url,
               "LAYERFLEET_DETECTION_ENABLED": "false", "LAYERFLEET_TIMELAPSE_STALE_SECONDS": "3",
               "LAYERFLEET_SECRET_KEY": "test-secret"}
        command = ["serve", "--port", str(self.port), "--no-migrate"]
        if redis_namespace is not None:
            env.update(LAYERFLEET_REDIS_URL=REDIS_URL, LAYERFLEET_REDIS_NAMESPACE=redis_namespace)
            command = ["worker", "--jobs", "1"]
        self.is_worker = redis_namespace is not None
        self.process = subprocess.Popen([sys.executable, "-m", "layerfleet", *command],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_until_up(self) -> None:
        if self.is_worker:
            return  # it has no port; the job's progress shows it works
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/accounts/login/", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError("the server did not start")

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


async def _job(farm: Farm, print_id: int) -> TimelapseJob | None:
    async def look(session: Any) -> TimelapseJob | None:
        query = select(TimelapseJob).where(TimelapseJob.print_id == print_id)
        return (await session.execute(query)).scalar_one_or_none()

    found: TimelapseJob | None = await farm.run(look)
    return found


async def _print(farm: Farm, print_id: int) -> Print:
    found: Print = await farm.run(lambda session: session.get(Print, print_id))
    return found


@pytest.mark.parametrize("process", ["server", "redis worker"])
async def test_a_compilation_killed_midway_is_done_after_the_restart(
        farm: Farm, database_url: str, tmp_path: Path, process: str) -> None:
    namespace = None
    if process == "redis worker":
        if not await _redis_answers():
            if os.environ.get("CI"):
                pytest.fail("Redis must run at 127.0.0.1:6379 in CI")
            pytest.skip("no Redis at 127.0.0.1:6379")
        namespace = f"test-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "data"
    owner = await farm.member()
    # Big enough to take seconds to encode, so the kill lands in the middle.
    print_ = await print_with_frames(farm, owner, data_dir, 360, size=(1280, 720))
    async def ask(session: Any) -> None:
        await timelapses.print_ended(session, await session.get(Print, print_.id))
        await session.commit()

    await farm.run(ask)
    folder = media_root(data_dir) / media.print_folder(print_.organization_id, print_.id)
    first = ServeProcess(database_url, data_dir, namespace)
    try:
        first.wait_until_up()
        deadline = time.monotonic() + 60
        while not list(folder.glob(".video-*.mp4")):  # encoding has begun
            assert time.monotonic() < deadline, "the compilation did not start"
            await asyncio.sleep(0.05)
        first.kill()
    finally:
        first.stop()
    killed = await _job(farm, print_.id)
    assert killed is not None and killed.status == TimelapseStatus.IN_PROGRESS.value
    assert (await _print(farm, print_.id)).video_path is None
    assert not (folder / timelapses.VIDEO).exists()

    second = ServeProcess(database_url, data_dir, namespace)
    try:
        second.wait_until_up()
        deadline = time.monotonic() + 120
        while (job := await _job(farm, print_.id)) is None or job.status != TimelapseStatus.DONE.value:
            assert job is None or job.status != TimelapseStatus.ERROR.value, job.error
            assert time.monotonic() < deadline, "the video was not compiled after the restart"
            await asyncio.sleep(0.3)
    finally:
        second.stop()
    done = await _print(farm, print_.id)
    assert done.video_path is not None and (media_root(data_dir) / done.video_path).stat().st_size > 0
    assert job.attempts == 2
    assert not list(folder.glob(".video-*"))  # what the killed run left is gone
    # Frames are removed once both videos exist (LAYERFLEET_TIMELAPSE_KEEP_FRAMES_DAYS=0).
    assert not (folder / media.KEPT_FRAMES).exists()


async def test_frames_and_videos_are_removed_on_schedule(farm: Farm, settings: Settings, tmp_path: Path) -> None:
    kept = settings.model_copy(update={"data_dir": tmp_path / "data", "timelapse_keep_frames_days": 2.0,
                                       "timelapse_keep_videos_days": 30.0})
    owner = await farm.member()
    print_ = await print_with_frames(farm, owner, kept.data_dir, 12)
    job = await compile_now(farm, kept, print_)
    assert job.status == TimelapseStatus.DONE.value, job.error
    folder = media_root(kept.data_dir) / media.print_folder(print_.organization_id, print_.id)
    assert len(list((folder / media.KEPT_FRAMES).iterdir())) == 12  # kept for two days

    async def age(days: float) -> None:
        async def move(session: Any) -> None:
            await session.execute(update(TimelapseJob).where(TimelapseJob.id == job.id).values(
                finished_at=job.finished_at - timedelta(days=days)))
            await session.commit()

        await farm.run(move)

    assert await apply_retention(farm.sessionmaker, kept) == (0, 0)
    await age(2.1)
    assert await apply_retention(farm.sessionmaker, kept) == (1, 0)
    assert not (folder / media.KEPT_FRAMES).exists() and (folder / timelapses.VIDEO).exists()
    await age(31)
    assert await apply_retention(farm.sessionmaker, kept) == (0, 1)
    gone = await _print(farm, print_.id)
    assert gone.video_path is None and gone.tagged_video_path is None
    assert not (folder / timelapses.VIDEO).exists() and not (folder / timelapses.TAGGED_VIDEO).exists()
    assert await apply_retention(farm.sessionmaker, kept) == (0, 0)


async def test_deleting_a_print_deletes_its_media(client: httpx.AsyncClient, farm: Farm, settings: Settings) -> None:
    admin = await farm.member(Role.ADMIN)
    print_ = await print_with_frames(farm, admin, settings.data_dir, 6)
    job = await compile_now(farm, settings, print_)
    assert job.status == TimelapseStatus.DONE.value, job.error
    folder = media_root(settings.data_dir) / media.print_folder(print_.organization_id, print_.id)
    shown = (await client.get(f"/api/v1/prints/{print_.id}/", headers=admin.headers)).json()
    assert (await client.get(shown["video_url"], headers=admin.headers)).status_code == 200
    assert (folder / timelapses.POSTER).exists()
    assert (await client.delete(f"/api/v1/prints/{print_.id}/", headers=admin.headers)).status_code == 200
    assert not folder.exists()
    assert (await client.get(shown["video_url"], headers=admin.headers)).status_code == 404
    assert await _job(farm, print_.id) is None


async def test_a_print_shorter_than_the_minimum_gets_no_video(farm: Farm, settings: Settings) -> None:
    owner = await farm.member()
    print_ = await print_with_frames(farm, owner, settings.data_dir, 6)

    async def cancel_early(session: Any) -> None:
        found = await session.get(Print, print_.id)
        found.finished_at = None
        found.cancelled_at = found.started_at + timedelta(minutes=4)  # the minimum is 5 when cancelled
        await session.commit()

    await farm.run(cancel_early)
    job = await compile_now(farm, settings, print_)
    assert job.status == TimelapseStatus.SKIPPED.value and "shorter than 300 s" in (job.error or "")
    assert (await _print(farm, print_.id)).video_path is None
    folder = media_root(settings.data_dir) / media.print_folder(print_.organization_id, print_.id)
    assert not (folder / media.KEPT_FRAMES).exists() and not (folder / timelapses.VIDEO).exists()


async def test_deleting_a_printer_deletes_its_pictures_and_its_prints_media(
        client: httpx.AsyncClient, farm: Farm, settings: Settings) -> None:
    admin = await farm.member(Role.ADMIN)
    print_ = await print_with_frames(farm, admin, settings.data_dir, 6)
    job = await compile_now(farm, settings, print_)
    assert job.status == TimelapseStatus.DONE.value, job.error
    assert print_.printer_id is not None
    root = media_root(settings.data_dir)
    print_folder = root / media.print_folder(print_.organization_id, print_.id)
    pictures = root / f"orgs/{print_.organization_id}/printers/{print_.printer_id}"
    (pictures / "pic").mkdir(parents=True, exist_ok=True)
    (pictures / "pic" / "1.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    other = await print_with_frames(farm, await farm.member(Role.ADMIN, organization="Farm B"), settings.data_dir, 2)
    other_folder = root / media.print_folder(other.organization_id, other.id)
    assert print_folder.exists() and other_folder.exists()
    answer = await client.delete(f"/api/v1/printers/{print_.printer_id}/", headers=admin.headers)
    assert answer.status_code == 200
    assert not print_folder.exists() and not pictures.exists()
    assert other_folder.exists()  # another organization's printer keeps everything
