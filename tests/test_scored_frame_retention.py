"""Retention of scored frames' pictures: an ended print's pictures go after
LAYERFLEET_SCORED_FRAMES_KEEP_DAYS, but those still evidence (alerts, feedback shots, quality
defects, what fine-tuning may learn from); the rows stay, and every page and API still answers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update

from conftest import BACKENDS, Farm, Member
from layerfleet.accounts import service as accounts
from layerfleet.config import Settings
from layerfleet.database import create_engine, create_sessionmaker, downgrade, migrate, utcnow
from layerfleet.detection.models import Alert, AlertKind, PredictionFrame
from layerfleet.finetuning import evidence
from layerfleet.fleet import service as fleet
from layerfleet.fleet.models import Printer
from layerfleet.jobs import InProcessJobQueue
from layerfleet.media import media_root
from layerfleet.prints.models import FeedbackAnswer, Print, PrintShotFeedback
from layerfleet.scheduling.reports import ReportService
from layerfleet.timelapses.jobs import TimelapseJobs
from layerfleet.watching import retention
from layerfleet.watching.frames import frame_paths
from layerfleet.watching.retention import apply_scored_frame_retention
from test_migrations import own_postgres_database

PASSWORD = "password-123"  # conftest's Farm.member
KEEP_DAYS = 14.0


@dataclass
class ScoredPrint:
    print_: Print
    frames: dict[int, PredictionFrame]  # by frame number; the other camera's under 100 + number
    pruned: set[int]  # the frame numbers whose pictures retention should remove


def keeping(settings: Settings, days: float = KEEP_DAYS) -> Settings:
    return settings.model_copy(update={"scored_frames_keep_days": days})


async def scored_print(farm: Farm, settings: Settings, printer: Printer, *, ended_days_ago: float | None,
                       current: bool = False) -> ScoredPrint:
    """Twelve scored frames with pictures on disk, each kept for its own reason or not:

    2 an alert's (tagged too), 4 a feedback shot's tagged picture, 5 a feedback shot's plain one,
    6 a quality warning's, 7 a quality defect without an alert, 10–12 the most suspicious three;
    1, 3 (tagged), 8 (tagged), 9 and a second camera's frame 3 are no evidence."""
    start = utcnow() - timedelta(days=(ended_days_ago or 0) + 1)
    ended = {"finished_at": utcnow() - timedelta(days=ended_days_ago)} if ended_days_ago is not None else {}
    print_ = await farm.print(printer, current=current, started_at=start, **ended)
    root = media_root(settings.data_dir)
    suspicious = {10: 0.9, 11: 0.8, 12: 0.7}
    tagged = {2, 3, 4, 8}
    defects = {6: 0.8, 7: 0.7}

    async def work(session: Any) -> dict[int, PredictionFrame]:
        frames: dict[int, PredictionFrame] = {}
        for key, number, camera in [(n, n, None) for n in range(1, 13)] + [(103, 3, "side")]:
            plain, tagged_path = frame_paths(print_, number, camera)
            has_tags = key in tagged
            for path in (plain, tagged_path) if has_tags else (plain,):
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(b"jpeg " + path.encode())
            frame = PredictionFrame(
                print_id=print_.id, frame_number=number, taken_at=start + timedelta(minutes=number),
                p=suspicious.get(key, 0.01 * number), score=0.1, ewm_mean=0.1, rolling_mean_short=0.1,
                rolling_mean_long=0.1, normalized_p=0.2, boxes=[], image_path=plain,
                tagged_image_path=tagged_path if has_tags else None, defect_score=defects.get(key, 0.1),
                defect_boxes=[], camera=camera)
            session.add(frame)
            frames[key] = frame
        await session.flush()
        for key, kind in ((2, AlertKind.FAILURE), (6, AlertKind.QUALITY)):
            session.add(Alert(organization_id=printer.organization_id, printer_id=printer.id, print_id=print_.id,
                              kind=kind.value, normalized_p=0.9, frame_id=frames[key].id,
                              created_at=frames[key].taken_at))
        session.add(PrintShotFeedback(print_id=print_.id, image_path=frames[4].tagged_image_path,
                                      answer=FeedbackAnswer.LOOKS_BAD.value))
        session.add(PrintShotFeedback(print_id=print_.id, image_path=frames[5].image_path,
                                      answer=FeedbackAnswer.LOOKS_OK.value))
        await session.commit()
        return frames

    return ScoredPrint(print_, await farm.run(work), {1, 3, 8, 9, 103})


