"""Agents: one-time verification codes (linking) and printer events.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "one_time_verification_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=6), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("printer_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["printer_id"],
            ["printers.id"],
            name=op.f("fk_one_time_verification_codes_printer_id_printers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_one_time_verification_codes_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_one_time_verification_codes")),
    )
    with op.batch_alter_table("one_time_verification_codes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_one_time_verification_codes_code"), ["code"], unique=False)
        batch_op.create_index(batch_op.f("ix_one_time_verification_codes_printer_id"), ["printer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_one_time_verification_codes_user_id"), ["user_id"], unique=False)

    op.create_table(
        "printer_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("printer_id", sa.Integer(), nullable=False),
        sa.Column("print_id", sa.Integer(), nullable=True),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("event_class", sa.String(length=16), nullable=False),
        sa.Column("event_title", sa.String(length=256), nullable=False),
        sa.Column("event_text", sa.Text(), nullable=False),
        sa.Column("info_url", sa.String(length=2048), nullable=True),
        sa.Column("image_path", sa.String(length=512), nullable=True),
        sa.Column("notify", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_printer_events_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["print_id"], ["prints.id"], name=op.f("fk_printer_events_print_id_prints"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["printer_id"], ["printers.id"], name=op.f("fk_printer_events_printer_id_printers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_printer_events")),
    )
    with op.batch_alter_table("printer_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_printer_events_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_printer_events_print_id"), ["print_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_printer_events_printer_id"), ["printer_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("printer_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_printer_events_printer_id"))
        batch_op.drop_index(batch_op.f("ix_printer_events_print_id"))
        batch_op.drop_index(batch_op.f("ix_printer_events_organization_id"))

    op.drop_table("printer_events")
    with op.batch_alter_table("one_time_verification_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_one_time_verification_codes_user_id"))
        batch_op.drop_index(batch_op.f("ix_one_time_verification_codes_printer_id"))
        batch_op.drop_index(batch_op.f("ix_one_time_verification_codes_code"))

    op.drop_table("one_time_verification_codes")
