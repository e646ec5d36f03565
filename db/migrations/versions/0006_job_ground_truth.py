"""The ground truth a job trains and is evaluated against: 'dataset' (the dataset's own files, every job so
far) or an annotation set's `gt_version` (`ad_core.annotations.gt_version_key`), which the worker resolves
to the set's entries (`db.annotations.truths_for_version`).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("gt_version", sa.String(length=64), nullable=False, server_default="dataset"))


def downgrade() -> None:
    # A plain DROP COLUMN (not a batch operation, which recreates `jobs` on SQLite and cascades into results).
    op.drop_column("jobs", "gt_version")