async def change(farm: Farm, *statements: Any) -> None:
    async def work(session: Any) -> None:
        for statement in statements:
            await session.execute(statement)
        await session.commit()

    await farm.run(work)


async def frames_now(farm: Farm, print_id: int) -> dict[int, PredictionFrame]:
    async def work(session: Any) -> dict[int, PredictionFrame]:
        rows = (await session.execute(select(PredictionFrame).where(PredictionFrame.print_id == print_id))).scalars()
        return {frame.frame_number + (100 if frame.camera else 0): frame for frame in rows}

    result: dict[int, PredictionFrame] = await farm.run(work)
    return result


def pictures_of(frame: PredictionFrame) -> list[str]:
    return [path for path in (frame.image_path, frame.tagged_image_path) if path is not None]


async def assert_all_kept(farm: Farm, settings: Settings, scored: ScoredPrint) -> None:
    now = await frames_now(farm, scored.print_.id)
    assert len(now) == 13
    for key, before in scored.frames.items():
        assert pictures_of(now[key]) == pictures_of(before), key
        for path in pictures_of(before):
            assert (media_root(settings.data_dir) / path).is_file(), path


async def pruned_at(farm: Farm, print_id: int) -> Any:
    return await farm.run(lambda s: s.scalar(select(Print.scored_frames_pruned_at).where(Print.id == print_id)))


async def test_an_old_prints_plain_frames_go_and_its_evidence_stays(farm: Farm, settings: Settings) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    old = await scored_print(farm, settings, printer, ended_days_ago=KEEP_DAYS + 1)
    root = media_root(settings.data_dir)

    # Batches of three: the print's frames take several transactions.
    assert await apply_scored_frame_retention(farm.sessionmaker, keeping(settings), batch=3) == len(old.pruned)

    now = await frames_now(farm, old.print_.id)
    assert len(now) == 13  # the rows stay: the detection graph reads them
    for key, before in old.frames.items():
        if key in old.pruned:
            assert now[key].image_path is None and now[key].tagged_image_path is None, key
            assert not any((root / path).exists() for path in pictures_of(before)), key
            assert now[key].p == before.p and now[key].normalized_p == before.normalized_p
        else:
            assert pictures_of(now[key]) == pictures_of(before), key
            assert all((root / path).is_file() for path in pictures_of(before)), key
    # The alert's and the feedback shot's frames keep the plain picture beside the tagged one.
    assert now[2].tagged_image_path and now[4].tagged_image_path and now[4].image_path
    assert await pruned_at(farm, old.print_.id) is not None
    assert await apply_scored_frame_retention(farm.sessionmaker, keeping(settings)) == 0  # pruned once


async def test_recent_and_current_prints_keep_everything_and_zero_keeps_forever(
        farm: Farm, settings: Settings) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    recent = await scored_print(farm, settings, printer, ended_days_ago=KEEP_DAYS - 1)
    # Started long ago and still printing: not ended, whatever its age.
    current = await scored_print(farm, settings, await farm.printer(owner, "Current"), ended_days_ago=None,
                                 current=True)
    await change(farm, update(Print).where(Print.id == current.print_.id).values(
        started_at=utcnow() - timedelta(days=60)))
    old = await scored_print(farm, settings, await farm.printer(owner, "Old"), ended_days_ago=400)

    assert await apply_scored_frame_retention(farm.sessionmaker, keeping(settings, 0)) == 0
    for scored in (recent, current, old):
        await assert_all_kept(farm, settings, scored)
        assert await pruned_at(farm, scored.print_.id) is None

    assert await apply_scored_frame_retention(farm.sessionmaker, keeping(settings)) == len(old.pruned)
    for scored in (recent, current):
        await assert_all_kept(farm, settings, scored)
        assert await pruned_at(farm, scored.print_.id) is None
    assert await pruned_at(farm, old.print_.id) is not None


