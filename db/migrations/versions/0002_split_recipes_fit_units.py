"""The experiment seam: split recipes on jobs, labelled training anomalies on splits, fit units, thread count.

Existing jobs ran on the dataset as downloaded, so they get the standard recipe; their splits keep their
content hashes (the hash format did not change).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("split", sa.JSON(), nullable=False, server_default='{"kind": "standard", "seed": null}')
        )
    with op.batch_alter_table("splits") as batch:
        batch.add_column(sa.Column("train_anomalies", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("n_train_anomalous", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("category_runs") as batch:
        batch.add_column(sa.Column("fit_unit", sa.Integer(), nullable=True))
    with op.batch_alter_table("run_records") as batch:
        batch.add_column(sa.Column("threads", sa.Integer(), nullable=True))
    op.create_table(
        "fit_units",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("unit_index", sa.Integer(), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("fit_s", sa.Double(), nullable=True),
        sa.Column("peak_rss_mb", sa.Double(), nullable=True),
        sa.Column("peak_gpu_mb", sa.Double(), nullable=True),
        sa.Column("weights_source", sa.String(length=512), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_fit_units_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fit_units")),
        sa.UniqueConstraint("job_id", "unit_index", name=op.f("uq_fit_units_job_id")),
    )


def downgrade() -> None:
    op.drop_table("fit_units")
    with op.batch_alter_table("run_records") as batch:
        batch.drop_column("threads")
    with op.batch_alter_table("category_runs") as batch:
        batch.drop_column("fit_unit")
    with op.batch_alter_table("splits") as batch:
        batch.drop_column("n_train_anomalous")
        batch.drop_column("train_anomalies")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("split")
