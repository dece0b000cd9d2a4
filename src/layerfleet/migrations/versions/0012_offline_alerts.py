"""PrinterOffline is raised from the database, not from a timer in one server process: a
printer remembers the silence (its last-heard time) it was raised for, so every process may
look and only one raises it, and a restart loses none.

Printers in a print at upgrade are taken as told about their current silence: the timers of
the older server handled it (or it is long past).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # recreate="never": rebuilding printers on SQLite would cascade-delete what belongs to them.
    with op.batch_alter_table("printers", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("offline_alert_heard_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE printers SET offline_alert_heard_at = status_updated_at WHERE current_print_id IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("printers", schema=None, recreate="never") as batch_op:  # SQLite 3.35+
        batch_op.drop_column("offline_alert_heard_at")