async def test_a_cancelled_print_counts_from_its_end_and_a_current_one_waits(
        farm: Farm, settings: Settings) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    scored = await scored_print(farm, settings, printer, ended_days_ago=None, current=True)
    long_ago = utcnow() - timedelta(days=KEEP_DAYS + 5)
    # Its end reported long ago, yet still the printer's current print: left alone.
    await change(farm, update(Print).where(Print.id == scored.print_.id).values(cancelled_at=long_ago))
    assert await apply_scored_frame_retention(farm.sessionmaker, keeping(settings)) == 0
    await assert_all_kept(farm, settings, scored)

    await change(farm, update(Printer).where(Printer.id == printer.id).values(current_print_id=None))
    assert await apply_scored_frame_retention(farm.sessionmaker, keeping(settings)) == len(scored.pruned)


async def test_the_retention_loop_prunes_scored_frames(farm: Farm, settings: Settings) -> None:
    owner = await farm.member()
    old = await scored_print(farm, settings, await farm.printer(owner), ended_days_ago=KEEP_DAYS + 1)
    looping = keeping(settings).model_copy(update={"timelapse_retention_interval_seconds": 0.2})
    jobs = TimelapseJobs(farm.sessionmaker, InProcessJobQueue(), looping, workers=1, sole_worker=True)
    await jobs.start()
    try:
        deadline = time.monotonic() + 30
        while await pruned_at(farm, old.print_.id) is None:
            assert time.monotonic() < deadline, "the retention loop did not prune the print"
            await asyncio.sleep(0.2)
    finally:
        await jobs.close()
    now = await frames_now(farm, old.print_.id)
    assert {key for key, frame in now.items() if frame.image_path is None} == old.pruned


async def signed_in(client: httpx.AsyncClient, member: Member) -> httpx.AsyncClient:
    answer = await client.post("/accounts/login/", data={"email": member.user.email, "password": PASSWORD})
    assert answer.status_code == 303
    return client


async def test_pages_apis_reports_and_evidence_cope_with_pruned_frames(
        client: httpx.AsyncClient, farm: Farm, settings: Settings) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    old = await scored_print(farm, settings, printer, ended_days_ago=KEEP_DAYS + 1)
    await change(farm, update(Print).where(Print.id == old.print_.id).values(
        alerted_at=old.frames[2].taken_at, alert_overwrite="FAILED"))
    assert await apply_scored_frame_retention(farm.sessionmaker, keeping(settings)) == len(old.pruned)

    records = await client.get(f"/api/v1/prints/{old.print_.id}/prediction_json", headers=owner.headers)
    assert records.status_code == 200
    assert len(records.json()) == 13  # the graph keeps every frame
    single = await client.get(f"/api/v1/prints/{old.print_.id}/", headers=owner.headers)
    assert single.status_code == 200
    shots = {shot["image_url"] for shot in single.json()["printshotfeedback_set"]}
    assert any(url.endswith(old.frames[4].tagged_image_path or "?") for url in shots)
    listed = await client.get("/api/v1/prints/", headers=owner.headers)
    assert listed.status_code == 200 and old.print_.id in [p["id"] for p in listed.json()]

    await signed_in(client, owner)
    page = await client.get(f"/prints/{old.print_.id}/")
    assert page.status_code == 200
    assert f"/media/{old.frames[4].tagged_image_path}" in page.text and "part.gcode" in page.text
    printer_page = await client.get(f"/printers/{printer.id}/")
    assert printer_page.status_code == 200

    # An inspection report's key frames: the likeliest frame's picture is gone, the others show.
    now = await frames_now(farm, old.print_.id)
    now[1].normalized_p = 0.99
    predictions = sorted(now.values(), key=lambda f: (f.frame_number, f.id))
    key_frames = ReportService(farm.sessionmaker, settings.data_dir)._key_frames(predictions)
    labels = [label for label, _, _ in key_frames]
    assert labels and not any(label.startswith("Frame 1,") for label in labels)
    assert any(label.startswith("Frame 12,") for label in labels)  # the last one
    assert all(data.startswith(b"jpeg orgs/") for _, _, data in key_frames)

    # Fine-tuning still finds every picture it could use: the alert frames (the verdict), and the
    # plain picture beside the tagged one a feedback shot shows.
    frames = await farm.run(lambda s: evidence.collect(s, owner.user.organization_id, media_root(settings.data_dir)))
    got = {f.image_path: (f.failure, f.source) for f in frames}
    assert got == {old.frames[2].image_path: (True, "confirmed"), old.frames[6].image_path: (True, "confirmed"),
                   old.frames[4].image_path: (True, "feedback"), old.frames[5].image_path: (False, "feedback")}


