"""Quality defects beside failures: defect scores on frames, quality alerts (issue 19).

A scored frame keeps the detector's defect score (null: the model had no defect output) and its
defect boxes; a print counts its frames with a defect and remembers its one quality warning.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prediction_frames", schema=None) as batch_op:
        batch_op.add_column(sa.Column("defect_score", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("defect_boxes", sa.JSON(), nullable=True))
    with op.batch_alter_table("prints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("defect_frames", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("quality_alerted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prints", schema=None) as batch_op:
        batch_op.drop_column("quality_alerted_at")
        batch_op.drop_column("defect_frames")
    with op.batch_alter_table("prediction_frames", schema=None) as batch_op:
        batch_op.drop_column("defect_boxes")
        batch_op.drop_column("defect_score")
