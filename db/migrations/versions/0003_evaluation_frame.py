"""The evaluation frame of a job (`ad_core.frame`): on which pixels its pixel metrics were computed.

Existing jobs were evaluated in each method's own geometry (resize + centre crop), so they get 'native';
new jobs record their frame (default 'full:256', the full image at 256 x 256 px).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("frame", sa.String(length=32), nullable=False, server_default="native"))


def downgrade() -> None:
    # Not a batch operation: on SQLite that recreates `jobs`, and dropping the old table with foreign keys on
    # cascades into every result row. A plain DROP COLUMN (SQLite >= 3.35, PostgreSQL) keeps them.
    op.drop_column("jobs", "frame")
