"""Which model scores a frame: its organization's promoted fine-tuned model, else the shipped one.

A batch of the watching pipeline mixes printers of many organizations. :class:`ModelChoice`
splits it by model, runs each part through its model (sessions loaded lazily, one per model
file, the least recently used dropped past ``max_models``) and puts the results back in the
batch's order. Which organization uses which model is read from the database at most once per
``refresh_seconds``, so a promotion or rollback made by another process (a worker) is followed
within that time without a query per batch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.detection.imaging import BadImage
from layerfleet.detection.model_versions import current_model_files
from layerfleet.detection.runtime import Detector, FrameResult

log = logging.getLogger(__name__)

REFRESH_SECONDS = 10.0
MAX_MODELS = 16


class ModelChoice:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], media_root: Path, *,
                 refresh_seconds: float = REFRESH_SECONDS, max_models: int = MAX_MODELS,
                 threads: int | None = None) -> None:
        self.sessionmaker = sessionmaker
        self.media_root = media_root
        self.refresh_seconds = refresh_seconds
        self.max_models = max_models
        self.threads = threads
        self._files: dict[int, str] = {}
        self._read_at = -float("inf")
        self._detectors: OrderedDict[Path, Detector] = OrderedDict()
        self._broken: set[Path] = set()  # files that would not load: not tried on every batch

    def forget(self) -> None:
        """Read the organizations' models again before the next batch (a promotion here)."""
        self._read_at = -float("inf")

    async def files(self) -> dict[int, str]:
        if time.monotonic() - self._read_at >= self.refresh_seconds:
            try:
                async with self.sessionmaker() as session:
                    files = await current_model_files(session)
            except Exception:
                # Frames are still scored, with the models known so far; the read is tried again
                # at the next refresh.
                log.warning("could not read which organizations use which model", exc_info=True)
                self._read_at = time.monotonic()
                return self._files
            if files != self._files:
                self._broken.clear()
            self._files = files
            self._read_at = time.monotonic()
        return self._files

    async def model_for(self, organization_id: int) -> Path | None:
        """The organization's model file, or None for the shipped model."""
        relative = (await self.files()).get(organization_id)
        return self.media_root / relative if relative else None

    async def detect(self, shipped: Detector, frames: Sequence[tuple[int, bytes]]) -> list[FrameResult | BadImage]:
        """Score ``(organization id, jpeg)`` frames, each with its organization's model."""
        files = await self.files()
        groups: dict[Path | None, list[int]] = {}
        for index, (organization_id, _) in enumerate(frames):
            relative = files.get(organization_id)
            groups.setdefault(self.media_root / relative if relative else None, []).append(index)
        return await asyncio.to_thread(self.score_grouped, shipped, frames, groups)

    def score_grouped(self, shipped: Detector, frames: Sequence[tuple[int, bytes]],
                      groups: dict[Path | None, list[int]]) -> list[FrameResult | BadImage]:
        """Blocking: ``groups`` maps a model file (None: the shipped model) to its frames' indices."""
        # By session, not by file: frames whose model would not load join the shipped model's batch.
        by_detector: dict[int, tuple[Detector, list[int]]] = {}
        for path, indices in groups.items():
            detector = (self._detector(path) if path is not None else None) or shipped
            by_detector.setdefault(id(detector), (detector, []))[1].extend(indices)
        results: list[FrameResult | BadImage | None] = [None] * len(frames)
        for detector, indices in by_detector.values():
            for index, result in zip(indices, detector.detect([frames[i][1] for i in indices]), strict=True):
                results[index] = result
        return [result for result in results if result is not None]

    def _detector(self, path: Path) -> Detector | None:
        """The session of a fine-tuned model; None (the shipped model scores) when its file is
        gone or unreadable, which is logged once per file."""
        detector = self._detectors.get(path)
        if detector is not None:
            self._detectors.move_to_end(path)
            return detector
        if path in self._broken:
            return None
        try:
            detector = Detector(path, threads=self.threads)
        except Exception:
            log.exception("the fine-tuned model %s could not be loaded; its organization's frames are scored "
                          "with the shipped model", path)
            self._broken.add(path)
            return None
        self._detectors[path] = detector
        while len(self._detectors) > self.max_models:
            self._detectors.popitem(last=False)
        return detector
