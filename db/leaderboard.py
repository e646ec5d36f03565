"""Leaderboard tables: read-only queries on the results database and the method x category matrix.

`results_frame` reads the stored metrics of succeeded jobs (one row per job x category x metric) with what
decides whether two numbers are comparable: method, preset, a hash of the full config, seed, weights
source and metric version. `build_leaderboard` turns that long table into the matrix researchers put in
papers: one row per method *variant* (method + preset + config), one column per category plus the mean,
mean ± std over seeds, the best and second-best value per column, and efficiency columns from the stored
timings. Rules that keep numbers honest:

- one metric version per table (the newest by default; the others are reported, never mixed in);
- a different config of the same method is a different row (a short config hash tells them apart);
- rows whose backbone had random weights are flagged and never take part in the best/second ranking
  unless every row is random;
- a re-run of the same variant x category x seed replaces the older result (latest job wins), so
  re-runs never count as extra seeds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from db.models import CategoryRun, Dataset, ImageResultRow, Job, MetricValue, RunRecord
from db.session import init_db, session_scope

# Display names in the order the dashboard offers them (keys = ad_core.metrics.METRIC_NAMES).
METRICS: dict[str, str] = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "aupro": "AUPRO@0.3",
    "image_f1_max": "Image F1-max",
    "pixel_f1_max": "Pixel F1-max",
    "image_ap": "Image AP",
    "pixel_ap": "Pixel AP",
}
MEAN = "mean"
RANDOM_MARK = "⚠ random weights"
# Single-class protocol of every method here: one model per category, trained on its normal images only.
PROTOCOL = "one-class (one model per category, trained on normal images only)"


def _session(url: str | None):  # noqa: ANN202 (context manager of Session)
    init_db(url)
    return session_scope(url)


def config_hash(config: dict[str, Any] | None) -> str:
    """Short stable hash of a full method config: equal hashes = comparable runs."""
    text = json.dumps(config or {}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


# --- queries (read only) -------------------------------------------------------------------------------


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


JOB_COLUMNS = ["job_id", "method", "preset", "seed", "device", "group_id", "dataset", "root", "config",
               "random_weights", "weights_source", "finished_at"]


def jobs_frame(
    dataset: str | None = None,
    root: str | None = None,
    job_ids: Iterable[int] | None = None,
    group_id: str | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Succeeded jobs with what makes results comparable, plus `variant` (config hash)."""
    query = _job_filter(
        select(Job.id, Job.method, Job.preset, Job.seed, Job.device, Job.group_id, Dataset.kind, Dataset.root,
               Job.config, RunRecord.random_weights, RunRecord.weights_source, Job.finished_at)
        .join(Dataset, Dataset.id == Job.dataset_id)
        .outerjoin(RunRecord, RunRecord.job_id == Job.id),
        dataset, root, job_ids, group_id,
    )
    with _session(url) as s:
        rows = s.execute(query).all()
    jobs = pd.DataFrame(rows, columns=JOB_COLUMNS)
    jobs["config_hash"] = [config_hash(c) for c in jobs["config"]]
    jobs["random_weights"] = jobs["random_weights"].fillna(False).astype(bool)
    return jobs


def results_frame(
    dataset: str | None = None,
    root: str | None = None,
    metrics: Sequence[str] | None = None,
    job_ids: Iterable[int] | None = None,
    group_id: str | None = None,
    url: str | None = None,
) -> pd.DataFrame:
    """Long table: one row per succeeded job x category x metric, joined with `jobs_frame`'s columns."""
    query = _job_filter(
        select(MetricValue.job_id, MetricValue.category, MetricValue.name, MetricValue.value,
               MetricValue.metric_version)
        .join(Job, Job.id == MetricValue.job_id)
        .join(Dataset, Dataset.id == Job.dataset_id),
        dataset, root, job_ids, group_id,
    )
    if metrics is not None:
        query = query.where(MetricValue.name.in_(list(metrics)))
    with _session(url) as s:
        rows = s.execute(query).all()
    values = pd.DataFrame(rows, columns=["job_id", "category", "metric", "value", "metric_version"])
    values["value"] = values["value"].astype(float)
    jobs = jobs_frame(dataset, root, job_ids, group_id, url)
    return values.merge(jobs.drop(columns=["config"]), on="job_id", how="inner")


