"""Every read and write of the results database. Pages and workers call these; none of them writes SQL.

Each function opens its own short transaction on `url` (default `IAD_DATABASE_URL`) and makes sure the
schema is current on first use in a process. Returned ORM objects are detached but fully loaded.

Job life cycle and the guarantees behind it:
- `claim_job` is one conditional UPDATE (`... WHERE status = 'queued'`), so two workers that receive the
  same message (redelivery, a broker without row locks) can never both run a job.
- A claim increments `attempts`; every later write of that task carries the attempt number and only
  applies while the job is still `running` with that attempt (a fencing token). A worker that lost its
  lease therefore cannot overwrite what happened after it.
- `complete_job` writes all result rows and the `succeeded` status in one transaction.
- `expire_stale_jobs` turns `running` jobs whose heartbeat is older than the lease into `failed`
  ("worker lost ...") or, when the retry policy allows and a re-queue callback is given, back into `queued`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import math
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import Table, case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ad_core.annotations import DEFAULT_GT_VERSION
from ad_core.frame import DEFAULT_FRAME
from db import artifacts
from db.models import (
    FINAL_STATUSES,
    JOB_STATUSES,
    CategoryRun,
    Dataset,
    FitUnitRow,
    ImageResultRow,
    Job,
    JobProgress,
    Method,
    MetricValue,
    RunRecord,
    Split,
)
from db.session import init_db, session_scope, utcnow

DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_MAX_ATTEMPTS = 1


# --- settings ----------------------------------------------------------------------------------------


def lease_seconds() -> float:
    """`IAD_LEASE_SECONDS` (default 60): a running job without a heartbeat for this long is expired."""
    return float(os.environ.get("IAD_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))


def max_attempts_setting() -> int:
    """`IAD_MAX_ATTEMPTS` (default 1 = never retry): how often a job may start before a lost worker fails it."""
    return max(1, int(os.environ.get("IAD_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)))


def _launcher() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no USER variable and no passwd entry (some containers)
        return "unknown"


def new_group_id() -> str:
    return f"{utcnow():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


# --- sessions ----------------------------------------------------------------------------------------


def _session(url: str | None) -> contextlib.AbstractContextManager[Session]:
    init_db(url)  # cached after the first call per process
    return session_scope(url)


def _insert_ignore(session: Session, table: Table, values: dict[str, Any], keys: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: concurrent workers may register the same split/method at once."""
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:  # other databases: best effort
        if session.execute(select(func.count()).select_from(table).filter_by(**{k: values[k] for k in keys})).scalar():
            return
        session.execute(table.insert().values(**values))
        return
    session.execute(insert(table).values(**values).on_conflict_do_nothing(index_elements=list(keys)))


# --- reference rows ------------------------------------------------------------------------------------


def ensure_method(session: Session, name: str) -> None:
    _insert_ignore(session, Method.__table__, {"name": name, "created_at": utcnow()}, ["name"])


def ensure_dataset(session: Session, kind: str, root: str) -> int:
    _insert_ignore(session, Dataset.__table__, {"kind": kind, "root": root, "created_at": utcnow()}, ["kind", "root"])
    return session.execute(select(Dataset.id).filter_by(kind=kind, root=root)).scalar_one()


@dataclass
class SplitInfo:
    """What a run saw of one category: the content hash of its concrete lists (computed by ad_core from the
    lists the run used), the counts and the labelled anomalies in training (paths relative to the root)."""

    content_hash: str
    n_train: int
    n_test: int
    n_test_good: int
    n_test_anomalous: int
    has_masks: bool
    n_train_anomalous: int = 0
    train_anomalies: list[str] | None = None


def ensure_split(session: Session, dataset_id: int, category: str, info: SplitInfo) -> int:
    values = {"dataset_id": dataset_id, "category": category, "created_at": utcnow(), **info.__dict__}
    _insert_ignore(session, Split.__table__, values, ["dataset_id", "category", "content_hash"])
    return session.execute(
        select(Split.id).filter_by(dataset_id=dataset_id, category=category, content_hash=info.content_hash)
    ).scalar_one()


def list_datasets(url: str | None = None) -> list[Dataset]:
    with _session(url) as s:
        return list(s.scalars(select(Dataset).order_by(Dataset.kind, Dataset.root)))


def list_splits(dataset_id: int | None = None, url: str | None = None) -> list[Split]:
    with _session(url) as s:
        query = select(Split).order_by(Split.dataset_id, Split.category, Split.created_at)
        if dataset_id is not None:
            query = query.where(Split.dataset_id == dataset_id)
        return list(s.scalars(query))


