"""Read queries on the results database for analysis: the long tables `ad_core.analysis` works on.

`results_frame` reads the stored metrics of succeeded jobs (one row per job x category x metric) joined
with what decides whether two numbers are comparable (method, preset, config hash, seed, weights source,
metric version, split recipe, evaluation frame); `timings_frame` the per-category efficiency numbers; `image_scores_frame` the per-image
scores of many jobs. `leaderboard(...)` queries and builds the matrix in one call. Read only: writes go
through `db.queries`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
from sqlalchemy import func, select

from ad_core.analysis.leaderboard import Leaderboard, build_leaderboard, config_hash
from ad_core.annotations import DEFAULT_GT_LABEL, DEFAULT_GT_VERSION
from ad_core.components.scoring import scorer_label
from ad_core.frame import frame_identity
from ad_core.splits import split_identity
from db.models import CategoryRun, Dataset, FitUnitRow, ImageResultRow, Job, MetricValue, RunRecord, Split
from db.session import init_db, session_scope


def _session(url: str | None):  # noqa: ANN202 (context manager of Session)
    init_db(url)
    return session_scope(url)


def dataset_choices(url: str | None = None) -> pd.DataFrame:
    """Datasets that have succeeded jobs: kind, root, number of jobs, newest finish time (newest first)."""
    query = (
        select(Dataset.kind, Dataset.root, func.count(Job.id).label("jobs"), func.max(Job.finished_at).label("last"))
        .join(Job, Job.dataset_id == Dataset.id)
        .where(Job.status == "succeeded")
        .group_by(Dataset.kind, Dataset.root)
        .order_by(func.max(Job.finished_at).desc())
    )
    with _session(url) as s:
        rows = s.execute(query).all()
    return pd.DataFrame(rows, columns=["kind", "root", "jobs", "last"])


def _job_filter(query, dataset: str | None, root: str | None, job_ids: Iterable[int] | None,  # noqa: ANN001, ANN202
                group_id: str | None):
    query = query.where(Job.status == "succeeded")
    if dataset is not None:
        query = query.where(Dataset.kind == dataset)
    if root is not None:
        query = query.where(Dataset.root == root)
    if job_ids is not None:
        query = query.where(Job.id.in_(list(job_ids)))
    if group_id is not None:
        query = query.where(Job.group_id == group_id)
    return query


JOB_COLUMNS = ["job_id", "method", "preset", "seed", "device", "group_id", "dataset", "root", "config", "split",
               "frame", "random_weights", "weights_source", "finished_at"]


def jobs_frame(
    dataset: str | None = None,
    root: str | None = None,
    job_ids: Iterable[int] | None = None,
    group_id: str | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Succeeded jobs with what makes results comparable: config hash, split recipe (`split_key`, with its
    `split_label` and `protocol` text), evaluation frame (`eval_frame` key, `eval_frame_label`,
    `eval_frame_protocol`; jobs from before frames were recorded are 'native'), weights, and the memory-bank
    methods' nearest-neighbour search (`scorer`, e.g. "exact"; None for other methods)."""
    query = _job_filter(
        select(Job.id, Job.method, Job.preset, Job.seed, Job.device, Job.group_id, Dataset.kind, Dataset.root,
               Job.config, Job.split, Job.frame, RunRecord.random_weights, RunRecord.weights_source, Job.finished_at)
        .join(Dataset, Dataset.id == Job.dataset_id)
        .outerjoin(RunRecord, RunRecord.job_id == Job.id),
        dataset, root, job_ids, group_id,
    )
    with _session(url) as s:
        rows = s.execute(query).all()
    jobs = pd.DataFrame(rows, columns=JOB_COLUMNS)
    jobs["config_hash"] = [config_hash(c) for c in jobs["config"]]
    jobs["scorer"] = [scorer_label(c) for c in jobs["config"]]
    identities = [split_identity(recipe) for recipe in jobs["split"]]
    jobs["split_key"] = [i[0] for i in identities]
    jobs["split_label"] = [i[1] for i in identities]
    jobs["protocol"] = [i[2] for i in identities]
    frames = [frame_identity(value) for value in jobs.pop("frame")]
    jobs["eval_frame"] = [f[0] for f in frames]
    jobs["eval_frame_label"] = [f[1] for f in frames]
    jobs["eval_frame_protocol"] = [f[2] for f in frames]
    jobs["random_weights"] = jobs["random_weights"].fillna(False).astype(bool)
    return jobs


def results_frame(
    dataset: str | None = None,
    root: str | None = None,
    metrics: Sequence[str] | None = None,
    job_ids: Iterable[int] | None = None,
    group_id: str | None = None,
    url: str | None = None,
    gt_version: str | None = DEFAULT_GT_VERSION,
) -> pd.DataFrame:
    """Long table: one row per succeeded job x category x metric, joined with `jobs_frame`'s columns, the
    content hash of the split the category was evaluated on (`split_hash`) and its training counts
    (`n_train`, of which `n_train_anomalous` labelled anomalies). `gt_version`: the ground truth the metrics were
    computed against (default: the dataset's own files; an annotation set's key; None = all, with `gt_version`
    and `gt_label` columns: `build_leaderboard` then shows one at a time)."""
    query = _job_filter(
        select(MetricValue.job_id, MetricValue.category, MetricValue.name, MetricValue.value,
               MetricValue.metric_version, Split.content_hash, Split.n_train, Split.n_train_anomalous,
               MetricValue.gt_version)
        .join(Job, Job.id == MetricValue.job_id)
        .join(Dataset, Dataset.id == Job.dataset_id)
        .outerjoin(CategoryRun, (CategoryRun.job_id == MetricValue.job_id)
                   & (CategoryRun.category == MetricValue.category))
        .outerjoin(Split, Split.id == CategoryRun.split_id),
        dataset, root, job_ids, group_id,
    )
    if metrics is not None:
        query = query.where(MetricValue.name.in_(list(metrics)))
    if gt_version is not None:
        query = query.where(MetricValue.gt_version == gt_version)
    with _session(url) as s:
        rows = s.execute(query).all()
    values = pd.DataFrame(rows, columns=["job_id", "category", "metric", "value", "metric_version", "split_hash",
                                         "n_train", "n_train_anomalous", "gt_version"])
    values["value"] = values["value"].astype(float)
    if gt_version is None:
        from db.annotations import gt_labels

        labels = gt_labels(url) if (values["gt_version"] != DEFAULT_GT_VERSION).any() else {}
        values["gt_label"] = [labels.get(g, DEFAULT_GT_LABEL if g == DEFAULT_GT_VERSION else g)
                              for g in values["gt_version"]]
    else:
        values = values.drop(columns=["gt_version"])
    jobs = jobs_frame(dataset, root, job_ids, group_id, url)
    return values.merge(jobs.drop(columns=["config"]), on="job_id", how="inner")


