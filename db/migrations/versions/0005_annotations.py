"""Annotation: versions of an image's ground truth, annotation sets (named ground-truth versions), and the
ground truth a metric row was computed against (`metrics.gt_version`: 'dataset' for every existing row, so
existing results need no change; rows re-scored against an annotation set carry the set's key).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("metrics") as batch:
        batch.add_column(sa.Column("gt_version", sa.String(length=64), nullable=False, server_default="dataset"))
        batch.drop_constraint("uq_metrics_job_id", type_="unique")
        batch.create_unique_constraint("uq_metrics_job_id",
                                       ["job_id", "category", "name", "metric_version", "gt_version"])
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("category", sa.String(length=128), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("defect_type", sa.String(length=128), nullable=False),
        sa.Column("mask_path", sa.String(length=1024), nullable=True),
        sa.Column("mask_sha256", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_detail", sa.JSON(), nullable=False),
        sa.Column("author", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("replaces_id", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.CheckConstraint("label IN (0, 1)", name=op.f("ck_annotations_label")),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_annotations_dataset_id_datasets")),
        sa.ForeignKeyConstraint(["replaces_id"], ["annotations.id"],
                                name=op.f("fk_annotations_replaces_id_annotations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotations")),
        sa.UniqueConstraint("dataset_id", "path", "version", name=op.f("uq_annotations_dataset_id")),
    )
    op.create_index(op.f("ix_annotations_dataset_id"), "annotations", ["dataset_id", "category"], unique=False)
    op.create_table(
        "annotation_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("gt_version", sa.String(length=64), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("n_changed", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_annotation_sets_dataset_id_datasets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation_sets")),
        sa.UniqueConstraint("dataset_id", "name", name=op.f("uq_annotation_sets_dataset_id")),
    )
    op.create_table(
        "annotation_set_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("set_id", sa.Integer(), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["annotation_id"], ["annotations.id"],
                                name=op.f("fk_annotation_set_items_annotation_id_annotations")),
        sa.ForeignKeyConstraint(["set_id"], ["annotation_sets.id"],
                                name=op.f("fk_annotation_set_items_set_id_annotation_sets"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation_set_items")),
        sa.UniqueConstraint("set_id", "annotation_id", name=op.f("uq_annotation_set_items_set_id")),
    )


def downgrade() -> None:
    op.drop_table("annotation_set_items")
    op.drop_table("annotation_sets")
    op.drop_index(op.f("ix_annotations_dataset_id"), table_name="annotations")
    op.drop_table("annotations")
    # Rows against annotation sets cannot fit the old key: drop them first.
    op.execute("DELETE FROM metrics WHERE gt_version <> 'dataset'")
    with op.batch_alter_table("metrics") as batch:
        batch.drop_constraint("uq_metrics_job_id", type_="unique")
        batch.create_unique_constraint("uq_metrics_job_id", ["job_id", "category", "name", "metric_version"])
        batch.drop_column("gt_version")