def list_methods(url: str | None = None) -> list[str]:
    with _session(url) as s:
        return list(s.scalars(select(Method.name).order_by(Method.name)))


# --- submitting --------------------------------------------------------------------------------------


@dataclass
class JobRequest:
    """One job to create. `config` is the complete validated method config (`MethodConfig.to_dict()`)."""

    method: str
    dataset: str
    root: str
    categories: list[str]
    config: dict[str, Any]
    preset: str | None = None
    seed: int = 0
    device: str = "cpu"
    queue: str = "cpu"
    split: dict[str, Any] = field(default_factory=lambda: {"kind": "standard", "seed": None})
    frame: str = DEFAULT_FRAME  # the evaluation frame's key (`ad_core.frame`)
    gt_version: str = DEFAULT_GT_VERSION  # the ground truth: the dataset's files or an annotation set's version


def create_jobs(
    requests: Sequence[JobRequest],
    group_id: str | None = None,
    launched_by: str | None = None,
    max_attempts: int | None = None,
    url: str | None = None,
) -> list[int]:
    """Create queued jobs (all or none) and return their ids in request order."""
    launched_by = launched_by or _launcher()
    max_attempts = max_attempts or max_attempts_setting()
    ids = []
    with _session(url) as s:
        for req in requests:
            ensure_method(s, req.method)
            dataset_id = ensure_dataset(s, req.dataset, req.root)
            job = Job(
                method=req.method, dataset_id=dataset_id, categories=list(req.categories), preset=req.preset,
                config=dict(req.config), split=dict(req.split), frame=req.frame, gt_version=req.gt_version, seed=req.seed, device=req.device, queue=req.queue, group_id=group_id,
                launched_by=launched_by, status="queued", progress=0.0, message="queued", attempts=0,
                max_attempts=max_attempts, cancel_requested=False, created_at=utcnow(),
            )
            s.add(job)
            s.flush()
            ids.append(job.id)
    return ids


def set_task_id(job_id: int, task_id: str, url: str | None = None) -> None:
    """Remember the broker message id (used to revoke a queued job on brokers with remote control)."""
    with _session(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(task_id=task_id))


def delete_jobs(job_ids: Iterable[int], url: str | None = None) -> list[int]:
    """Delete finished jobs with all their results and map files; running/queued jobs are kept."""
    job_ids = list(job_ids)
    with _session(url) as s:
        doomed = list(s.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.status.in_(FINAL_STATUSES))))
        for table in (MetricValue, ImageResultRow, CategoryRun, FitUnitRow, RunRecord, JobProgress):
            s.execute(delete(table).where(table.job_id.in_(doomed)))
        s.execute(delete(Job).where(Job.id.in_(doomed)))
    for job_id in doomed:
        artifacts.delete_job_maps(job_id)
    return doomed


# --- reading jobs ------------------------------------------------------------------------------------


def get_job(job_id: int, url: str | None = None) -> Job | None:
    with _session(url) as s:
        return s.get(Job, job_id)


def list_jobs(
    status: str | Sequence[str] | None = None,
    group_id: str | None = None,
    limit: int | None = 50,
    job_ids: Iterable[int] | None = None,
    url: str | None = None,
) -> list[Job]:
    """Jobs, newest first."""
    query = select(Job).order_by(Job.id.desc())
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        unknown = set(statuses) - set(JOB_STATUSES)
        if unknown:
            raise ValueError(f"unknown job status {sorted(unknown)}; use one of {', '.join(JOB_STATUSES)}")
        query = query.where(Job.status.in_(statuses))
    if group_id is not None:
        query = query.where(Job.group_id == group_id)
    if job_ids is not None:
        query = query.where(Job.id.in_(list(job_ids)))
    if limit is not None:
        query = query.limit(limit)
    with _session(url) as s:
        return list(s.scalars(query).unique())


def job_counts(group_id: str | None = None, url: str | None = None) -> dict[str, int]:
    query = select(Job.status, func.count()).group_by(Job.status)
    if group_id is not None:
        query = query.where(Job.group_id == group_id)
    with _session(url) as s:
        counts = {status: n for status, n in s.execute(query)}
    return {status: counts.get(status, 0) for status in JOB_STATUSES}


