"""Fine-tuned detector models per organization: each version with its figures, and the one an
organization scores its frames with (none: the shipped model).

The model files live under the data directory's media folder (``orgs/{id}/models/``), never in
the repository; a row keeps the path relative to the media root."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from layerfleet.accounts.models import new_uuid
from layerfleet.database import Base, UTCDateTime, utcnow


class ModelStatus(enum.StrEnum):
    QUEUED = "queued"
    TRAINING = "training"
    EVALUATED = "evaluated"  # figures known, the promotion rule not yet applied
    PROMOTED = "promoted"  # in use, or in use before a newer promotion (a rollback returns to it)
    REJECTED = "rejected"  # failed the promotion rule: kept for its figures
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"  # the job could not train or evaluate (``error`` says why)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.QUEUED.value, index=True)
    # The model it was fine-tuned from: "shipped:<sha256 prefix>" of the shipped ONNX file.
    base: Mapped[str] = mapped_column(String(200))
    file_path: Mapped[str | None] = mapped_column(String(512), nullable=True)  # relative to the media root
    # Image AUROC on our val set (a) and on the farm's held-back answers (b), for this model and
    # for the shipped one on the same images.
    val_auroc: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_auroc_shipped: Mapped[float | None] = mapped_column(Float, nullable=True)
    heldout_auroc: Mapped[float | None] = mapped_column(Float, nullable=True)
    heldout_auroc_shipped: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Evidence counts, the full evaluation, the decision's reason, and the training log's tail.
    figures: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    decision: Mapped[str | None] = mapped_column(String(500), nullable=True)
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rolled_back_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class OrganizationModel(Base):
    """The model an organization's frames are scored with; no row, or no version: the shipped one."""

    __tablename__ = "organization_models"

    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"),
                                                 primary_key=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"),
                                                         nullable=True)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


async def current_model_files(session: AsyncSession, organization_ids: Iterable[int] | None = None
                              ) -> dict[int, str]:
    """Organization id → its current model's file (relative to the media root), for those
    that use a fine-tuned model; ``None``: every organization."""
    query = (select(OrganizationModel.organization_id, ModelVersion.file_path)
             .join(ModelVersion, ModelVersion.id == OrganizationModel.model_version_id)
             .where(ModelVersion.file_path.is_not(None)))
    if organization_ids is not None:
        query = query.where(OrganizationModel.organization_id.in_(set(organization_ids)))
    return {org: path for org, path in (await session.execute(query)).all() if path}
