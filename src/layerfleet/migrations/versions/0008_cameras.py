"""Every camera watched: per-camera scoring state and masks (issue 19).

A printer's cameras other than the primary (``printer_cameras``: the latest picture, the
scoring claim, the ignore masks; the primary keeps its columns on ``printers``); which camera
a scored frame came from; and each camera's latest evidence on the print, which the print's
one decision state combines.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "printer_cameras",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("printer_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("nozzle", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("pic_path", sa.String(length=512), nullable=True),
        sa.Column("pic_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_scored_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ignore_masks", sa.JSON(), nullable=False, server_default="[]"),
        sa.ForeignKeyConstraint(["printer_id"], ["printers.id"], name=op.f("fk_printer_cameras_printer_id_printers"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_printer_cameras")),
        sa.UniqueConstraint("printer_id", "name", name=op.f("uq_printer_cameras_printer_id")),
    )
    with op.batch_alter_table("prediction_frames", schema=None) as batch_op:
        batch_op.add_column(sa.Column("camera", sa.String(length=64), nullable=True))
    with op.batch_alter_table("prints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("detection_cameras", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prints", schema=None) as batch_op:
        batch_op.drop_column("detection_cameras")
    with op.batch_alter_table("prediction_frames", schema=None) as batch_op:
        batch_op.drop_column("camera")
    op.drop_table("printer_cameras")
