"""Fine-tuned models of an organization: starting a fine-tuning, the promotion rule, rollback.

A fine-tuned model is promoted for its organization only when, against the shipped model, it
is no worse than ``MAX_VAL_LOSS`` (one point) of image AUROC on our val set and better on the
farm's held-back answers. Promotion and rollback change one row (``organization_models``);
the pipeline follows within its refresh time (``detection.model_choice``)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import Role, User
from layerfleet.database import utcnow
from layerfleet.detection.model_versions import ModelStatus, ModelVersion, OrganizationModel
from layerfleet.detection.runtime import shipped_model_path
from layerfleet.errors import Conflict, Forbidden, NotFound
from layerfleet.finetuning import evidence
from layerfleet.media import media_root, organization_prefix

MAX_VAL_LOSS = 0.01  # AUROC on our val set may drop by at most one point
ACTIVE = (ModelStatus.QUEUED.value, ModelStatus.TRAINING.value)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(val: float | None, val_shipped: float | None, heldout: float | None,
           heldout_shipped: float | None) -> Decision:
    """The promotion rule (see the module's docstring); a figure that could not be measured refuses."""
    figures = (val, val_shipped, heldout, heldout_shipped)
    if any(f is None or math.isnan(f) for f in figures):
        return Decision(False, "Not every figure could be measured (a set without both failures and non-failures).")
    assert val is not None and val_shipped is not None and heldout is not None and heldout_shipped is not None
    if val < val_shipped - MAX_VAL_LOSS:
        return Decision(False, f"Worse on our val set: AUROC {val:.3f} against the shipped model's "
                               f"{val_shipped:.3f} (at most {MAX_VAL_LOSS:.2f} lower allowed).")
    if heldout <= heldout_shipped:
        return Decision(False, f"Not better on this farm's held-back answers: AUROC {heldout:.3f} against the "
                               f"shipped model's {heldout_shipped:.3f}.")
    return Decision(True, f"Val AUROC {val:.3f} (shipped {val_shipped:.3f}); held-back AUROC {heldout:.3f} "
                          f"(shipped {heldout_shipped:.3f}).")


@cache
def _sha256(path: Path, size: int, mtime: float) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_model_name() -> str:
    """What a fine-tuned model was fine-tuned from: the shipped file's digest tells versions apart."""
    path = shipped_model_path()
    stat = path.stat()
    return f"shipped:{_sha256(path, stat.st_size, stat.st_mtime)[:16]}"


def model_file(organization_id: int, version_uuid: str) -> str:
    """Where a version's model lives, relative to the media root (the data directory, never git)."""
    return f"{organization_prefix(organization_id)}models/{version_uuid}.onnx"


def require_admin(user: User) -> None:
    if not user.role_enum.allows(Role.ADMIN):
        raise Forbidden("Only an organization's admins may fine-tune or roll back its detector.")


async def start(session: AsyncSession, organization_id: int, data_dir: Path, *,
                created_by: User | None = None) -> ModelVersion:
    """A QUEUED version for the organization (committed by the caller; the job poller hands it
    to the queue). Refused when one is already queued or training, or with too little evidence.
    The caller checks who may (:func:`require_admin`; the command line is the server's admin)."""
    running = (await session.execute(select(ModelVersion.id).where(
        ModelVersion.organization_id == organization_id, ModelVersion.status.in_(ACTIVE)).limit(1))).first()
    if running is not None:
        raise Conflict("A fine-tuning of this organization's detector is already queued or running.")
    frames = await evidence.collect(session, organization_id, media_root(data_dir))
    evidence.check_enough(frames)
    version = ModelVersion(organization_id=organization_id, created_by_id=created_by.id if created_by else None,
                           status=ModelStatus.QUEUED.value, base=shipped_model_name(), figures={})
    session.add(version)
    await session.flush()
    return version


async def versions(session: AsyncSession, organization_id: int) -> list[ModelVersion]:
    return list((await session.execute(select(ModelVersion).where(ModelVersion.organization_id == organization_id)
                                       .order_by(ModelVersion.id.desc()))).scalars())


async def current(session: AsyncSession, organization_id: int) -> ModelVersion | None:
    """The fine-tuned version the organization uses; None: the shipped model."""
    row = await session.get(OrganizationModel, organization_id)
    if row is None or row.model_version_id is None:
        return None
    return await session.get(ModelVersion, row.model_version_id)


async def _use(session: AsyncSession, organization_id: int, version_id: int | None, at: datetime) -> None:
    row = await session.get(OrganizationModel, organization_id, with_for_update=True)
    if row is None:
        session.add(OrganizationModel(organization_id=organization_id, model_version_id=version_id, changed_at=at))
    else:
        row.model_version_id = version_id
        row.changed_at = at


async def promote(session: AsyncSession, version: ModelVersion) -> None:
    now = utcnow()
    version.status = ModelStatus.PROMOTED.value
    version.promoted_at = now
    await _use(session, version.organization_id, version.id, now)


async def rollback(session: AsyncSession, organization_id: int) -> ModelVersion | None:
    """One step back: the current fine-tuned model is marked rolled back and the organization
    returns to the version promoted before it, or to the shipped model. Returns what is now used."""
    now_used = await current(session, organization_id)
    if now_used is None:
        raise Conflict("This organization already uses the shipped model: there is nothing to roll back.")
    now = utcnow()
    now_used.status = ModelStatus.ROLLED_BACK.value
    now_used.rolled_back_at = now
    previous = (await session.execute(select(ModelVersion).where(
        ModelVersion.organization_id == organization_id, ModelVersion.status == ModelStatus.PROMOTED.value,
        ModelVersion.id != now_used.id).order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
        .limit(1))).scalar_one_or_none()
    await _use(session, organization_id, previous.id if previous is not None else None, now)
    return previous


async def version_of(session: AsyncSession, organization_id: int, version_uuid: str) -> ModelVersion:
    version = (await session.execute(select(ModelVersion).where(
        ModelVersion.uuid == version_uuid, ModelVersion.organization_id == organization_id))).scalar_one_or_none()
    if version is None:
        raise NotFound("No such model version.")
    return version


def finite(figures: Any) -> Any:
    """JSON without NaN or infinities (PostgreSQL's JSON refuses them): such a figure becomes null."""
    if isinstance(figures, dict):
        return {str(k): finite(v) for k, v in figures.items()}
    if isinstance(figures, list):
        return [finite(v) for v in figures]
    if isinstance(figures, float) and not math.isfinite(figures):
        return None
    return figures
