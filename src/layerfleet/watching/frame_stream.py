"""Frames to score over Redis (scale-out): servers receive pictures, `layerfleet worker`s score them.

A server that claimed a picture for scoring writes it to the shared data directory and adds an
entry naming it to the stream ``{ns}:watching:frames``. Workers read the stream as one consumer
group: each entry goes to one worker, stays pending (in Redis, not in the worker) until that
worker has applied it and acknowledged it, and is then deleted with its picture. A worker that
dies mid-batch leaves its entries pending; another worker takes them over once they have been
idle for ``claim_idle_seconds`` (XAUTOCLAIM). A frame applied just before its worker died is
taken over too; the pipeline looks for its stored frame before applying a taken-over one (or
its picture is gone already: see :meth:`FrameStream.done`), so none is scored twice.

The stream is bounded by ``backlog_limit`` entries: beyond it new frames are dropped and
counted, as the in-process queue drops them, rather than pile up without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from layerfleet.watching.pipeline import STREAM_STATS_SECONDS, PendingFrame, StreamBacklog

log = logging.getLogger(__name__)

GROUP = "scorers"
PICTURES_DIR = "scoring-frames"


@dataclass(frozen=True)
class StreamedFrame:
    """A frame a worker took from the stream: acknowledge it with :meth:`FrameStream.done`."""

    entry_id: str
    frame: PendingFrame
    picture: Path


class FrameStream:
    def __init__(self, url: str, data_dir: Path, *, namespace: str = "layerfleet", backlog_limit: int = 5000,
                 claim_idle_seconds: float = 30.0) -> None:
        self.redis: Redis = Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=15)
        self.key = f"{namespace}:watching:frames"
        self.pictures = data_dir / PICTURES_DIR
        self.backlog_limit = backlog_limit
        self.claim_idle_ms = max(1, int(claim_idle_seconds * 1000))
        self._backlog = StreamBacklog(0, 0.0)
        self._backlog_read_at = -STREAM_STATS_SECONDS

    async def start(self) -> None:
        self.pictures.mkdir(parents=True, exist_ok=True)
        try:
            await self.redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    # --- servers -------------------------------------------------------------------------------------

    def full(self) -> bool:
        """As of the last look (at most ``STREAM_STATS_SECONDS`` old): a claim is skipped when the stream is full."""
        return self._backlog.depth >= self.backlog_limit

    async def push(self, frame: PendingFrame) -> bool:
        """Store the picture and add its entry; False (nothing added) when the stream is full."""
        if self.full():
            return False
        name = f"{uuid.uuid4().hex}.jpg"
        await asyncio.to_thread((self.pictures / name).write_bytes, frame.jpeg)
        await self.redis.xadd(self.key, {
            "printer_id": frame.printer_id, "organization_id": frame.organization_id,
            "received_at": frame.received_at.isoformat(), "camera": frame.camera or "", "picture": name})
        return True

    async def backlog(self) -> StreamBacklog:
        """Entries waiting or being scored, cached for ``STREAM_STATS_SECONDS``."""
        now = time.monotonic()
        if now - self._backlog_read_at < STREAM_STATS_SECONDS:
            return self._backlog
        self._backlog_read_at = now
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.key)
            pipe.xrange(self.key, count=1)
            depth, first = await pipe.execute()
        oldest = 0.0
        if first:
            # An entry's id starts with the Redis server's clock, in milliseconds, at its adding.
            added_ms = int(str(first[0][0]).split("-", 1)[0])
            oldest = max(0.0, time.time() - added_ms / 1000)
        self._backlog = StreamBacklog(int(depth), oldest)
        return self._backlog

    # --- workers -------------------------------------------------------------------------------------

    async def take(self, consumer: str, count: int, block_seconds: float = 1.0) -> list[StreamedFrame]:
        """Up to ``count`` frames: first those a dead worker left pending too long, then new ones."""
        _, claimed, _deleted = await self.redis.xautoclaim(
            self.key, GROUP, consumer, self.claim_idle_ms, start_id="0-0", count=count)
        entries: list[Any] = list(claimed)
        taken_over = bool(entries)
        if taken_over:
            log.warning("took over %d frame(s) a scoring worker left unfinished", len(entries))
        else:
            answer: Any = await self.redis.xreadgroup(GROUP, consumer, {self.key: ">"}, count=count,
                                                      block=max(1, int(block_seconds * 1000)))
            entries = [entry for _stream, stream_entries in answer or [] for entry in stream_entries]
        taken: list[StreamedFrame] = []
        unreadable: list[str] = []
        for entry_id, fields in entries:
            frame = await self._read(fields, taken_over=taken_over)
            if frame is None:
                unreadable.append(entry_id)
            else:
                taken.append(StreamedFrame(entry_id, frame, self.pictures / fields["picture"]))
        if unreadable:
            if taken_over:
                # Pictures go only once their frames are applied (see done): nothing is lost.
                log.info("%d frame(s) taken over were applied already", len(unreadable))
            else:
                log.error("dropped %d frame entries whose picture or fields are missing", len(unreadable))
            await self._forget(unreadable)
        return taken

    async def _read(self, fields: dict[str, str] | None, *, taken_over: bool) -> PendingFrame | None:
        try:
            assert fields is not None  # an entry deleted while pending comes back without fields
            picture = self.pictures / Path(fields["picture"]).name
            jpeg = await asyncio.to_thread(picture.read_bytes)
            return PendingFrame(int(fields["printer_id"]), int(fields["organization_id"]), jpeg,
                                datetime.fromisoformat(fields["received_at"]), camera=fields.get("camera") or None,
                                taken_over=taken_over)
        except (AssertionError, KeyError, ValueError, OSError):
            return None

    async def done(self, frames: list[StreamedFrame]) -> None:
        """Acknowledge applied frames: their pictures go, then their entries. In this order a
        worker killed in between leaves no picture behind, only entries whose picture is gone,
        which :meth:`take` knows for applied ones."""
        if not frames:
            return
        for frame in frames:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(frame.picture.unlink)
        await self._forget([f.entry_id for f in frames])

    async def _forget(self, entry_ids: list[str]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.key, GROUP, *entry_ids)
            pipe.xdel(self.key, *entry_ids)
            await pipe.execute()
