"""What an agent's webcam picture costs the database, counted rather than timed (timings on a
shared machine are noise): SQL statements and commits per picture through the real endpoint,
and per scored frame when the worker applies a batch. Each commit is an fsync on SQLite, each
statement a hand-off to the database thread: the bounds below are what the picture path may
spend, on both databases.

Before this path was made cheap (issue 18) a scored picture cost 12 statements in 3 commits
to upload plus 7 statements and a commit to apply; an unscored one 11 statements."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select

from agent_helpers import agent_headers, jpeg
from conftest import IDLE, PRINTING, FakeAgent, Farm, now
from layerfleet.accounts.models import User
from layerfleet.app import create_app
from layerfleet.commands.bus import AgentCommand, InProcessCommandBus
from layerfleet.config import Settings
from layerfleet.detection import FrameResult
from layerfleet.detection.models import Alert, PredictionFrame
from layerfleet.fleet.models import Printer
from layerfleet.prints.models import Print

# Upper bounds per picture. The old path broke every one of them (see the module's docstring).
SCORED_UPLOAD_STATEMENTS = 4  # the printer read once; its picture, the video's and the detector's claims
UNSCORED_UPLOAD_STATEMENTS = 2  # the printer read once; its picture
UPLOAD_COMMITS = 1


@dataclass
class Tally:
    statements: list[str] = field(default_factory=list)
    commits: int = 0

    def __str__(self) -> str:
        lines = "\n  ".join(s.split("\n", 1)[0][:120] for s in self.statements)
        return f"{len(self.statements)} statements, {self.commits} commits:\n  {lines}"


@contextmanager
def counted(app: Any) -> Iterator[Tally]:
    """Every statement and commit the app's engine runs inside the block."""
    engine = app.state.services.engine.sync_engine
    tally = Tally()

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        tally.statements.append(statement)

    def on_commit(_conn: Any) -> None:
        tally.commits += 1

    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "commit", on_commit)
    try:
        yield tally
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine, "commit", on_commit)


class GatedDetector:
    """Scores every frame as ``p``; holds a batch while ``gate`` is clear."""

    def __init__(self, p: float = 0.05) -> None:
        self.p = p
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []

    def detect(self, images: list[bytes]) -> list[FrameResult]:
        self.gate.wait(20)
        self.batches.append(len(images))
        score = 1.0 if self.p >= 0.5 else 0.0
        return [FrameResult(score=score, p=self.p, boxes=[(320.0, 240.0, 60.0, 40.0, self.p)], width=640, height=480)
                for _ in images]


@pytest.fixture
async def watching_app(settings: Settings) -> AsyncIterator[Any]:
    app = create_app(settings.model_copy(update={
        "detection_enabled": True, "detection_interval_seconds": 10.0, "detection_batch_size": 8,
        "timelapse_enabled": True, "timelapse_frame_interval_seconds": 10.0}), command_bus=InProcessCommandBus())
    pipeline = app.state.services.watching
    pipeline.detector = GatedDetector()
    yield app
    if pipeline.queue.qsize():
        # Frames left queued would stay in the process-wide queue-depth gauge: closing a
        # started pipeline takes them out of it.
        await pipeline.start()
        await pipeline.close()


async def _post(agent: httpx.AsyncClient, printer: Printer) -> None:
    answer = await agent.post("/api/v1/octo/pic/", headers=agent_headers(printer),
                              files={"pic": ("p.jpg", jpeg(640, 480), "image/jpeg")})
    assert answer.status_code == 200, answer.text


async def test_a_picture_is_one_transaction_with_the_printer_read_once(watching_app: Any, farm: Farm) -> None:
    owner = await farm.member()
    watched = await farm.printer(owner, status=PRINTING)
    print_ = await farm.print(watched, current=True, feedback=2)
    idle = await farm.printer(owner, status=IDLE)
    pipeline = watching_app.state.services.watching
    transport = httpx.ASGITransport(app=watching_app)
    # No worker runs (the app's lifespan is not entered): what the upload claims stays queued.
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as agent:
        with counted(watching_app) as scored:
            await _post(agent, watched)
        with counted(watching_app) as in_between:
            await _post(agent, watched)  # within both intervals: neither scored nor kept
        with counted(watching_app) as unwatched:
            await _post(agent, idle)
    print(f"\nscored upload: {scored}\nunscored upload: {in_between}\nunwatched upload: {unwatched}")

    # What the picture did, exactly: claimed for scoring once, kept for the video once.
    assert pipeline.queue.qsize() == 1
    stored_printer = await farm.run(lambda s: s.get(Printer, watched.id))
    stored_print = await farm.run(lambda s: s.get(Print, print_.id))
    assert stored_printer.last_scored_at is not None and stored_printer.pic_path is not None
    assert stored_print.timelapse_frame_at == stored_printer.last_scored_at
    assert (await farm.run(lambda s: s.get(Printer, idle.id))).pic_path is not None

    for tally in (scored, in_between, unwatched):  # the printer read once, with nothing it does not need
        reads = [s for s in tally.statements if s.lstrip().upper().startswith("SELECT")]
        assert len(reads) == 1 and "print_shot_feedbacks" not in reads[0], str(tally)
    assert len(scored.statements) <= SCORED_UPLOAD_STATEMENTS, str(scored)
    assert scored.commits == UPLOAD_COMMITS, str(scored)
    for tally in (in_between, unwatched):
        assert len(tally.statements) <= UNSCORED_UPLOAD_STATEMENTS, str(tally)
        assert tally.commits == UPLOAD_COMMITS, str(tally)


