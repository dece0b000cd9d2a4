"""Video evidence: kept frames and compiled videos of prints, uploaded timelapses.

The durable state of each compilation or analysis (``timelapse_jobs``); on prints, the time of
the last kept frame and when keeping stopped for want of disk space; and prints without a
printer (an uploaded timelapse that names none).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 07:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "timelapse_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("print_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("source_path", sa.String(length=512), nullable=True),
        sa.Column("speed", sa.Float(), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("frames_removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("videos_removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"],
                                name=op.f("fk_timelapse_jobs_organization_id_organizations"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["print_id"], ["prints.id"], name=op.f("fk_timelapse_jobs_print_id_prints"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_timelapse_jobs")),
        sa.UniqueConstraint("uuid", name=op.f("uq_timelapse_jobs_uuid")),
    )
    with op.batch_alter_table("timelapse_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_timelapse_jobs_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_timelapse_jobs_print_id"), ["print_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_timelapse_jobs_status"), ["status"], unique=False)

    with op.batch_alter_table("prints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("timelapse_frame_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("timelapse_stopped_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.alter_column("printer_id", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    # Prints without a printer cannot stay once the column is required again.
    op.execute("DELETE FROM prints WHERE printer_id IS NULL")
    with op.batch_alter_table("prints", schema=None) as batch_op:
        batch_op.alter_column("printer_id", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column("timelapse_stopped_at")
        batch_op.drop_column("timelapse_frame_at")

    with op.batch_alter_table("timelapse_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_timelapse_jobs_status"))
        batch_op.drop_index(batch_op.f("ix_timelapse_jobs_print_id"))
        batch_op.drop_index(batch_op.f("ix_timelapse_jobs_organization_id"))
    op.drop_table("timelapse_jobs")