async def test_a_verdict_without_alert_frames_still_has_its_most_suspicious_frames(
        farm: Farm, settings: Settings) -> None:
    owner = await farm.member()
    old = await scored_print(farm, settings, await farm.printer(owner), ended_days_ago=KEEP_DAYS + 1)

    # The alerts forgot their frames: the verdict falls back on the print's most suspicious frames.
    await change(farm, update(Alert).where(Alert.print_id == old.print_.id).values(frame_id=None),
                 update(Print).where(Print.id == old.print_.id).values(alert_overwrite="NOT_FAILED"))
    before = await farm.run(lambda s: evidence.collect(s, owner.user.organization_id, media_root(settings.data_dir)))
    await apply_scored_frame_retention(farm.sessionmaker, keeping(settings))
    after = await farm.run(lambda s: evidence.collect(s, owner.user.organization_id, media_root(settings.data_dir)))
    assert after == before
    assert {f.image_path for f in after if f.source == "denied"} == {old.frames[n].image_path for n in (10, 11, 12)}
    assert retention.EVIDENCE_FRAMES_PER_PRINT >= evidence.FRAMES_PER_PRINT_VERDICT


# --- the migration -----------------------------------------------------------------------------------

async def _seed(url: str) -> None:
    engine = create_engine(url, pooled=False)
    try:
        async with create_sessionmaker(engine)() as session:
            user = await accounts.create_user(session, "links@example.com", PASSWORD, organization_name="Links")
            printer = await fleet.create_printer(session, user, "MK4")
            await session.flush()
            print_ = Print(organization_id=printer.organization_id, printer_id=printer.id, finished_at=utcnow())
            session.add(print_)
            await session.flush()
            frames = [PredictionFrame(print_id=print_.id, frame_number=n, p=0.5, ewm_mean=0.5, rolling_mean_short=0.5,
                                      rolling_mean_long=0.5, normalized_p=0.5, image_path=path)
                      for n, path in ((1, "orgs/1/a.jpg"), (2, None))]
            session.add_all(frames)
            await session.flush()
            session.add(Alert(organization_id=printer.organization_id, printer_id=printer.id, print_id=print_.id,
                              kind=AlertKind.FAILURE.value, normalized_p=0.9, frame_id=frames[0].id))
            await session.commit()
    finally:
        await engine.dispose()


async def _rows(url: str, sql: str) -> list[Any]:
    engine = create_engine(url, pooled=False)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(sql))).all())
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_the_migration_keeps_alerts_frame_links_both_ways(backend_name: str, tmp_path: Path) -> None:
    """On SQLite the nullable column rebuilds ``prediction_frames``; dropping the old table would
    set every alert's frame to NULL, and rebuilding ``prints`` would delete all a print owns."""
    url = asyncio.run(own_postgres_database("frame_links")) if backend_name == "postgresql" \
        else f"sqlite+aiosqlite:///{tmp_path / 'links.db'}"
    migrate(url)
    asyncio.run(_seed(url))
    linked = "SELECT a.frame_id, f.frame_number FROM alerts a JOIN prediction_frames f ON f.id = a.frame_id"
    assert [tuple(r) for r in asyncio.run(_rows(url, linked))] == [(1, 1)]
    downgrade(url, "0010")
    assert [tuple(r) for r in asyncio.run(_rows(url, linked))] == [(1, 1)]
    assert sorted(tuple(r) for r in asyncio.run(_rows(
        url, "SELECT frame_number, image_path FROM prediction_frames"))) == [(1, "orgs/1/a.jpg"), (2, "")]
    migrate(url)
    assert [tuple(r) for r in asyncio.run(_rows(url, linked))] == [(1, 1)]
    assert len(asyncio.run(_rows(url, "SELECT id FROM prints"))) == 1