def timings_frame(job_ids: Iterable[int], url: str | None = None) -> pd.DataFrame:
    """Per job x category: fit/predict seconds, images/s, peak memory, number of test images."""
    ids = list(job_ids)
    columns = ["job_id", "category", "fit_s", "predict_s", "images_per_s", "peak_rss_mb", "peak_gpu_mb", "n_images"]
    if not ids:
        return pd.DataFrame(columns=columns)
    query = select(CategoryRun.job_id, CategoryRun.category, CategoryRun.fit_s, CategoryRun.predict_s,
                   CategoryRun.images_per_s, CategoryRun.peak_rss_mb, CategoryRun.peak_gpu_mb,
                   CategoryRun.n_images).where(CategoryRun.job_id.in_(ids))
    with _session(url) as s:
        rows = s.execute(query).all()
    frame = pd.DataFrame(rows, columns=columns)
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


# --- the matrix ----------------------------------------------------------------------------------------


@dataclass
class Leaderboard:
    """A method-variant x category matrix of one metric on one dataset (plus a `mean` column)."""

    dataset: str
    roots: list[str]
    metric: str
    metric_version: str | None
    categories: list[str]
    mean: pd.DataFrame  # rows: variant labels; columns: categories + MEAN
    std: pd.DataFrame  # std over seeds (NaN with a single seed)
    n: pd.DataFrame  # seeds per cell
    rank: pd.DataFrame  # 1 = best, 2 = second, 0 = neither (per column, among ranked rows)
    rows: pd.DataFrame  # per variant: method, preset, config_hash, random_weights, seeds, efficiency, ...
    other_versions: list[str] = field(default_factory=list)  # metric versions present but not shown
    precision: int = 3

    @property
    def empty(self) -> bool:
        return self.mean.empty

    @property
    def metric_label(self) -> str:
        return METRICS.get(self.metric, self.metric)

    @property
    def seeds(self) -> list[int]:
        return sorted({s for seeds in self.rows["seed_list"] for s in seeds}) if not self.empty else []

    @property
    def any_random(self) -> bool:
        return bool(not self.empty and self.rows["random_weights"].any())

    @property
    def incomplete(self) -> list[str]:
        """Rows whose mean covers only some of the categories."""
        return [] if self.empty else list(self.rows.index[self.rows["n_categories"] < len(self.categories)])

    def cell(self, row: str, col: str) -> str:
        """'0.912 ± 0.004' (or '0.912' for one seed, '–' when undefined)."""
        m, s = self.mean.at[row, col], self.std.at[row, col]
        if pd.isna(m):
            return "–"
        text = f"{m:.{self.precision}f}"
        if pd.notna(s):
            text += f" ± {s:.{self.precision}f}"
        if col == MEAN and row in self.incomplete:
            text += " †"
        return text

    def cells(self) -> pd.DataFrame:
        """The matrix as display strings (rows labelled, random-weight rows marked)."""
        table = pd.DataFrame(
            [[self.cell(r, c) for c in self.mean.columns] for r in self.mean.index],
            index=[self.row_label(r) for r in self.mean.index], columns=list(self.mean.columns),
        )
        table.index.name = "method"
        return table

    def row_label(self, row: str) -> str:
        return f"{row} {RANDOM_MARK}" if self.rows.at[row, "random_weights"] else row

    def long(self) -> pd.DataFrame:
        """Tidy table (the CSV export): one row per variant x column with mean, std and seed count."""
        records = []
        for row in self.mean.index:
            info = self.rows.loc[row]
            for col in self.mean.columns:
                records.append({
                    "method": info["method"], "preset": info["preset"], "config_hash": info["config_hash"],
                    "variant": row, "random_weights": bool(info["random_weights"]), "category": col,
                    "mean": self.mean.at[row, col], "std": self.std.at[row, col], "n_seeds": int(self.n.at[row, col]),
                    "rank": int(self.rank.at[row, col]), "dataset": self.dataset, "metric": self.metric,
                    "metric_version": self.metric_version,
                })
        columns = ["method", "preset", "config_hash", "variant", "random_weights", "category", "mean", "std",
                   "n_seeds", "rank", "dataset", "metric", "metric_version"]
        return pd.DataFrame(records, columns=columns)

    def caption(self, with_root: bool = True) -> str:
        """What a reader needs to interpret the table (dataset, metric, protocol, seeds, metric version)."""
        roots = f" at {', '.join(self.roots)}" if self.roots and with_root else ""
        seeds = self.seeds
        parts = [
            f"{self.metric_label} on {self.dataset}{roots}",
            f"protocol: {PROTOCOL}",
            f"mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1
            else f"single seed ({seeds[0] if seeds else '-'}), no std",
            f"metric version {self.metric_version}",
            "best in bold, second underlined",
        ]
        if self.incomplete:
            parts.append("† mean over a subset of the categories")
        if self.any_random:
            parts.append("⚠ random backbone weights (not pretrained; not ranked)")
        return "; ".join(parts) + "."


