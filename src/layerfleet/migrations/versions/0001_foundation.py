"""Foundation: organizations, users, API tokens, web sessions, printers, prints, feedback, G-code files.

Revision ID: 0001
Revises:
Create Date: 2026-11-21 20:01:22.894746
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        sa.UniqueConstraint("uuid", name=op.f("uq_organizations_uuid")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("consented_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dh_balance", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_users_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        sa.UniqueConstraint("uuid", name=op.f("uq_users_uuid")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_users_organization_id"), ["organization_id"], unique=False)

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_tokens_key_hash")),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_user_id"), ["user_id"], unique=False)

    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_web_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_web_sessions_key_hash")),
    )
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_sessions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "printers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("auth_token", sa.String(length=64), nullable=False),
        sa.Column("action_on_failure", sa.String(length=8), nullable=False),
        sa.Column("watching_enabled", sa.Boolean(), nullable=False),
        sa.Column("tools_off_on_pause", sa.Boolean(), nullable=False),
        sa.Column("bed_off_on_pause", sa.Boolean(), nullable=False),
        sa.Column("retract_on_pause", sa.Float(), nullable=False),
        sa.Column("lift_z_on_pause", sa.Float(), nullable=False),
        sa.Column("detective_sensitivity", sa.Float(), nullable=False),
        sa.Column("status", sa.JSON(), nullable=True),
        sa.Column("status_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("pic_path", sa.String(length=512), nullable=True),
        sa.Column("pic_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("normalized_p", sa.Float(), nullable=False),
        sa.Column("current_print_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_printers_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_printers_user_id_users"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_printers")),
        sa.UniqueConstraint("auth_token", name=op.f("uq_printers_auth_token")),
        sa.UniqueConstraint("uuid", name=op.f("uq_printers_uuid")),
    )
    with op.batch_alter_table("printers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_printers_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_printers_user_id"), ["user_id"], unique=False)

    op.create_table(
        "gcode_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("printer_id", sa.Integer(), nullable=True),
        sa.Column("filename", sa.String(length=1024), nullable=False),
        sa.Column("safe_filename", sa.String(length=1024), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=True),
        sa.Column("file_path", sa.String(length=512), nullable=True),
        sa.Column("num_bytes", sa.BigInteger(), nullable=True),
        sa.Column("agent_signature", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_gcode_files_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["printer_id"], ["printers.id"], name=op.f("fk_gcode_files_printer_id_printers"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_gcode_files_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gcode_files")),
    )
    with op.batch_alter_table("gcode_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gcode_files_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_gcode_files_user_id"), ["user_id"], unique=False)

    op.create_table(
        "prints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("printer_id", sa.Integer(), nullable=False),
        sa.Column("gcode_file_id", sa.Integer(), nullable=True),
        sa.Column("ext_id", sa.BigInteger(), nullable=True),
        sa.Column("filename", sa.String(length=1024), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alert_acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alert_muted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alert_overwrite", sa.String(length=16), nullable=True),
        sa.Column("video_path", sa.String(length=512), nullable=True),
        sa.Column("tagged_video_path", sa.String(length=512), nullable=True),
        sa.Column("poster_path", sa.String(length=512), nullable=True),
        sa.Column("prediction_json_path", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(
            ["gcode_file_id"], ["gcode_files.id"], name=op.f("fk_prints_gcode_file_id_gcode_files"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_prints_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["printer_id"], ["printers.id"], name=op.f("fk_prints_printer_id_printers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prints")),
        sa.UniqueConstraint("uuid", name=op.f("uq_prints_uuid")),
    )
    with op.batch_alter_table("prints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prints_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_prints_printer_id"), ["printer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_prints_started_at"), ["started_at"], unique=False)

    op.create_table(
        "print_shot_feedbacks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("print_id", sa.Integer(), nullable=False),
        sa.Column("image_path", sa.String(length=512), nullable=False),
        sa.Column("answer", sa.String(length=16), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["print_id"], ["prints.id"], name=op.f("fk_print_shot_feedbacks_print_id_prints"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_print_shot_feedbacks")),
    )
    with op.batch_alter_table("print_shot_feedbacks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_print_shot_feedbacks_print_id"), ["print_id"], unique=False)

    # printers and prints refer to each other: this key can only exist once both tables do.
    with op.batch_alter_table("printers", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_printers_current_print_id_prints"),
            "prints",
            ["current_print_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("printers", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_printers_current_print_id_prints"), type_="foreignkey")
    with op.batch_alter_table("print_shot_feedbacks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_print_shot_feedbacks_print_id"))

    op.drop_table("print_shot_feedbacks")
    with op.batch_alter_table("prints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prints_started_at"))
        batch_op.drop_index(batch_op.f("ix_prints_printer_id"))
        batch_op.drop_index(batch_op.f("ix_prints_organization_id"))

    op.drop_table("prints")
    with op.batch_alter_table("gcode_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gcode_files_user_id"))
        batch_op.drop_index(batch_op.f("ix_gcode_files_organization_id"))

    op.drop_table("gcode_files")
    with op.batch_alter_table("printers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_printers_user_id"))
        batch_op.drop_index(batch_op.f("ix_printers_organization_id"))

    op.drop_table("printers")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_user_id"))

    op.drop_table("api_tokens")
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_sessions_user_id"))

    op.drop_table("web_sessions")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_organization_id"))

    op.drop_table("users")
    op.drop_table("organizations")
