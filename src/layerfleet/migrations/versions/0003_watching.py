"""Watching prints: per-frame prediction records, alerts, detector state, ignore masks.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 22:52:44.447852
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prediction_frames",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("print_id", sa.Integer(), nullable=False),
        sa.Column("frame_number", sa.Integer(), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("p", sa.Float(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("ewm_mean", sa.Float(), nullable=False),
        sa.Column("rolling_mean_short", sa.Float(), nullable=False),
        sa.Column("rolling_mean_long", sa.Float(), nullable=False),
        sa.Column("normalized_p", sa.Float(), nullable=False),
        sa.Column("boxes", sa.JSON(), nullable=False),
        sa.Column("ignored_boxes", sa.Integer(), nullable=False),
        sa.Column("image_path", sa.String(length=512), nullable=False),
        sa.Column("tagged_image_path", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(
            ["print_id"], ["prints.id"], name=op.f("fk_prediction_frames_print_id_prints"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_frames")),
    )
    with op.batch_alter_table("prediction_frames", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prediction_frames_print_id"), ["print_id"], unique=False)

    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("printer_id", sa.Integer(), nullable=False),
        sa.Column("print_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("normalized_p", sa.Float(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("frame_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["frame_id"],
            ["prediction_frames.id"],
            name=op.f("fk_alerts_frame_id_prediction_frames"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_alerts_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["print_id"], ["prints.id"], name=op.f("fk_alerts_print_id_prints"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["printer_id"], ["printers.id"], name=op.f("fk_alerts_printer_id_printers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alerts_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_alerts_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_alerts_print_id"), ["print_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_alerts_printer_id"), ["printer_id"], unique=False)

    with op.batch_alter_table("printers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ignore_masks", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("detection_long_mean", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("detection_lifetime_frames", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("last_scored_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("prints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("detection_frames", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("detection_p", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("detection_ewm", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("detection_short_mean", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("detection_last_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("watched_seconds", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("prints", schema=None) as batch_op:
        batch_op.drop_column("watched_seconds")
        batch_op.drop_column("detection_last_at")
        batch_op.drop_column("detection_short_mean")
        batch_op.drop_column("detection_ewm")
        batch_op.drop_column("detection_p")
        batch_op.drop_column("detection_frames")

    with op.batch_alter_table("printers", schema=None) as batch_op:
        batch_op.drop_column("last_scored_at")
        batch_op.drop_column("detection_lifetime_frames")
        batch_op.drop_column("detection_long_mean")
        batch_op.drop_column("ignore_masks")

    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_printer_id"))
        batch_op.drop_index(batch_op.f("ix_alerts_print_id"))
        batch_op.drop_index(batch_op.f("ix_alerts_organization_id"))
        batch_op.drop_index(batch_op.f("ix_alerts_created_at"))

    op.drop_table("alerts")
    with op.batch_alter_table("prediction_frames", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prediction_frames_print_id"))

    op.drop_table("prediction_frames")