async def _watched_printers(farm: Farm, count: int) -> tuple[User, list[Printer], list[Print]]:
    owner = await farm.member()
    printers, prints = [], []
    for n in range(count):
        printer = await farm.printer(owner, f"P{n}", status=PRINTING)
        # Watched a while already: this frame charges detection hours, as most frames do.
        prints.append(await farm.print(printer, current=True, feedback=1, detection_frames=3,
                                       detection_last_at=now() - timedelta(seconds=5)))
        printers.append(printer)
    return owner.user, printers, prints


async def _score_queued(pipeline: Any, count: int) -> None:
    await pipeline.start()
    try:
        for _ in range(500):
            if pipeline.scored >= count:
                break
            await asyncio.sleep(0.02)
    finally:
        await pipeline.close()


async def test_a_batch_of_scored_frames_is_applied_in_one_transaction(watching_app: Any, farm: Farm) -> None:
    frames = 6
    owner, printers, prints = await _watched_printers(farm, frames)
    pipeline = watching_app.state.services.watching
    transport = httpx.ASGITransport(app=watching_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as agent:
        for printer in printers:
            await _post(agent, printer)
    assert pipeline.queue.qsize() == frames
    balance_before = (await farm.run(lambda s: s.get(User, owner.id))).dh_balance
    with counted(watching_app) as applied:
        await _score_queued(pipeline, frames)
    print(f"\napplying {frames} scored frames: {applied}")
    assert pipeline.scored == frames and pipeline.detector.batches == [frames]

    # Every frame's outcome, as if each had had its own transaction.
    recorded = await farm.run(lambda s: _all(s, select(PredictionFrame).order_by(PredictionFrame.print_id)))
    assert [(f.print_id, f.frame_number) for f in recorded] == [(p.id, 4) for p in prints]
    for print_id in (p.id for p in prints):
        stored = await farm.run(lambda s, i=print_id: s.get(Print, i))
        assert stored.detection_frames == 4 and stored.watched_seconds > 0
    balance_after = (await farm.run(lambda s: s.get(User, owner.id))).dh_balance
    watched_seconds = sum([(await farm.run(lambda s, i=p.id: s.get(Print, i))).watched_seconds for p in prints])
    assert balance_before - balance_after == pytest.approx(watched_seconds / 3600)

    assert applied.commits == 1, str(applied)
    # One read of the batch's printers (locking them in id order), one lock of their prints (no
    # deadlock with a picture's own transaction), its frames' INSERTs (one on PostgreSQL; SQLite's
    # driver takes them one by one), one UPDATE per changed table and owner: a frame alone cost 7.
    assert len(applied.statements) <= frames + 6, str(applied)


async def _all(session: Any, query: Any) -> list[Any]:
    return list((await session.execute(query)).scalars())


async def test_a_failing_frame_does_not_lose_the_others_and_a_pause_is_sent_once(
        watching_app: Any, farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    _, printers, prints = await _watched_printers(farm, 3)
    # In queue order: the pause is sent before the batch meets the failing frame.
    pausing, failing = printers[0], printers[1]
    agent_of_pausing = FakeAgent()
    watching_app.state.services.command_bus.register(pausing.id, agent_of_pausing)
    pipeline = watching_app.state.services.watching
    # Every print has been failing: this frame pauses each one whose agent is there to pause it.
    async with farm.sessionmaker() as session:
        for print_ in prints:
            stored = await session.get(Print, print_.id)
            stored.detection_frames, stored.detection_ewm, stored.detection_short_mean = 40, 1.5, 1.5
            stored.detection_p = 2.0
        for printer in printers:  # a camera whose baseline is quiet
            found = await session.get(Printer, printer.id)
            found.detection_lifetime_frames, found.detection_long_mean = 1000, 0.05
        await session.commit()
    pipeline.detector.p = 0.9
    # The middle printer's frame fails as it is applied (a picture that cannot be stored).
    from layerfleet.watching import frames as frames_module

    real_store = frames_module.store_media

    async def store(data_dir: Any, path: str, data: bytes, *, same_as: str | None = None) -> None:
        if f"/prints/{prints[1].id}/" in path:
            raise OSError("disk trouble")
        await real_store(data_dir, path, data, same_as=same_as)

    monkeypatch.setattr(frames_module, "store_media", store)
    transport = httpx.ASGITransport(app=watching_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as agent:
        for printer in printers:
            await _post(agent, printer)
    await _score_queued(pipeline, 2)
    await asyncio.sleep(0.1)
    assert pipeline.scored == 2
    recorded = await farm.run(lambda s: _all(s, select(PredictionFrame)))
    assert sorted(f.print_id for f in recorded) == sorted([prints[0].id, prints[2].id])
    pauses = [m for m in agent_of_pausing.received if isinstance(m, AgentCommand) and m.cmd == "pause"]
    assert len(pauses) == 1
    assert (await farm.run(lambda s: s.get(Print, prints[0].id))).paused_at is not None
    alerts = await farm.run(lambda s: _all(s, select(Alert).order_by(Alert.print_id)))
    # The agentless printer is alerted, not paused; the failing one has no alert and no new state.
    assert [(a.print_id, a.paused) for a in alerts] == [(prints[0].id, True), (prints[2].id, False)]
    assert (await farm.run(lambda s: s.get(Print, prints[1].id))).detection_frames == 40
    assert (await farm.run(lambda s: s.get(Printer, failing.id))).detection_lifetime_frames == 1000


# --- the picture check: structure and header, not a decode ------------------------------------------

def _declaring(picture: bytes, width: int, height: int) -> bytes:
    """The picture with its frame header (SOF0) claiming another size."""
    at = picture.index(b"\xff\xc0")
    return picture[:at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + picture[at + 9:]


async def test_a_picture_is_checked_without_decoding_its_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    from layerfleet.detection import imaging

    picture = jpeg(640, 480)

    def no_decoding(*_args: Any) -> None:
        raise AssertionError("the picture's pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    await imaging.check_picture(picture)
    await imaging.check_picture(picture + b"\x00" * 64)  # padding some cameras add after the end marker
    refused = {
        "cut in its image data": (picture[: len(picture) - 40], "damaged or truncated"),
        "cut in its header": (picture[:200], "damaged or truncated"),
        "81 megapixels by its header": (_declaring(picture, 9000, 9000), "megapixels"),
        "wider than the limit": (_declaring(picture, 9000, 10), "per side"),
        "a PNG": (b"\x89PNG\r\n\x1a\n" + b"0" * 64, "not a JPEG"),
    }
    for name, (data, message) in refused.items():
        with pytest.raises(imaging.BadImage, match=message):
            await imaging.check_picture(data)
            pytest.fail(name)


async def test_a_picture_cut_in_its_image_data_is_a_400_and_changes_nothing(
        client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING)
    picture = jpeg(640, 480)
    cut = await client.post("/api/v1/octo/pic/", headers=agent_headers(printer),
                            files={"pic": ("p.jpg", picture[: len(picture) // 2])})
    assert cut.status_code == 400 and "damaged or truncated" in cut.json()["pic"][0]
    assert (await farm.run(lambda s: s.get(Printer, printer.id))).pic_path is None
    whole = await client.post("/api/v1/octo/pic/", headers=agent_headers(printer), files={"pic": ("p.jpg", picture)})
    assert whole.status_code == 200


async def test_a_claim_that_fails_loses_neither_the_picture_nor_its_frame(
        watching_app: Any, farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING)
    print_ = await farm.print(printer, current=True)
    pipeline = watching_app.state.services.watching
    claim = pipeline.claim
    failures: list[int] = []

    async def claim_once_failing(session: Any, found: Printer, *args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(found.id)
            await session.execute(select(1).where(Printer.id == -1))
            raise RuntimeError("the database went away mid-claim")
        return await claim(session, found, *args, **kwargs)

    monkeypatch.setattr(pipeline, "claim", claim_once_failing)
    transport = httpx.ASGITransport(app=watching_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as agent:
        await _post(agent, printer)
    assert failures == [printer.id]
    stored = await farm.run(lambda s: s.get(Printer, printer.id))
    assert stored.pic_path is not None and stored.last_scored_at is not None
    assert (await farm.run(lambda s: s.get(Print, print_.id))).timelapse_frame_at is not None
    assert pipeline.queue.qsize() == 1  # handed over the long way: submit, which claimed it
