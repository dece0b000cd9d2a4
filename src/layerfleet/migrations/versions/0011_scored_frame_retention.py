"""Retention of scored-frame pictures: a frame's picture may be gone (its row stays for the
detection graph), and a print remembers when its scored frames' pictures were pruned.

On SQLite making a column nullable rebuilds the table, and dropping the old
``prediction_frames`` with foreign keys on sets every ``alerts.frame_id`` to NULL (its ON
DELETE rule); the links are put back afterwards. ``prints`` is never rebuilt: dropping it would
delete, by cascade, every row that belongs to a print.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 10:30:00
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


@contextmanager
def _alert_frames_kept() -> Iterator[None]:
    if op.get_bind().dialect.name != "sqlite":
        yield
        return
    op.execute("CREATE TEMP TABLE _alert_frames AS SELECT id, frame_id FROM alerts WHERE frame_id IS NOT NULL")
    yield
    op.execute("UPDATE alerts SET frame_id = (SELECT k.frame_id FROM _alert_frames k WHERE k.id = alerts.id) "
               "WHERE id IN (SELECT id FROM _alert_frames)")
    op.execute("DROP TABLE _alert_frames")


def upgrade() -> None:
    with _alert_frames_kept(), op.batch_alter_table("prediction_frames", schema=None) as batch_op:
        batch_op.alter_column("image_path", existing_type=sa.String(length=512), nullable=True)
    with op.batch_alter_table("prints", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("scored_frames_pruned_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prints", schema=None, recreate="never") as batch_op:  # SQLite 3.35+
        batch_op.drop_column("scored_frames_pruned_at")
    # A pruned frame's picture is gone either way; the older schema wants a path.
    op.execute("UPDATE prediction_frames SET image_path = '' WHERE image_path IS NULL")
    with _alert_frames_kept(), op.batch_alter_table("prediction_frames", schema=None) as batch_op:
        batch_op.alter_column("image_path", existing_type=sa.String(length=512), nullable=False)
