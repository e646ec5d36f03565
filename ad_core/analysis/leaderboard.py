"""Leaderboard tables: the method x category matrix built from a long table of stored results.

Pure analysis (pandas/numpy, no SQL): the input is `db.results.results_frame` (one row per job x category
x metric) with what decides whether two numbers are comparable: method, preset, a hash of the full config,
seed, weights source and metric version. `build_leaderboard` turns that long table into the matrix
researchers put in papers: one row per method *variant* (method + preset + config), one column per category
plus the mean, mean ± std over seeds, the best and second-best value per column, and efficiency columns from
the stored timings (`db.results.timings_frame`). Rules that keep numbers honest:

- one metric version per table (the newest by default; the others are reported, never mixed in);
- one split recipe per table (`split_key`: the dataset as downloaded by default; other recipes are
  reported, never pooled), and the caption states the recipe in words;
- one ground truth per table (`gt_version`: the dataset's own files by default, or an annotation set's
  version; results against other ground truths are reported, never mixed), stated in the caption when it is
  not the dataset's own or others exist;
- one evaluation frame per table (`eval_frame`, `ad_core.frame`: the full image at 256 px by default; results
  stored before frames were recorded count as `native`; other frames are reported, never pooled), stated in
  the caption;
- within a table, every result of one category and seed comes from the same files: results whose split
  content hash differs from the newest one for that category and seed (the data changed on disk) are left
  out and counted in `excluded`;
- a different config of the same method is a different row (a short config hash tells them apart);
- rows whose backbone had random weights are flagged and never take part in the best/second ranking
  unless every row is random;
- a re-run of the same variant x category x seed replaces the older result (latest job wins), so
  re-runs never count as extra seeds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ad_core.annotations import DEFAULT_GT_LABEL, DEFAULT_GT_VERSION
from ad_core.catalog import DEFAULT_FRAME, METRIC_VERSION, METRICS

MEAN = "mean"
RANDOM_MARK = "⚠ random weights"
# Key of the dataset-as-downloaded recipe (`ad_core.splits.SplitSpec().key`), the default table.
STANDARD_SPLIT_KEY = '{"kind": "standard", "seed": null}'


def config_hash(config: dict[str, Any] | None) -> str:
    """Short stable hash of a full method config: equal hashes = comparable runs."""
    text = json.dumps(config or {}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


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
    split_key: str = STANDARD_SPLIT_KEY
    split_label: str = "standard"
    protocol: str = ""  # the split recipe in words
    other_splits: list[str] = field(default_factory=list)  # labels of recipes present but not shown
    excluded: int = 0  # results left out because their data (split content hash) changed since
    # The values behind the means: one row per variant x column (categories + MEAN) x seed; columns
    # variant, column, seed, value, job_id (the MEAN column's values are per-seed averages over the
    # categories, with no job_id).
    seed_values: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["variant", "column", "seed", "value", "job_id"]))
    eval_frame: str | None = None  # the evaluation frame's key (`ad_core.frame`); None = not recorded
    eval_frame_label: str = ""
    other_frames: list[str] = field(default_factory=list)  # labels of frames present but not shown
    gt_version: str = DEFAULT_GT_VERSION  # the ground truth the numbers were computed against
    gt_label: str = DEFAULT_GT_LABEL
    other_gts: list[str] = field(default_factory=list)  # labels of ground-truth versions present but not shown
    # Marks next to cells (variant, column) -> text, e.g. NOT_SIGNIFICANT on a best entry
    # (`ad_core.analysis.significance.board_evidence`), with the caption's explanations in `mark_notes`.
    marks: dict[tuple[str, str], str] = field(default_factory=dict)
    mark_notes: list[str] = field(default_factory=list)

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
        if (row, col) in self.marks:
            text += " " + self.marks[(row, col)]
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
                    "metric_version": self.metric_version, "split": self.split_label, "frame": self.eval_frame,
                })
        columns = ["method", "preset", "config_hash", "variant", "random_weights", "category", "mean", "std",
                   "n_seeds", "rank", "dataset", "metric", "metric_version", "split", "frame"]
        return pd.DataFrame(records, columns=columns)

    def caption(self, with_root: bool = True) -> str:
        """What a reader needs to interpret the table (dataset, metric, protocol, seeds, metric version)."""
        roots = f" at {', '.join(self.roots)}" if self.roots and with_root else ""
        seeds = self.seeds
        parts = [
            f"{self.metric_label} on {self.dataset}{roots}",
            f"split: {self.split_label} ({self.protocol})" if self.protocol else f"split: {self.split_label}",
            *self.frame_caption(),
            *([f"ground truth: {self.gt_label}"] if self.gt_version != DEFAULT_GT_VERSION or self.other_gts else []),
            f"mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1
            else f"single seed ({seeds[0] if seeds else '-'}), no std",
            f"metric version {self.metric_version}",
            "best in bold, second underlined",
        ]
        if self.incomplete:
            parts.append("† mean over a subset of the categories")
        if self.any_random:
            parts.append("⚠ random backbone weights (not pretrained; not ranked)")
        parts.extend(self.mark_notes)
        return "; ".join(parts) + "."


    def frame_caption(self) -> list[str]:
        """The caption part naming the evaluation frame (none when the results carry no frame)."""
        return [f"evaluation frame: {self.eval_frame_label}"] if self.eval_frame_label else []


def metric_versions(frame: pd.DataFrame) -> list[str]:
    """The metric versions of a results frame, oldest first: in the order of their first finished job, with
    this code's `METRIC_VERSION` last whenever present (re-scored rows of an old job are the newest version,
    although their job finished first)."""
    if frame.empty:
        return []
    versions = list(frame.sort_values("finished_at", kind="stable")["metric_version"].drop_duplicates())
    return sorted(versions, key=lambda v: v == METRIC_VERSION)  # stable: only moves the current one last


def _pick_one(frame: pd.DataFrame, column: str, label_column: str, wanted: str | None, default: str,
              what: str) -> tuple[str, str, list[str]]:
    """(key, label, labels of the others) of the one value of `column` a table shows: `wanted` (a key or its
    label), else `default` when it has results, else the value with the most results. ValueError when `wanted`
    has no results, naming the values that have (`what` words the error, e.g. "in evaluation frame")."""
    counts = frame.groupby(column).size().sort_values(ascending=False, kind="stable")
    labels = (frame.drop_duplicates(column).set_index(column)[label_column] if label_column in frame
              else pd.Series({k: str(k) for k in counts.index}))
    if wanted is None:
        key = default if default in counts.index else str(counts.index[0])
    elif wanted in counts.index:
        key = wanted
    else:
        by_label = [k for k in counts.index if labels[k] == wanted]
        if not by_label:
            raise ValueError(f"no results {what} {wanted!r}; with results: "
                             f"{', '.join(f'{k} ({labels[k]})' for k in counts.index)}")
        key = by_label[0]
    return key, str(labels[key]), [str(labels[k]) for k in counts.index if k != key]


def _pick_frame(frame: pd.DataFrame, eval_frame: str | None) -> tuple[str | None, str, list[str]]:
    """The evaluation frame a table shows (`_pick_one`; default `DEFAULT_FRAME`). A frame without an
    `eval_frame` column (no frame recorded) keeps `eval_frame` and no label."""
    if "eval_frame" not in frame or frame.empty:
        return eval_frame, "", []
    return _pick_one(frame, "eval_frame", "eval_frame_label", eval_frame, DEFAULT_FRAME, "in evaluation frame")


def _pick_gt(frame: pd.DataFrame, gt_version: str | None) -> tuple[str, str, list[str]]:
    """The ground-truth version a table shows (`_pick_one`; default: the dataset's own files). Frames without a
    `gt_version` column hold only the dataset's ground truth."""
    if "gt_version" not in frame or frame.empty:
        return gt_version or DEFAULT_GT_VERSION, DEFAULT_GT_LABEL if not gt_version else str(gt_version), []
    return _pick_one(frame, "gt_version", "gt_label", gt_version, DEFAULT_GT_VERSION, "against ground truth")


def _pick_split(frame: pd.DataFrame, split: str | None) -> tuple[str | None, str, str, list[str]]:
    """(key, label, protocol, labels of the other recipes) of the recipe a table shows."""
    if "split_key" not in frame or frame.empty:
        return split, split or "standard", "", []
    counts = frame.groupby("split_key").size().sort_values(ascending=False, kind="stable")
    labels = frame.drop_duplicates("split_key").set_index("split_key")
    if split is None:
        key = STANDARD_SPLIT_KEY if STANDARD_SPLIT_KEY in counts.index else str(counts.index[0])
    elif split in counts.index:
        key = split
    else:
        by_label = [k for k in counts.index if labels.at[k, "split_label"] == split]
        if not by_label:
            raise ValueError(f"no results on split {split!r}; splits with results: "
                             f"{', '.join(labels.loc[counts.index, 'split_label'])}")
        key = by_label[0]
    others = [str(labels.at[k, "split_label"]) for k in counts.index if k != key]
    return key, str(labels.at[key, "split_label"]), str(labels.at[key, "protocol"]), others


def _same_files(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep, per category and seed, only results on the newest job's split content hash; count the others."""
    if "split_hash" not in frame or frame.empty:
        return frame, 0
    hashed = frame[frame["split_hash"].notna()]
    newest = hashed.sort_values("job_id").groupby(["category", "seed"])["split_hash"].last()
    reference = pd.Series(list(zip(frame["category"], frame["seed"], strict=True)), index=frame.index).map(newest)
    stale = frame["split_hash"].notna() & reference.notna() & (frame["split_hash"] != reference)
    return frame[~stale], int(frame.loc[stale, "job_id"].nunique())


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
    split: str | None = None,
    eval_frame: str | None = None,
    gt_version: str | None = None,
) -> Leaderboard:
    """Matrix of `metric` from a `results_frame` (one dataset). See the module docstring for the rules.

    `split` picks the split recipe by key or label; default: the standard split when it has results, else
    the recipe with the most results. `eval_frame` picks the evaluation frame (key, e.g. 'full:256' or
    'native', or label) among the results on that recipe; default: `DEFAULT_FRAME` when it has results, else
    the frame with the most results.
    """
    frame = results[results["metric"] == metric]
    gt_key, gt_label, other_gts = _pick_gt(frame, gt_version)  # one ground truth per table, never mixed
    if "gt_version" in frame:
        frame = frame[frame["gt_version"] == gt_key]
    split_key, split_label, protocol, other_splits = _pick_split(frame, split)
    if split_key is not None:
        frame = frame[frame["split_key"] == split_key]
    frame_key, frame_label, other_frames = _pick_frame(frame, eval_frame)
    if frame_key is not None and "eval_frame" in frame:
        frame = frame[frame["eval_frame"] == frame_key]
    frame, excluded = _same_files(frame)
    framing = {"eval_frame": frame_key, "eval_frame_label": frame_label, "other_frames": other_frames}
    framing.update(gt_version=gt_key, gt_label=gt_label, other_gts=other_gts)
    versions = metric_versions(frame)
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
                           empty.copy(), rows, other, precision, split_key or STANDARD_SPLIT_KEY, split_label,
                           protocol, other_splits, excluded, **framing)

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
    # The nearest-neighbour search of memory-bank methods (exact or a named approximation), part of the
    # config hash and shown with the efficiency columns, since it trades speed for exactness.
    scorers = frame.groupby("variant")["scorer"].agg(lambda s: ", ".join(sorted(set(s.dropna())))) \
        if "scorer" in frame else pd.Series("", index=info.index)
    info["scorer"] = [s or None for s in scorers.reindex(info.index).fillna("")]
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
    seed_values = pd.concat(
        [frame[["variant", "category", "seed", "value", "job_id"]].rename(columns={"category": "column"}),
         *(pd.DataFrame({"variant": v, "column": MEAN, "seed": a.index.get_level_values("seed"), "value": a.values})
           for v, a in seed_avgs.items())],
        ignore_index=True,
    )
    return Leaderboard(dataset, roots, metric, metric_version, cats, mean, std, n, rank, info, other, precision,
                       split_key, split_label, protocol, other_splits, excluded, seed_values, **framing)