def timings_frame(job_ids: Iterable[int], url: str | None = None) -> pd.DataFrame:
    """Per job x category: fit/predict seconds, images/s, peak memory, number of test images.

    A fit shared by several categories (a multi-class model) is stored once, in `fit_units`; here its time
    is spread evenly over its categories (`fit_s` = unit time / categories), so that "fit s / category"
    means the same for every learning type.
    """
    ids = list(job_ids)
    columns = ["job_id", "category", "fit_s", "predict_s", "images_per_s", "peak_rss_mb", "peak_gpu_mb", "n_images"]
    if not ids:
        return pd.DataFrame(columns=columns)
    query = select(CategoryRun.job_id, CategoryRun.category, CategoryRun.fit_s, CategoryRun.predict_s,
                   CategoryRun.images_per_s, CategoryRun.peak_rss_mb, CategoryRun.peak_gpu_mb,
                   CategoryRun.n_images, CategoryRun.fit_unit).where(CategoryRun.job_id.in_(ids))
    units = select(FitUnitRow.job_id, FitUnitRow.unit_index, FitUnitRow.fit_s, FitUnitRow.categories).where(
        FitUnitRow.job_id.in_(ids))
    with _session(url) as s:
        rows = s.execute(query).all()
        shared = {(job, index): fit_s / max(len(cats), 1)
                  for job, index, fit_s, cats in s.execute(units).all() if fit_s is not None and len(cats) > 1}
    frame = pd.DataFrame(rows, columns=[*columns, "fit_unit"])
    if shared:
        spread = [shared.get((job, unit)) for job, unit in zip(frame["job_id"], frame["fit_unit"], strict=True)]
        frame["fit_s"] = frame["fit_s"].astype(float).fillna(pd.Series(spread, index=frame.index, dtype=float))
    frame = frame.drop(columns="fit_unit")
    for col in columns[2:-1]:
        frame[col] = frame[col].astype(float)
    return frame


def jobs_with_image(category: str, path: str, url: str | None = None) -> list[int]:
    """Succeeded jobs that scored this image of this category (for side-by-side comparisons)."""
    query = (
        select(ImageResultRow.job_id)
        .join(Job, Job.id == ImageResultRow.job_id)
        .where(ImageResultRow.category == category, ImageResultRow.path == path, Job.status == "succeeded")
        .order_by(ImageResultRow.job_id)
    )
    with _session(url) as s:
        return list(s.scalars(query))


IMAGE_SCORE_COLUMNS = ["job_id", "category", "path", "label", "defect_type", "score"]


def image_scores_frame(job_ids: Iterable[int], url: str | None = None) -> pd.DataFrame:
    """Per-image scores of many jobs in one query: job_id, category, path, label, defect_type, score.

    Rows are ordered by job, category and image path, so that two jobs on the same test set line up.
    """
    ids = [int(i) for i in job_ids]  # numpy integers would not bind as SQL integers
    rows = []
    if ids:
        query = (
            select(ImageResultRow.job_id, ImageResultRow.category, ImageResultRow.path, ImageResultRow.label,
                   ImageResultRow.defect_type, ImageResultRow.score)
            .where(ImageResultRow.job_id.in_(ids))
            .order_by(ImageResultRow.job_id, ImageResultRow.category, ImageResultRow.path)
        )
        with _session(url) as s:
            rows = s.execute(query).all()
    frame = pd.DataFrame(rows, columns=IMAGE_SCORE_COLUMNS)
    return frame.astype({"job_id": int, "label": int, "score": float})


# --- query + build -----------------------------------------------------------------------------------------


def leaderboard(
    dataset: str,
    metric: str,
    root: str | None = None,
    metric_version: str | None = None,
    methods: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    include_random: bool = True,
    group_id: str | None = None,
    split: str | None = None,
    url: str | None = None,
    eval_frame: str | None = None,
    gt_version: str | None = None,
) -> Leaderboard:
    """Query + build in one call (what `iad export` and the benchmark use). `split`: a split key or label;
    `eval_frame`: an evaluation frame key or label; `gt_version`: a ground-truth version key or label (defaults:
    see `build_leaderboard`)."""
    results = results_frame(dataset=dataset, root=root, metrics=[metric], group_id=group_id, url=url, gt_version=None)
    timings = timings_frame(results["job_id"].unique().tolist(), url=url) if len(results) else None
    return build_leaderboard(results, metric, metric_version, methods, categories, include_random, timings,
                             dataset=dataset, split=split, eval_frame=eval_frame, gt_version=gt_version)