def list_groups(limit: int = 100, url: str | None = None) -> pd.DataFrame:
    """Sweeps/matrices: group id, number of jobs, first creation time and how many finished."""
    query = (
        select(
            Job.group_id,
            func.count().label("jobs"),
            func.min(Job.created_at).label("created_at"),
            func.sum(case((Job.status == "succeeded", 1), else_=0)).label("succeeded"),
            func.sum(case((Job.status.in_(("failed", "cancelled")), 1), else_=0)).label("failed_or_cancelled"),
        )
        .where(Job.group_id.is_not(None))
        .group_by(Job.group_id)
        .order_by(func.min(Job.created_at).desc())
        .limit(limit)
    )
    with _session(url) as s:
        rows = s.execute(query).all()
    return pd.DataFrame(rows, columns=["group_id", "jobs", "created_at", "succeeded", "failed_or_cancelled"])


def progress_history(job_id: int, url: str | None = None) -> list[JobProgress]:
    with _session(url) as s:
        return list(s.scalars(select(JobProgress).where(JobProgress.job_id == job_id).order_by(JobProgress.id)))


# --- running jobs (called by the worker task) ----------------------------------------------------------


def claim_job(job_id: int, host: str, device: str, url: str | None = None) -> Job | None:
    """Atomically move a queued job to running for this worker; None if it is not queued (any more)."""
    now = utcnow()
    with _session(url) as s:
        attempt = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
            .values(status="running", attempts=Job.attempts + 1, started_at=now, heartbeat_at=now, finished_at=None,
                    worker_host=host, worker_device=device, progress=0.0, message="starting", error=None)
            .returning(Job.attempts)
        ).scalar_one_or_none()
        if attempt is None:
            return None
        return s.get(Job, job_id)


def _mine(job_id: int, attempt: int) -> tuple:
    return (Job.id == job_id, Job.status == "running", Job.attempts == attempt)


def report_progress(
    job_id: int, attempt: int, progress: float, message: str, history: bool = False, url: str | None = None
) -> bool:
    """Write progress (0..1) + message and refresh the heartbeat. False: the job is no longer ours."""
    now = utcnow()
    progress = min(max(float(progress), 0.0), 1.0)
    with _session(url) as s:
        mine = s.execute(
            update(Job).where(*_mine(job_id, attempt)).values(progress=progress, message=message[:2000], heartbeat_at=now)
        ).rowcount == 1
        if mine and history:
            s.add(JobProgress(job_id=job_id, attempt=attempt, at=now, progress=progress, message=message[:2000]))
    return mine


def heartbeat(job_id: int, attempt: int, url: str | None = None) -> bool:
    """Refresh the lease. False: the job is no longer ours (cancelled, expired, finished)."""
    with _session(url) as s:
        return s.execute(update(Job).where(*_mine(job_id, attempt)).values(heartbeat_at=utcnow())).rowcount == 1


def cancel_requested(job_id: int, url: str | None = None) -> bool:
    with _session(url) as s:
        return bool(s.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar())


def request_cancel(job_ids: Iterable[int], url: str | None = None) -> dict[int, str]:
    """Cancel jobs. Queued jobs become `cancelled` at once (a worker that later gets the message skips
    them); running jobs get `cancel_requested` and stop at their next check. Returns id -> outcome:
    "cancelled", "cancelling", "already <status>" or "not found"."""
    outcome: dict[int, str] = {}
    now = utcnow()
    with _session(url) as s:
        for job_id in job_ids:
            queued = s.execute(
                update(Job).where(Job.id == job_id, Job.status == "queued")
                .values(status="cancelled", cancel_requested=True, finished_at=now, message="cancelled before start")
            ).rowcount
            if queued:
                outcome[job_id] = "cancelled"
                continue
            # Not queued (any more): if it is running now, ask it to stop.
            running = s.execute(
                update(Job).where(Job.id == job_id, Job.status == "running")
                .values(cancel_requested=True, message="cancel requested")
            ).rowcount
            if running:
                outcome[job_id] = "cancelling"
                continue
            status = s.execute(select(Job.status).where(Job.id == job_id)).scalar()
            outcome[job_id] = "not found" if status is None else f"already {status}"
    return outcome


@dataclass
class CategoryOutcome:
    """Everything a finished category contributes to the database (maps are already on disk)."""

    category: str
    metrics: Mapping[str, float | None]
    images: Sequence[Any]  # objects with path, label, defect_type, score (ad_core ImageResult)
    timings: Mapping[str, float | None]
    maps_path: str | None
    split: SplitInfo | None = None
    notes: list[str] = field(default_factory=list)
    fit_unit: int | None = None


