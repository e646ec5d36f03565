"""Typed SQLAlchemy models of the results database. Schema changes go through Alembic (`db/migrations`).

Layout: a *job* runs one method on one dataset root for one or more categories with one seed. While it
runs only the job row changes (status, progress, heartbeat). When it succeeds, all of its result rows
(`metrics`, `image_results`, `category_runs`, `fit_units`, `run_records`, `splits`) are written in one transaction, so a
failed, cancelled or killed job never leaves partial results behind.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ad_core.annotations import DEFAULT_GT_VERSION

# Defined in the catalogue; re-exported here for db.queries.
from ad_core.catalog import FINAL_STATUSES as FINAL_STATUSES
from ad_core.catalog import JOB_STATUSES as JOB_STATUSES
from ad_core.frame import DEFAULT_FRAME, LEGACY_FRAME
from db.session import utcnow

# Deterministic constraint names: migrations stay identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, dt.datetime: DateTime()}


class Method(Base):
    __tablename__ = "methods"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """A dataset on disk: its kind (mvtec, visa, demo, folder...) and root folder."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("kind", "root"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    root: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    splits: Mapped[list[Split]] = relationship(back_populates="dataset")


class Split(Base):
    """One category of a dataset as a run saw it: the content hash of its concrete lists (paths, sizes,
    labels, masks per part), the counts, and which anomalous images a recipe moved into training. The
    recipe itself is stored with each job (`Job.split`; a seeded recipe draws with the job's seed)."""

    __tablename__ = "splits"
    __table_args__ = (UniqueConstraint("dataset_id", "category", "content_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    category: Mapped[str] = mapped_column(String(128))
    content_hash: Mapped[str] = mapped_column(String(64))
    n_train: Mapped[int]
    n_train_anomalous: Mapped[int] = mapped_column(default=0, server_default="0")
    # Paths (relative to the dataset root) of the labelled anomalies in training: never evaluated.
    train_anomalies: Mapped[list[str] | None]
    n_test: Mapped[int]
    n_test_good: Mapped[int]
    n_test_anomalous: Mapped[int]
    has_masks: Mapped[bool]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="splits")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="status"),
        Index(None, "status"),
        Index(None, "group_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    method: Mapped[str] = mapped_column(ForeignKey("methods.name"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    categories: Mapped[list[str]]
    preset: Mapped[str | None] = mapped_column(String(64))
    # The complete, validated method config (every field), so that the worker runs exactly what was checked.
    config: Mapped[dict[str, Any]]
    # The split recipe (`ad_core.splits.SplitSpec.to_dict()`; seed None = the job's seed).
    split: Mapped[dict[str, Any]] = mapped_column(
        default=lambda: {"kind": "standard", "seed": None}, server_default='{"kind": "standard", "seed": null}'
    )
    # The evaluation frame (`ad_core.frame`: 'full:256', 'full:N' or 'native'). Rows from before frames were
    # recorded were evaluated in each method's own geometry: the migration gives them 'native'.
    frame: Mapped[str] = mapped_column(String(32), default=DEFAULT_FRAME, server_default=LEGACY_FRAME)
    # The ground truth the job trains (few-shot draws) and is scored against: 'dataset' or an annotation set's
    # gt_version, resolved by the worker to the set's entries (migration 0006).
    gt_version: Mapped[str] = mapped_column(String(64), default=DEFAULT_GT_VERSION, server_default=DEFAULT_GT_VERSION)
    seed: Mapped[int] = mapped_column(default=0)
    device: Mapped[str] = mapped_column(String(32), default="cpu")
    queue: Mapped[str] = mapped_column(String(128))
    # A sweep/matrix submitted together shares one group id.
    group_id: Mapped[str | None] = mapped_column(String(64))
    launched_by: Mapped[str] = mapped_column(String(128))

    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # `attempts` doubles as a fencing token: every write of a running task says which attempt it belongs to.
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=1)
    task_id: Mapped[str | None] = mapped_column(String(128))
    worker_host: Mapped[str | None] = mapped_column(String(255))
    worker_device: Mapped[str | None] = mapped_column(String(128))

    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]

    dataset: Mapped[Dataset] = relationship(lazy="joined")

    @property
    def elapsed_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def map_geometry(self) -> tuple[str, int, int]:
        """(evaluation frame, resize, crop) the job's stored maps were made in: what re-scoring them and putting
        them back on the image need (a config without resize/crop used PatchCore's 256 / 224)."""
        return (self.frame or LEGACY_FRAME, int(self.config.get("resize", 256)), int(self.config.get("crop", 224)))

    @property
    def elapsed_text(self) -> str:
        """Elapsed run time as m:ss or h:mm:ss ("" before the job started), for tables."""
        if self.elapsed_s is None:
            return ""
        minutes, secs = divmod(int(self.elapsed_s), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class JobProgress(Base):
    """Progress history of a job (thinned: a row per >=1% step or per 30 s), for timelines and ETAs."""

    __tablename__ = "job_progress"
    __table_args__ = (Index(None, "job_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    progress: Mapped[float]
    message: Mapped[str] = mapped_column(Text, default="")


class CategoryRun(Base):
    """Per job x category: the split it ran on, timings, peak memory and the anomaly-map file."""

    __tablename__ = "category_runs"
    __table_args__ = (UniqueConstraint("job_id", "category"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    category: Mapped[str] = mapped_column(String(128))
    split_id: Mapped[int | None] = mapped_column(ForeignKey("splits.id"))
    # Index of the fit unit (model) that produced this category's results; see FitUnitRow.
    fit_unit: Mapped[int | None]
    # Seconds of a fit this category had alone; NULL when its model was shared (see FitUnitRow.fit_s).
    fit_s: Mapped[float | None]
    predict_s: Mapped[float | None]
    images_per_s: Mapped[float | None]
    peak_rss_mb: Mapped[float | None]
    peak_gpu_mb: Mapped[float | None]
    n_images: Mapped[int] = mapped_column(default=0)
    # Relative to IAD_ARTIFACTS so that hosts mounting shared storage at different paths agree.
    maps_path: Mapped[str | None] = mapped_column(String(1024))
    notes: Mapped[list[str]] = mapped_column(default=list)


class FitUnitRow(Base):
    """One fit of a job: the categories its model covers (one for one-class methods, all of the job's for
    multi-class ones), its time and memory, recorded once, and what the method said about itself."""

    __tablename__ = "fit_units"
    __table_args__ = (UniqueConstraint("job_id", "unit_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    unit_index: Mapped[int]
    categories: Mapped[list[str]]
    fit_s: Mapped[float | None]
    peak_rss_mb: Mapped[float | None]
    peak_gpu_mb: Mapped[float | None]
    weights_source: Mapped[str | None] = mapped_column(String(512))
    # `AnomalyModel.describe()` without the config (e.g. ISSTAD's corruption settings).
    details: Mapped[dict[str, Any] | None]


class MetricValue(Base):
    """One metric of one category of one job under one metric version. NULL value: not computable (e.g. pixel
    metrics without masks). A job has rows of the version it ran with, plus rows of newer versions when its
    stored maps were re-scored (`iad rescore`), so old results stay comparable without re-training."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "category", "name", "metric_version", "gt_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    category: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    metric_version: Mapped[str] = mapped_column(String(32))
    # The ground truth the metric was computed against: 'dataset' (the dataset's own files) or an annotation
    # set's key (`ad_core.annotations.gt_version_key`; rows re-scored from the stored maps).
    gt_version: Mapped[str] = mapped_column(String(64), default=DEFAULT_GT_VERSION, server_default=DEFAULT_GT_VERSION)


class ImageResultRow(Base):
    """One test image of one job: label, score and where its anomaly map is stored (file + index)."""

    __tablename__ = "image_results"
    __table_args__ = (UniqueConstraint("job_id", "category", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    category: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(1024))
    label: Mapped[int]
    defect_type: Mapped[str] = mapped_column(String(128))
    score: Mapped[float]
    map_path: Mapped[str | None] = mapped_column(String(1024))
    map_index: Mapped[int | None]


class RunRecord(Base):
    """Reproducibility record of a finished job: everything needed to trace a number back."""

    __tablename__ = "run_records"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    packages: Mapped[dict[str, Any]]
    git_commit: Mapped[str] = mapped_column(String(64))
    weights_source: Mapped[str] = mapped_column(String(512))
    random_weights: Mapped[bool] = mapped_column(Boolean)
    seed: Mapped[int]
    device: Mapped[str] = mapped_column(String(128))
    host: Mapped[str | None] = mapped_column(String(255))
    config: Mapped[dict[str, Any]]
    metric_version: Mapped[str] = mapped_column(String(32))
    threads: Mapped[int | None]  # torch intra-op threads of the worker process
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Annotation(Base):
    """One saved version of one image's ground truth (`db.annotations`). Never updated or deleted: a save, a
    revert or an import adds the next version; the highest version is current. The dataset's files are never
    touched; masks live in the artifact store (`mask_path`, relative to IAD_ARTIFACTS, written atomically)."""

    __tablename__ = "annotations"
    __table_args__ = (
        UniqueConstraint("dataset_id", "path", "version"),
        CheckConstraint("label IN (0, 1)", name="label"),
        Index(None, "dataset_id", "category"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    category: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(1024))  # the image, relative to the dataset root (POSIX)
    version: Mapped[int]  # 1, 2, ... per image
    label: Mapped[int]
    defect_type: Mapped[str] = mapped_column(String(128))
    mask_path: Mapped[str | None] = mapped_column(String(1024))  # None: no defect pixels
    mask_sha256: Mapped[str | None] = mapped_column(String(64))
    # drawn | prefill | imported | revert; `source_detail` says from what (run, threshold, file, version).
    source: Mapped[str] = mapped_column(String(16))
    source_detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # The version the author started from (None: the dataset's own ground truth).
    replaces_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"))
    note: Mapped[str] = mapped_column(Text, default="")


class AnnotationSet(Base):
    """A named ground-truth version: a dataset plus the annotations current when the set was made.
    `gt_version` is the content hash of the images whose ground truth differs from the dataset's files
    (`ad_core.annotations.gt_version_key`); metric rows computed against the set carry it."""

    __tablename__ = "annotation_sets"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    name: Mapped[str] = mapped_column(String(128))
    gt_version: Mapped[str] = mapped_column(String(64))
    categories: Mapped[list[str]]
    n_changed: Mapped[int] = mapped_column(default=0)  # images whose ground truth differs from the dataset
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    note: Mapped[str] = mapped_column(Text, default="")

    dataset: Mapped[Dataset] = relationship(lazy="joined")


class AnnotationSetItem(Base):
    """The annotation versions a set holds (the ones current when it was made)."""

    __tablename__ = "annotation_set_items"
    __table_args__ = (UniqueConstraint("set_id", "annotation_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("annotation_sets.id", ondelete="CASCADE"))
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id"))


class User(Base):
    """A local account (`db.accounts`): a role and an argon2 password hash (never the password)."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('viewer', 'annotator', 'researcher', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(255), unique=True)  # OpenID Connect sign-in maps by e-mail
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(default=0)  # consecutive; reset by a successful sign-in
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[dt.datetime | None]


class UserSession(Base):
    """A signed-in dashboard session or a CLI token: only the SHA-256 of the secret is stored."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # "dashboard" or "cli"
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

    user: Mapped[User] = relationship(lazy="joined")


class AuditEntry(Base):
    """Who did what: jobs submitted, cancelled, re-run; annotation versions; exports; sign-ins; user changes."""

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(512), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AppSetting(Base):
    """Deployment settings shared by the dashboard and the CLI (e.g. sign_in = 'required')."""

    __tablename__ = "app_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(1024))
