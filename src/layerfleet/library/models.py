"""The part library: parts and their versions (uploaded STL files), slicer settings presets,
slice jobs, and builds (part versions placed on a plate, sliced together for one printer)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from layerfleet.accounts.models import new_uuid
from layerfleet.database import Base, UTCDateTime, utcnow


class SliceStatus(enum.StrEnum):
    """The Eiger spec's slice job states, in the order a job walks them."""

    REQUESTED = "REQUESTED"
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    CANCELED = "CANCELED"

    @property
    def finished(self) -> bool:
        return self in (SliceStatus.COMPLETED, SliceStatus.ERROR, SliceStatus.CANCELED)


class SettingsPreset(Base):
    """A slicer profile (PrusaSlicer ``.ini``). The built-in default has no organization and
    no text: it is the profile shipped in the package, read at slice time."""

    __tablename__ = "settings_presets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    organization_id: Mapped[int | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=True, index=True
    )
    title: Mapped[str] = mapped_column(String(200))
    ini_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    material: Mapped[str] = mapped_column(String(64), default="PLA")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SlicedOutput:
    """What the slicer made of a part version or a build: its G-code and PrusaSlicer's estimates."""

    gcode_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    estimated_print_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    filament_cm3: Mapped[float | None] = mapped_column(Float, nullable=True)
    filament_g: Mapped[float | None] = mapped_column(Float, nullable=True)
    layer_count: Mapped[int | None] = mapped_column(Integer, nullable=True)

    @property
    def sliced(self) -> bool:
        return self.gcode_path is not None


class Part(Base):
    __tablename__ = "parts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    folder_uuid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    cloned_from_id: Mapped[int | None] = mapped_column(ForeignKey("parts.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    versions: Mapped[list[PartVersion]] = relationship(
        back_populates="part", order_by="PartVersion.version_number", lazy="selectin",
        foreign_keys="PartVersion.part_id",
    )
    cloned_from: Mapped[Part | None] = relationship(remote_side=[id], lazy="selectin")


class PartVersion(SlicedOutput, Base):
    """One uploaded STL of a part, with what inspection and the slicer found out about it."""

    __tablename__ = "part_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    part_id: Mapped[int] = mapped_column(ForeignKey("parts.id", ondelete="CASCADE"), index=True)
    version_number: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    settings_preset_id: Mapped[int] = mapped_column(ForeignKey("settings_presets.id", ondelete="RESTRICT"))
    # scale, euler {x, y, z} in degrees, units ("mm"): as the spec's PartVersionView.settings.
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    stl_path: Mapped[str] = mapped_column(String(512))
    stl_bytes: Mapped[int] = mapped_column(BigInteger)
    stl_sha256: Mapped[str] = mapped_column(String(64))
    triangles: Mapped[int] = mapped_column(Integer)
    size_mm: Mapped[list[float]] = mapped_column(JSON)
    volume_mm3: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    part: Mapped[Part] = relationship(back_populates="versions", foreign_keys=[part_id], lazy="joined")
    settings_preset: Mapped[SettingsPreset] = relationship(lazy="joined")


class SliceJob(Base):
    """Slicing of one part version or of one build's plate; runs on the job queue."""

    __tablename__ = "slice_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    part_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("part_versions.id", ondelete="CASCADE"), nullable=True, index=True
    )
    build_id: Mapped[int | None] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"), nullable=True,
                                                 index=True)
    status: Mapped[str] = mapped_column(String(16), default=SliceStatus.REQUESTED.value, index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Build(SlicedOutput, Base):
    """Part versions placed on one plate, sliced together into the G-code a printer runs."""

    __tablename__ = "builds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    title: Mapped[str] = mapped_column(String(255))
    settings_preset_id: Mapped[int] = mapped_column(ForeignKey("settings_presets.id", ondelete="RESTRICT"))
    approved: Mapped[bool] = mapped_column(Boolean, default=False)
    blacksmith_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    part_count: Mapped[int] = mapped_column(Integer, default=0, index=True)
    preview_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow, index=True)

    items: Mapped[list[BuildItem]] = relationship(
        back_populates="build", order_by="BuildItem.id", lazy="selectin", cascade="all, delete-orphan",
        passive_deletes=True,
    )
    settings_preset: Mapped[SettingsPreset] = relationship(lazy="joined")


class BuildItem(Base):
    """One part instance on a build's plate: a part version at a pose (mm, degrees)."""

    __tablename__ = "build_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"), index=True)
    part_version_id: Mapped[int] = mapped_column(ForeignKey("part_versions.id", ondelete="RESTRICT"), index=True)
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    theta: Mapped[int] = mapped_column(Integer, default=0)

    build: Mapped[Build] = relationship(back_populates="items")
    part_version: Mapped[PartVersion] = relationship(lazy="selectin")