@dataclass
class FitUnitOutcome:
    """One fit of a job (ad_core UnitResult): categories, time and memory recorded once, method details."""

    index: int
    categories: list[str]
    fit_s: float | None
    peak_rss_mb: float | None
    peak_gpu_mb: float | None = None
    weights_source: str | None = None
    details: dict[str, Any] | None = None


def complete_job(
    job_id: int,
    attempt: int,
    outcomes: Sequence[CategoryOutcome],
    record: Mapping[str, Any],
    config: Mapping[str, Any],
    units: Sequence[FitUnitOutcome] = (),
    url: str | None = None,
) -> bool:
    """Write every result row and mark the job succeeded, in ONE transaction.

    Returns False (and writes nothing) when the job is no longer this attempt's: cancelled meanwhile,
    expired after a lost heartbeat, or finished by someone else.
    """

    class NotMine(Exception):
        pass

    now = utcnow()
    try:
        with _session(url) as s:
            # The status UPDATE goes first: it takes the row (PostgreSQL) or database (SQLite) write lock, so
            # a concurrent cancel/expire waits for us or wins before any result row exists.
            if s.execute(
                update(Job).where(*_mine(job_id, attempt))
                .values(status="succeeded", progress=1.0, message="done", finished_at=now, heartbeat_at=now)
            ).rowcount != 1:
                raise NotMine
            dataset_id = s.execute(select(Job.dataset_id).where(Job.id == job_id)).scalar_one()
            version = str(record["metric_version"])
            gt_version = str((record.get("ground_truth") or {}).get("version") or DEFAULT_GT_VERSION)
            for out in outcomes:
                split_id = ensure_split(s, dataset_id, out.category, out.split) if out.split else None
                t = out.timings
                s.add(CategoryRun(
                    job_id=job_id, category=out.category, split_id=split_id, fit_unit=out.fit_unit, fit_s=t.get("fit_s"),
                    predict_s=t.get("predict_s"), images_per_s=t.get("images_per_s"), peak_rss_mb=t.get("peak_rss_mb"),
                    peak_gpu_mb=t.get("peak_gpu_mb"), n_images=len(out.images), maps_path=out.maps_path,
                    notes=list(out.notes),
                ))
                s.add_all(
                    MetricValue(job_id=job_id, category=out.category, name=name,
                                value=_finite(value), metric_version=version, gt_version=gt_version)
                    for name, value in out.metrics.items()
                )
                s.add_all(
                    ImageResultRow(job_id=job_id, category=out.category, path=str(img.path), label=int(img.label),
                                   defect_type=str(img.defect_type), score=float(img.score), map_path=out.maps_path,
                                   map_index=i if out.maps_path else None)
                    for i, img in enumerate(out.images)
                )
            s.add_all(
                FitUnitRow(job_id=job_id, unit_index=u.index, categories=list(u.categories), fit_s=u.fit_s,
                           peak_rss_mb=u.peak_rss_mb, peak_gpu_mb=u.peak_gpu_mb, weights_source=u.weights_source,
                           details=_jsonable(u.details))
                for u in units
            )
            s.add(RunRecord(
                job_id=job_id, packages=dict(record["packages"]), git_commit=str(record["git_commit"]),
                threads=record.get("threads"),
                weights_source=str(record["weights_source"]), random_weights=bool(record["random_weights"]),
                seed=int(record["seed"]), device=str(record["device"]), host=record.get("host"), config=dict(config),
                metric_version=version, created_at=now,
            ))
    except NotMine:
        return False
    return True


def fail_job(job_id: int, attempt: int, error: str, url: str | None = None) -> bool:
    """Mark this attempt's job failed with `error` (first line: the reason; then the traceback)."""
    first = error.strip().splitlines()[0] if error.strip() else "failed"
    with _session(url) as s:
        return s.execute(
            update(Job).where(*_mine(job_id, attempt))
            .values(status="failed", error=error, message=first[:500], finished_at=utcnow())
        ).rowcount == 1


def mark_cancelled(job_id: int, attempt: int, url: str | None = None) -> bool:
    with _session(url) as s:
        return s.execute(
            update(Job).where(*_mine(job_id, attempt))
            .values(status="cancelled", message="cancelled while running", finished_at=utcnow())
        ).rowcount == 1


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy (tuples -> lists, numpy scalars -> Python numbers, anything else -> str)."""
    import json

    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _finite(value: float | None) -> float | None:
    """NaN (an undefined metric) is stored as NULL on every database (SQLite would do so anyway)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