def _variant_labels(jobs: pd.DataFrame) -> pd.Series:
    """'method (preset)', plus '#hash' where one method+preset has several configs in the table."""
    base = jobs["method"] + jobs["preset"].map(lambda p: f" ({p})" if p else "")
    per_base = jobs.groupby(base)["config_hash"].transform("nunique")
    return base.where(per_base <= 1, base + " #" + jobs["config_hash"])


def _rank(values: pd.Series, eligible: pd.Series, precision: int) -> pd.Series:
    """1 for the best, 2 for the second best (higher is better; ties at display precision share a rank)."""
    ranked = values.where(eligible).round(precision)
    distinct = sorted(ranked.dropna().unique(), reverse=True)
    best = {v: i + 1 for i, v in enumerate(distinct[:2])}
    return ranked.map(lambda v: best.get(v, 0) if pd.notna(v) else 0).astype(int)


def build_leaderboard(
    results: pd.DataFrame,
    metric: str,
    metric_version: str | None = None,
    methods: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    include_random: bool = True,
    timings: pd.DataFrame | None = None,
    precision: int = 3,
    dataset: str | None = None,
) -> Leaderboard:
    """Matrix of `metric` from a `results_frame` (one dataset). See the module docstring for the rules."""
    frame = results[results["metric"] == metric]
    versions = list(frame.sort_values("finished_at")["metric_version"].drop_duplicates())
    if metric_version is None and versions:
        metric_version = versions[-1]  # the newest version in use
    other = [v for v in versions if v != metric_version]
    frame = frame[frame["metric_version"] == metric_version]
    if methods is not None:
        frame = frame[frame["method"].isin(list(methods))]
    if categories is not None:
        frame = frame[frame["category"].isin(list(categories))]
    if not include_random:
        frame = frame[~frame["random_weights"]]
    dataset = dataset or (", ".join(sorted(results["dataset"].unique())) if len(results) else "")
    roots = sorted(frame["root"].unique()) if len(frame) else []
    cats = sorted(frame["category"].unique()) if categories is None else [c for c in categories if c in set(frame["category"])]

    if frame.empty:
        empty = pd.DataFrame(columns=[*cats, MEAN], dtype=float)
        rows = pd.DataFrame(columns=["method", "preset", "config_hash", "random_weights", "seed_list", "n_categories"])
        return Leaderboard(dataset, roots, metric, metric_version, cats, empty, empty.copy(), empty.copy(),
                           empty.copy(), rows, other, precision)

    frame = frame.assign(variant=_variant_labels(frame).values)
    # A re-run of the same variant x category x seed replaces the older one: the latest job wins.
    frame = frame.sort_values("job_id").drop_duplicates(["variant", "category", "seed"], keep="last")

    grouped = frame.groupby(["variant", "category"])["value"]
    mean = grouped.mean().unstack("category").reindex(columns=cats)
    std = grouped.std(ddof=1).unstack("category").reindex(columns=cats)  # sample std; NaN for one seed
    n = grouped.count().unstack("category").reindex(columns=cats).fillna(0).astype(int)

    # Mean column: the average of the category means; its std is over seeds of the per-seed category
    # average, using only seeds that cover every category the variant has (otherwise not comparable).
    mean[MEAN] = mean[cats].mean(axis=1)
    per_seed = frame.pivot_table(index=["variant", "seed"], columns="category", values="value", aggfunc="first")
    per_seed = per_seed.reindex(columns=cats)
    covered = mean[cats].notna()
    seed_avgs = {}
    for variant, table in per_seed.groupby(level="variant"):
        need = covered.loc[variant]
        full = table.loc[:, need[need].index].dropna()
        seed_avgs[variant] = full.mean(axis=1)
    std[MEAN] = [seed_avgs[v].std(ddof=1) if len(seed_avgs[v]) > 1 else np.nan for v in mean.index]
    n[MEAN] = [len(seed_avgs[v]) for v in mean.index]

    info = frame.groupby("variant").agg(
        method=("method", "first"), preset=("preset", "first"), config_hash=("config_hash", "first"),
        random_weights=("random_weights", "max"), weights_source=("weights_source", lambda s: ", ".join(sorted(set(s.dropna())))),
        seed_list=("seed", lambda s: sorted(set(s))), jobs=("job_id", "nunique"),
        device=("device", lambda s: ", ".join(sorted(set(s)))),
    )
    info["n_categories"] = mean[cats].notna().sum(axis=1)
    info["seeds"] = info["seed_list"].map(len)
    if timings is not None and len(timings):
        t = timings.merge(frame[["job_id", "category", "variant"]].drop_duplicates(), on=["job_id", "category"])
        eff = t.groupby("variant").agg(images_per_s=("images_per_s", "mean"), fit_s=("fit_s", "mean"),
                                       peak_rss_mb=("peak_rss_mb", "max"))
        info = info.join(eff)
    # Order rows by the mean column (best first), random-weight rows last.
    info = info.assign(_mean=mean[MEAN]).sort_values(["random_weights", "_mean"], ascending=[True, False])
    order = list(info.index)
    info = info.drop(columns="_mean")
    mean, std, n = mean.loc[order], std.loc[order], n.loc[order]

    real = ~info["random_weights"]
    eligible = real if real.any() else pd.Series(True, index=info.index)
    rank = pd.DataFrame({c: _rank(mean[c], eligible, precision) for c in cats}, index=order)
    complete = info["n_categories"] == len(cats)
    rank[MEAN] = _rank(mean[MEAN], eligible & complete, precision)
    for table in (mean, std, n, rank):
        table.index.name = "variant"
        table.columns.name = None
    return Leaderboard(dataset, roots, metric, metric_version, cats, mean, std, n, rank, info, other, precision)


def leaderboard(
    dataset: str,
    metric: str,
    root: str | None = None,
    metric_version: str | None = None,
    methods: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    include_random: bool = True,
    group_id: str | None = None,
    url: str | None = None,
) -> Leaderboard:
    """Query + build in one call (what `iad export` and the benchmark use)."""
    results = results_frame(dataset=dataset, root=root, metrics=[metric], group_id=group_id, url=url)
    timings = timings_frame(results["job_id"].unique().tolist(), url=url) if len(results) else None
    return build_leaderboard(results, metric, metric_version, methods, categories, include_random, timings,
                             dataset=dataset)
