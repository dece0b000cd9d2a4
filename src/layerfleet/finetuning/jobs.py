"""Fine-tuning jobs on the job queue (kind ``finetune``, a queue of their own).

The durable state is the ``model_versions`` row: starting a fine-tuning (the dashboard, the
API or ``layerfleet model finetune``) only adds a QUEUED row; a poller in every process that
runs these jobs hands unclaimed rows to the queue (a conditional UPDATE of ``enqueued_at``
makes one process the one that does), and the handler claims the row (QUEUED → TRAINING, a
conditional UPDATE) so a duplicate delivery finds it taken.

The training itself is ``python -m training.finetune`` in a subprocess (PyTorch, the ``train``
extra): off the event loop, out of the server's memory, and stopped at the time limit. The
handler writes the evidence for it, reads back the figures, keeps the model under the media
root and applies the promotion rule."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import shutil
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import layerfleet
from layerfleet.config import Settings
from layerfleet.database import utcnow
from layerfleet.detection.model_versions import ModelStatus, ModelVersion
from layerfleet.detection.runtime import shipped_model_path
from layerfleet.finetuning import evidence, service
from layerfleet.jobs import JobQueue, durable
from layerfleet.media import media_root

log = logging.getLogger(__name__)

FINETUNE_JOB_KIND = "finetune"
POLL_SECONDS = 2.0
LOG_TAIL = 1500
STALE_MARGIN_SECONDS = 600.0


class FinetuneFailed(Exception):
    """The job cannot produce a model; the message says why, in words for the admin page."""


def training_root() -> Path | None:
    """The source tree holding ``training/`` (fine-tuning runs from a checkout, as training does)."""
    root = Path(layerfleet.__file__).resolve().parents[2]
    return root if (root / "training" / "finetune.py").is_file() else None


def val_data(settings: Settings) -> Path | None:
    if settings.finetune_val_data is not None:
        return settings.finetune_val_data
    root = training_root()
    return root.parent / "shared" / "datasets" / "print-failures" if root is not None else None


def training_available() -> str | None:
    """Why fine-tuning cannot run in this installation, or None when it can."""
    if importlib.util.find_spec("torch") is None:
        return ("Fine-tuning needs PyTorch, the `train` extra: pip install -e '.[train]' "
                "(on the process that runs the jobs: the server, or `layerfleet worker`).")
    if training_root() is None:
        return "Fine-tuning needs the training code (training/ of the source tree) beside the package."
    return None


class FinetuneJobs:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], queue: JobQueue, settings: Settings, *,
                 workers: int, sole_worker: bool, on_change: Callable[[], None] = lambda: None) -> None:
        """``workers``: jobs this process runs at once (0: it only records them). ``sole_worker``:
        no other process runs them, so a row TRAINING at start was this process's own.
        ``on_change``: called after a promotion (this process's pipeline reads the models again)."""
        self.sessionmaker = sessionmaker
        self.queue = queue
        self.settings = settings
        self.workers = workers
        self.sole_worker = sole_worker
        self.runner = FinetuneRunner(sessionmaker, settings, on_change=on_change)
        self._hand_over = durable.HandOverLoop(self.hand_over, what="finetune", interval=POLL_SECONDS)

    async def start(self) -> None:
        if self.workers == 0:
            return
        await self.queue.start({FINETUNE_JOB_KIND: self.runner}, concurrency=self.workers)
        if self.sole_worker:
            async with self.sessionmaker() as session:
                await session.execute(update(ModelVersion).where(ModelVersion.status.in_(service.ACTIVE))
                                      .values(status=ModelStatus.QUEUED.value, enqueued_at=None))
                await session.commit()
        self._hand_over.start()

    async def close(self) -> None:
        await self._hand_over.close()
        await self.queue.close()

    def wake(self) -> None:
        """Look for new jobs now (one was just added) rather than at the next poll."""
        self._hand_over.wake()

    async def hand_over(self) -> int:
        """Enqueue the QUEUED versions nobody has handed over yet; give up on those whose worker died."""
        # A job is stopped at the time limit, so one TRAINING well past it lost its process (killed
        # with its worker): it would otherwise block the organization's next fine-tuning forever.
        dead = utcnow() - timedelta(seconds=self.settings.finetune_timeout_seconds + STALE_MARGIN_SECONDS)
        async with self.sessionmaker() as session:
            await session.execute(update(ModelVersion).where(
                ModelVersion.status == ModelStatus.TRAINING.value, ModelVersion.started_at < dead)
                .values(status=ModelStatus.FAILED.value, finished_at=utcnow(),
                        error="The process running this fine-tuning stopped; start it again."))
            await session.commit()
        waiting = (ModelVersion.status == ModelStatus.QUEUED.value) & ModelVersion.enqueued_at.is_(None)
        return await durable.hand_over(self.sessionmaker, self.queue, FINETUNE_JOB_KIND, ModelVersion, waiting,
                                       {"enqueued_at": utcnow()}, limit=20)


class FinetuneRunner:
    """The queue's handler for fine-tuning jobs; idempotent (see the module's docstring)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.on_change = on_change

    async def __call__(self, version_uuid: str) -> None:
        version_id = await self._claim(version_uuid)
        if version_id is None:
            return
        work = self.settings.data_dir / "finetune" / version_uuid
        try:
            figures = await self._train(version_id, work)
            await self._decide(version_id, figures)
        except Exception as exc:
            if not isinstance(exc, FinetuneFailed):
                log.exception("fine-tuning %s failed", version_uuid)
            await self._fail(version_id, str(exc) or type(exc).__name__)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _claim(self, version_uuid: str) -> int | None:
        return await durable.claim(self.sessionmaker, ModelVersion, version_uuid,
                                   ModelVersion.status == ModelStatus.QUEUED.value,
                                   {"status": ModelStatus.TRAINING.value, "started_at": utcnow()})

    async def _train(self, version_id: int, work: Path) -> dict[str, Any]:
        missing = training_available()
        if missing:
            raise FinetuneFailed(missing)
        data = val_data(self.settings)
        if data is None or not (data / "images" / "val").is_dir():
            raise FinetuneFailed(f"No val set to measure the model on at {data} (set LAYERFLEET_FINETUNE_VAL_DATA "
                                 "to a data set with images/val and labels/val).")
        root = media_root(self.settings.data_dir)
        async with self.sessionmaker() as session:
            version = await session.get(ModelVersion, version_id)
            assert version is not None
            organization_id, version_uuid = version.organization_id, version.uuid
            frames = await evidence.collect(session, organization_id, root)
        try:
            evidence.check_enough(frames)
        except Exception as exc:
            raise FinetuneFailed(str(exc)) from exc
        split: dict[str, list[dict[str, Any]]] = {"train": [], "heldout": []}
        for frame in frames:
            split["heldout" if frame.held_back else "train"].append(
                {"path": str(root / frame.image_path), "label": int(frame.failure), "source": frame.source})
        await asyncio.to_thread(_write_json, work / "evidence.json", split)
        command = [sys.executable, "-m", "training.finetune", "--base", str(shipped_model_path()),
                   "--evidence", str(work / "evidence.json"), "--val-data", str(data), "--out", str(work / "out"),
                   "--steps", str(self.settings.finetune_steps)]
        if self.settings.finetune_size:
            command += ["--size", str(self.settings.finetune_size)]
        replay = self.settings.finetune_replay_data or data
        if (replay / "images" / "train").is_dir():
            command += ["--replay-data", str(replay)]
        root_dir = training_root()
        assert root_dir is not None
        log.info("fine-tuning model %s of organization %d: %d frames to train on, %d held back", version_uuid,
                 organization_id, len(split["train"]), len(split["heldout"]))
        process = await asyncio.create_subprocess_exec(*command, cwd=root_dir, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(self.settings.finetune_timeout_seconds):
                stdout, stderr = await process.communicate()
        except (TimeoutError, asyncio.CancelledError):
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            tail = stderr.decode(errors="replace")[-LOG_TAIL:]
            raise FinetuneFailed(f"Training stopped with exit status {process.returncode}: {tail}")
        lines = stdout.decode(errors="replace").strip().splitlines()
        figures: dict[str, Any] = json.loads(lines[-1])
        figures["log"] = stderr.decode(errors="replace")[-LOG_TAIL:]
        target = service.model_file(organization_id, version_uuid)
        await asyncio.to_thread(_move, work / "out" / "model.onnx", root / target)
        async with self.sessionmaker() as session:
            version = await session.get(ModelVersion, version_id)
            assert version is not None
            version.file_path = target
            version.status = ModelStatus.EVALUATED.value
            version.val_auroc = _auroc(figures, "val", "candidate")
            version.val_auroc_shipped = _auroc(figures, "val", "shipped")
            version.heldout_auroc = _auroc(figures, "heldout", "candidate")
            version.heldout_auroc_shipped = _auroc(figures, "heldout", "shipped")
            version.figures = service.finite(figures)
            await session.commit()
        return figures

    async def _decide(self, version_id: int, figures: dict[str, Any]) -> None:
        async with self.sessionmaker() as session:
            version = await session.get(ModelVersion, version_id)
            assert version is not None
            decision = service.decide(version.val_auroc, version.val_auroc_shipped, version.heldout_auroc,
                                      version.heldout_auroc_shipped)
            version.decision = decision.reason[:500]
            version.finished_at = utcnow()
            if decision.promote:
                await service.promote(session, version)
            else:
                version.status = ModelStatus.REJECTED.value
            await session.commit()
            log.info("fine-tuned model %s of organization %d: %s (%s)", version.uuid, version.organization_id,
                     version.status, decision.reason)
        if decision.promote:
            self.on_change()

    async def _fail(self, version_id: int, error: str) -> None:
        async with self.sessionmaker() as session:
            await session.execute(update(ModelVersion).where(ModelVersion.id == version_id).values(
                status=ModelStatus.FAILED.value, error=error[:2000], finished_at=utcnow()))
            await session.commit()
        log.warning("fine-tuning model %s failed: %s", version_id, error)


def _auroc(figures: dict[str, Any], part: str, model: str) -> float | None:
    value = figures.get(part, {}).get(model, {}).get("auroc")
    return float(value) if isinstance(value, int | float) else None


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))