@dataclass
class ExpiredJob:
    job_id: int
    attempt: int
    action: str  # "failed", "requeued" or "cancelled"
    queue: str
    heartbeat_at: dt.datetime | None


def expire_stale_jobs(
    lease: float | None = None,
    requeue: Callable[[Job], None] | None = None,
    url: str | None = None,
) -> list[ExpiredJob]:
    """Expire `running` jobs whose heartbeat is older than the lease (`IAD_LEASE_SECONDS`).

    Policy: a job that may still start again (`attempts < max_attempts`, set from `IAD_MAX_ATTEMPTS` at
    submit time, default 1) goes back to `queued` and `requeue(job)` publishes a new message for it. Only
    callers that can publish pass `requeue` (`workers.celery_app.expire_stale_jobs`, which every worker
    runs periodically); without it such a job is left for them. Once its attempts are used up a job
    becomes `failed` with "worker lost (no heartbeat since ...)". A job whose cancel was requested
    becomes `cancelled`. Map files the lost attempt wrote are deleted (best effort: they are
    only reachable here when IAD_ARTIFACTS is shared).
    """
    lease = lease_seconds() if lease is None else lease
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=lease)
    expired: list[ExpiredJob] = []
    to_requeue: list[int] = []
    with _session(url) as s:
        stale = s.execute(
            select(Job.id, Job.attempts, Job.max_attempts, Job.heartbeat_at, Job.cancel_requested, Job.queue)
            .where(Job.status == "running", Job.heartbeat_at < cutoff)
        ).all()
        for job_id, attempt, max_attempts, beat, cancel, queue in stale:
            since = f"{beat:%Y-%m-%d %H:%M:%S} UTC" if beat else "start"
            reason = f"worker lost (no heartbeat since {since}; lease {lease:g} s)"
            # Same conditions again in the UPDATE: a concurrent expirer or a late heartbeat wins cleanly.
            guard = (*_mine(job_id, attempt), Job.heartbeat_at < cutoff)
            if cancel:
                action, values = "cancelled", {"status": "cancelled", "message": f"cancelled; {reason}", "finished_at": now}
            elif attempt < max_attempts and requeue is None:
                continue  # retryable, but only a process that can publish (a worker) may re-queue it
            elif attempt < max_attempts:
                action, values = "requeued", {
                    "status": "queued", "progress": 0.0, "message": f"re-queued after attempt {attempt}: {reason}",
                    "worker_host": None, "worker_device": None, "heartbeat_at": None, "started_at": None,
                }
            else:
                action, values = "failed", {"status": "failed", "message": reason, "finished_at": now,
                                            "error": f"{reason}\n\nThe worker process died or was cut off while "
                                                     f"running attempt {attempt} of {max_attempts}."}
            if s.execute(update(Job).where(*guard).values(**values)).rowcount == 1:
                expired.append(ExpiredJob(job_id, attempt, action, queue, beat))
                if action == "requeued":
                    to_requeue.append(job_id)
    for item in expired:
        artifacts.delete_job_maps(item.job_id, item.attempt)
    if requeue is not None:
        for job in list_jobs(job_ids=to_requeue, limit=None, url=url):
            try:
                requeue(job)
            except Exception as exc:  # broker down: a queued job without a message would wait forever
                with _session(url) as s:
                    s.execute(update(Job).where(Job.id == job.id, Job.status == "queued").values(
                        status="failed", finished_at=utcnow(), message=f"could not re-queue: {exc}"[:500],
                        error=f"could not re-queue after a lost worker: {type(exc).__name__}: {exc}"))
    return expired


# --- results -----------------------------------------------------------------------------------------


