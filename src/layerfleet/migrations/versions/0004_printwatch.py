"""PrintWatch inference API: API keys, their devices, notification requests and feedback.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "printwatch_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("device_limit", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_printwatch_keys_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_printwatch_keys_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_printwatch_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_printwatch_keys_key_hash")),
    )
    with op.batch_alter_table("printwatch_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_printwatch_keys_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_printwatch_keys_user_id"), ["user_id"], unique=False)

    op.create_table(
        "printwatch_devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("printer_id", sa.String(length=64), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_call_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("client_version", sa.String(length=32), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=True),
        sa.Column("frames_scored", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.String(length=64), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("last_score", sa.Float(), nullable=True),
        sa.Column("last_scored_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("action_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["printwatch_keys.id"],
            name=op.f("fk_printwatch_devices_key_id_printwatch_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_printwatch_devices")),
        sa.UniqueConstraint("printer_id", name=op.f("uq_printwatch_devices_printer_id")),
    )
    with op.batch_alter_table("printwatch_devices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_printwatch_devices_key_id"), ["key_id"], unique=False)

    op.create_table(
        "printwatch_notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("printer_id", sa.String(length=64), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["printwatch_keys.id"],
            name=op.f("fk_printwatch_notifications_key_id_printwatch_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_printwatch_notifications")),
    )
    with op.batch_alter_table("printwatch_notifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_printwatch_notifications_key_id"), ["key_id"], unique=False)

    op.create_table(
        "printwatch_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("printer_id", sa.String(length=64), nullable=False),
        sa.Column("classification", sa.String(length=64), nullable=True),
        sa.Column("image_path", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["printwatch_keys.id"],
            name=op.f("fk_printwatch_feedback_key_id_printwatch_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_printwatch_feedback")),
    )
    with op.batch_alter_table("printwatch_feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_printwatch_feedback_key_id"), ["key_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("printwatch_feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_printwatch_feedback_key_id"))

    op.drop_table("printwatch_feedback")
    with op.batch_alter_table("printwatch_notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_printwatch_notifications_key_id"))

    op.drop_table("printwatch_notifications")
    with op.batch_alter_table("printwatch_devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_printwatch_devices_key_id"))

    op.drop_table("printwatch_devices")
    with op.batch_alter_table("printwatch_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_printwatch_keys_user_id"))
        batch_op.drop_index(batch_op.f("ix_printwatch_keys_organization_id"))

    op.drop_table("printwatch_keys")
