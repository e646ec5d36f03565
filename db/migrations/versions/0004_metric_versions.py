"""Metric rows per metric version: a job may hold the rows of the version it ran with and of newer versions
re-scored from its stored maps (`iad rescore`), so the unique key of `metrics` gains `metric_version`.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("metrics") as batch:
        batch.drop_constraint("uq_metrics_job_id", type_="unique")
        batch.create_unique_constraint("uq_metrics_job_id", ["job_id", "category", "name", "metric_version"])


def downgrade() -> None:
    # Re-scored rows (every version but the one each job ran with) cannot fit the old key: drop them first.
    op.execute(
        "DELETE FROM metrics WHERE metric_version <> "
        "(SELECT run_records.metric_version FROM run_records WHERE run_records.job_id = metrics.job_id)"
    )
    with op.batch_alter_table("metrics") as batch:
        batch.drop_constraint("uq_metrics_job_id", type_="unique")
        batch.create_unique_constraint("uq_metrics_job_id", ["job_id", "category", "name"])