def metrics_frame(
    job_ids: Iterable[int] | None = None,
    group_id: str | None = None,
    url: str | None = None,
    gt_version: str | None = DEFAULT_GT_VERSION,
) -> pd.DataFrame:
    """Long table of metrics of succeeded jobs: one row per job x category x metric, with the job's
    method, preset, dataset, root, seed, device and group. Pivot it for matrices (e.g. method x category)."""
    query = (
        select(
            MetricValue.job_id, Job.group_id, Job.method, Job.preset, Dataset.kind.label("dataset"), Dataset.root,
            MetricValue.category, Job.seed, Job.device, MetricValue.name.label("metric"), MetricValue.value,
            MetricValue.metric_version, MetricValue.gt_version, Job.finished_at,
        )
        .join(Job, Job.id == MetricValue.job_id)
        .join(Dataset, Dataset.id == Job.dataset_id)
        .where(Job.status == "succeeded")
        .order_by(MetricValue.job_id, MetricValue.category, MetricValue.name)
    )
    if job_ids is not None:
        query = query.where(MetricValue.job_id.in_(list(job_ids)))
    if group_id is not None:
        query = query.where(Job.group_id == group_id)
    if gt_version is not None:  # None: every ground truth (the `gt_version` column tells them apart)
        query = query.where(MetricValue.gt_version == gt_version)
    with _session(url) as s:
        result = s.execute(query)
        return pd.DataFrame(result.all(), columns=list(result.keys()))


def image_results(job_id: int, category: str | None = None, url: str | None = None) -> list[ImageResultRow]:
    query = select(ImageResultRow).where(ImageResultRow.job_id == job_id)
    if category is not None:
        query = query.where(ImageResultRow.category == category)
    with _session(url) as s:
        return list(s.scalars(query.order_by(ImageResultRow.category, ImageResultRow.map_index, ImageResultRow.id)))


def fit_units(job_id: int, url: str | None = None) -> list[FitUnitRow]:
    with _session(url) as s:
        return list(s.scalars(select(FitUnitRow).where(FitUnitRow.job_id == job_id).order_by(FitUnitRow.unit_index)))


def category_runs(job_id: int, url: str | None = None) -> list[CategoryRun]:
    with _session(url) as s:
        return list(s.scalars(select(CategoryRun).where(CategoryRun.job_id == job_id).order_by(CategoryRun.category)))


def run_record(job_id: int, url: str | None = None) -> RunRecord | None:
    with _session(url) as s:
        return s.get(RunRecord, job_id)


def result_counts(job_id: int, url: str | None = None) -> dict[str, int]:
    """Rows per result table of a job (tests and integrity checks)."""
    with _session(url) as s:
        return {
            table.__tablename__: s.execute(select(func.count()).select_from(table).where(table.job_id == job_id)).scalar_one()
            for table in (MetricValue, ImageResultRow, CategoryRun, FitUnitRow, RunRecord)
        }


# --- re-scoring (metric rows of newer metric versions) -------------------------------------------------------


def metric_versions_of(job_ids: Iterable[int] | None = None, url: str | None = None,
                       gt_version: str = DEFAULT_GT_VERSION) -> dict[tuple[int, str], set[str]]:
    """(job id, category) -> the metric versions that have rows, for succeeded jobs (all when `job_ids` is None)."""
    query = (select(MetricValue.job_id, MetricValue.category, MetricValue.metric_version).distinct()
             .join(Job, Job.id == MetricValue.job_id).where(Job.status == "succeeded")
             .where(MetricValue.gt_version == gt_version))
    if job_ids is not None:
        query = query.where(MetricValue.job_id.in_(list(job_ids)))
    versions: dict[tuple[int, str], set[str]] = {}
    with _session(url) as s:
        for job_id, category, version in s.execute(query):
            versions.setdefault((job_id, category), set()).add(version)
    return versions


def add_metric_values(
    job_id: int, category: str, values: Mapping[str, float | None], version: str, url: str | None = None,
    gt_version: str = DEFAULT_GT_VERSION,
) -> int:
    """Store one category's metrics of a finished job under `version` (re-scored from its stored maps), all in
    one transaction. Rows that already exist for that version are left as they are (a second re-score, or two
    workers at once, changes nothing). Returns how many rows the call inserted."""
    with _session(url) as s:
        before = s.execute(select(func.count()).select_from(MetricValue).where(
            MetricValue.job_id == job_id, MetricValue.category == category,
            MetricValue.metric_version == version, MetricValue.gt_version == gt_version)).scalar_one()
        for name, value in values.items():
            _insert_ignore(s, MetricValue.__table__, {"job_id": job_id, "category": category, "name": name,
                                                      "value": _finite(value), "metric_version": version,
                                                      "gt_version": gt_version},
                           ["job_id", "category", "name", "metric_version", "gt_version"])
        after = s.execute(select(func.count()).select_from(MetricValue).where(
            MetricValue.job_id == job_id, MetricValue.category == category,
            MetricValue.metric_version == version, MetricValue.gt_version == gt_version)).scalar_one()
    return int(after - before)
