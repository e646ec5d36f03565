"""Imbalance analysis (issue 10, long-tailed track): how each method degrades from head to tail classes.

Pure analysis (pandas/numpy/scipy, no SQL): the input is `db.results.results_frame` (one row per job x
category x metric, with `n_train`, the training images of that category in that job's split). Everything
works on *points*: one per method variant x category x seed, each with its own training count. A long-tailed
recipe with `seed=None` draws head and tail classes with the run's seed, so a class may be a head class for
seed 0 and a tail class for seed 1: points are grouped first and aggregated over seeds only afterwards.

- `select_points`: the points of one metric, one metric version, one split recipe and one evaluation frame
  (the leaderboard's honesty rules: never pooled across recipes, frames or versions, results on changed data
  left out, the latest re-run wins, random-weight variants flagged);
- `scatter_points` / `trend_lines`: metric against training images per class (least squares on log10 n);
- `make_grouping` + `group_table`: many/medium/few groups (the long-tail literature's >100 / 20-100 / <20
  images, or tertiles of the split's own counts), per-seed group means, mean ± std over seeds and the
  head-tail gap, as a `Leaderboard` (`GroupBoard`) so `ad_core.analysis.export` renders it unchanged;
- `drop_table`: the same variant on the long-tailed split vs on the standard split of the same dataset,
  per class, and the long-tailed jobs that have no standard counterpart yet (`Drop.missing`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from ad_core.analysis.leaderboard import (
    RANDOM_MARK,
    STANDARD_SPLIT_KEY,
    Leaderboard,
    _pick_frame,
    _pick_split,
    _rank,
    _same_files,
    _variant_labels,
    metric_versions,
)
from ad_core.catalog import METRICS

MANY, MEDIUM, FEW = "many", "medium", "few"
GROUPS: tuple[str, ...] = (MANY, MEDIUM, FEW)
ALL = "all"  # every class (the per-seed mean over all classes)
GAP = "gap"  # many - few
COLUMNS: tuple[str, ...] = (*GROUPS, ALL, GAP)

LITERATURE, TERTILES = "literature", "tertiles"
GROUPINGS: tuple[str, ...] = (LITERATURE, TERTILES)
# Many-shot / medium-shot / few-shot of the long-tail literature (Liu et al., "Large-Scale Long-Tailed
# Recognition in an Open World", CVPR 2019): many > 100, medium 20-100, few < 20 training images per class.
MANY_ABOVE = 100
FEW_BELOW = 20
LONG_TAIL_KIND = "long_tail"

POINT_COLUMNS = ["variant", "method", "preset", "config_hash", "random_weights", "category", "seed", "n_train",
                 "value", "job_id"]


# --- grouping conventions -----------------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{round(x):d}" if abs(x - round(x)) < 1e-9 else f"{x:.2f}"


@dataclass(frozen=True)
class Grouping:
    """Head/medium/tail by training images per class: many if n > `many_above`; few if n < `few_below`
    (`few_inclusive`: n <= `few_below`); medium otherwise."""

    convention: str
    few_below: float
    many_above: float
    few_inclusive: bool = False
    n_counts: int = 0  # tertiles: how many per-class counts the thresholds come from

    def group_of(self, n: float) -> str:
        if n > self.many_above:
            return MANY
        if n < self.few_below or (self.few_inclusive and n <= self.few_below):
            return FEW
        return MEDIUM

    def assign(self, counts: pd.Series) -> pd.Series:
        return counts.map(self.group_of)

    def rules(self) -> dict[str, str]:
        """Group -> its inequality on n (training images per class)."""
        lo, hi = _num(self.few_below), _num(self.many_above)
        if self.few_inclusive:
            return {MANY: f"n > {hi}", MEDIUM: f"{lo} < n ≤ {hi}", FEW: f"n ≤ {lo}"}
        return {MANY: f"n > {hi}", MEDIUM: f"{lo} ≤ n ≤ {hi}", FEW: f"n < {lo}"}

    def words(self) -> dict[str, str]:
        """Group -> its rule in words (plain ASCII: LaTeX captions typeset it as it is)."""
        lo, hi = _num(self.few_below), _num(self.many_above)
        if self.few_inclusive:
            return {MANY: f"more than {hi}", MEDIUM: f"more than {lo} up to {hi}", FEW: f"at most {lo}"}
        return {MANY: f"more than {hi}", MEDIUM: f"{lo} to {hi}", FEW: f"fewer than {lo}"}

    def describe(self) -> str:
        rules = self.rules()
        text = ", ".join(f"{g} {rules[g]}" for g in GROUPS)
        if self.convention == TERTILES:
            return f"tertiles of the split's {self.n_counts} per-class training counts: {text}"
        return f"long-tail convention (Liu et al., CVPR 2019): {text} training images"


def literature_grouping() -> Grouping:
    return Grouping(LITERATURE, FEW_BELOW, MANY_ABOVE, few_inclusive=False)


def tertile_grouping(counts: Sequence[float] | pd.Series) -> Grouping:
    """Thresholds at the 1/3 and 2/3 quantiles (numpy's linear interpolation) of the given counts:
    few n <= q1/3, medium q1/3 < n <= q2/3, many n > q2/3."""
    values = np.asarray(pd.Series(counts, dtype=float).dropna())
    if not len(values):
        raise ValueError("no training counts: tertiles are undefined")
    q1, q2 = np.quantile(values, [1 / 3, 2 / 3])
    return Grouping(TERTILES, float(q1), float(q2), few_inclusive=True, n_counts=len(values))


def make_grouping(convention: str | Grouping, counts: Sequence[float] | pd.Series | None = None) -> Grouping:
    if isinstance(convention, Grouping):
        return convention
    if convention == LITERATURE:
        return literature_grouping()
    if convention == TERTILES:
        return tertile_grouping(counts if counts is not None else [])
    raise ValueError(f"unknown grouping {convention!r}; use one of {', '.join(GROUPINGS)}")


# --- points ----------------------------------------------------------------------------------------------------


def split_kind(split_key: str) -> str | None:
    """The kind of a stored recipe key (`SplitSpec.key`, JSON); None when unreadable."""
    try:
        return json.loads(split_key).get("kind")
    except (ValueError, AttributeError):
        return None


def default_split(results: pd.DataFrame) -> str | None:
    """The recipe an imbalance view shows by default: the long-tailed recipe with the most results, else the
    leaderboard's default (the standard split when it has results)."""
    if results.empty or "split_key" not in results:
        return None
    counts = results.groupby("split_key").size().sort_values(ascending=False, kind="stable")
    tailed = [k for k in counts.index if split_kind(str(k)) == LONG_TAIL_KIND]
    return str(tailed[0]) if tailed else _pick_split(results, None)[0]


@dataclass
class Points:
    """One metric on one split recipe and metric version: one row per variant x category x seed."""

    frame: pd.DataFrame  # POINT_COLUMNS
    counts: pd.DataFrame  # the split's training counts: category, seed, n_train (all methods)
    dataset: str
    roots: list[str]
    metric: str
    metric_version: str | None
    split_key: str | None
    split_label: str
    protocol: str
    other_versions: list[str] = field(default_factory=list)
    other_splits: list[str] = field(default_factory=list)
    excluded: int = 0  # jobs left out: their data changed since (split content hash)
    uncounted: int = 0  # results without a stored training count (older runs), left out
    eval_frame: str | None = None  # the evaluation frame's key (`ad_core.frame`)
    eval_frame_label: str = ""
    other_frames: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.frame.empty

    @property
    def metric_label(self) -> str:
        return METRICS.get(self.metric, self.metric)

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.frame["seed"].unique())

    @property
    def variants(self) -> list[str]:
        """Variants, pretrained first (by name), random-weight ones last."""
        info = self.frame.drop_duplicates("variant")[["variant", "random_weights"]]
        return list(info.sort_values(["random_weights", "variant"])["variant"])

    def is_random(self, variant: str) -> bool:
        return bool(self.frame.loc[self.frame["variant"] == variant, "random_weights"].any())

    def label(self, variant: str) -> str:
        return f"{variant} {RANDOM_MARK}" if self.is_random(variant) else variant


def select_points(
    results: pd.DataFrame,
    metric: str,
    split: str | None = None,
    metric_version: str | None = None,
    methods: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    include_random: bool = True,
    dataset: str | None = None,
    need_counts: bool = True,
    eval_frame: str | None = None,
) -> Points:
    """The points of `metric` on one split recipe (key or label; default: `default_split`) and one metric
    version (default: the newest in use). Raises ValueError for a split with no results.

    Rules (as in `build_leaderboard`): results whose split content hash differs from the newest one for
    the same category and seed are left out (`excluded`); a re-run of the same variant x category x seed
    replaces the older one; `need_counts` leaves out (and counts in `uncounted`) results without `n_train`;
    one evaluation frame (`eval_frame`, key or label; default as `build_leaderboard`: the default frame when
    it has results on the recipe, else the frame with the most results).
    """
    frame = results[results["metric"] == metric]
    if split is None:
        split = default_split(frame)
    split_key, split_label, protocol, other_splits = _pick_split(frame, split)
    if split_key is not None and "split_key" in frame:
        frame = frame[frame["split_key"] == split_key]
    frame_key, frame_label, other_frames = _pick_frame(frame, eval_frame)
    if frame_key is not None and "eval_frame" in frame:
        frame = frame[frame["eval_frame"] == frame_key]
    frame, excluded = _same_files(frame)
    versions = metric_versions(frame)
    if metric_version is None and versions:
        metric_version = versions[-1]
    other_versions = [v for v in versions if v != metric_version]
    frame = frame[frame["metric_version"] == metric_version]
    frame = frame[frame["value"].notna()]
    if categories is not None:
        frame = frame[frame["category"].isin(list(categories))]
    dataset = dataset or (", ".join(sorted(results["dataset"].unique())) if len(results) else "")
    if "n_train" not in frame:
        frame = frame.assign(n_train=np.nan)
    uncounted = 0
    if need_counts:
        missing = frame["n_train"].isna()
        uncounted = int(missing.sum())
        frame = frame[~missing]
    frame = frame.assign(n_train=frame["n_train"].astype(float))
    counts = (frame.sort_values("job_id").drop_duplicates(["category", "seed"], keep="last")
              [["category", "seed", "n_train"]].reset_index(drop=True))
    if methods is not None:
        frame = frame[frame["method"].isin(list(methods))]
    if not include_random:
        frame = frame[~frame["random_weights"].astype(bool)]
    roots = sorted(frame["root"].unique()) if len(frame) else []
    if frame.empty:
        points = pd.DataFrame(columns=POINT_COLUMNS)
    else:
        frame = frame.assign(variant=_variant_labels(frame).values)
        frame = frame.sort_values("job_id").drop_duplicates(["variant", "category", "seed"], keep="last")
        points = frame[POINT_COLUMNS].sort_values(["variant", "category", "seed"]).reset_index(drop=True)
        points["random_weights"] = points["random_weights"].astype(bool)
    return Points(points, counts, dataset, roots, metric, metric_version, split_key, split_label, protocol,
                  other_versions, other_splits, excluded, uncounted, frame_key, frame_label, other_frames)


# --- scatter and trend ---------------------------------------------------------------------------------------------


def scatter_points(points: Points) -> pd.DataFrame:
    """Plot points: per variant x category x training count, the mean over the seeds that gave the class
    this count (`seeds`, `values`: what the mean is of)."""
    columns = ["variant", "label", "random_weights", "category", "n_train", "value", "n_seeds", "seeds", "values"]
    if points.empty:
        return pd.DataFrame(columns=columns)
    f = points.frame
    rows = []
    for (variant, category, n), g in f.groupby(["variant", "category", "n_train"], sort=True):
        g = g.sort_values("seed")
        rows.append({
            "variant": variant, "label": points.label(variant), "random_weights": bool(g["random_weights"].any()),
            "category": category, "n_train": float(n), "value": float(g["value"].mean()), "n_seeds": len(g),
            "seeds": ", ".join(str(int(s)) for s in g["seed"]),
            "values": ", ".join(f"{v:.3f}" for v in g["value"]),
        })
    return pd.DataFrame(rows, columns=columns)


def trend_lines(points: Points) -> pd.DataFrame:
    """Per variant: least squares of the metric on log10(training images) over its points (one per
    category x seed). `slope` = change of the metric per tenfold more training images; `r`, `p_value`
    (two-sided, slope = 0) and `stderr` from `scipy.stats.linregress`. NaN with fewer than 2 distinct counts."""
    columns = ["slope", "intercept", "r", "p_value", "stderr", "n_points", "n_min", "n_max"]
    rows = {}
    for variant in points.variants:
        g = points.frame[(points.frame["variant"] == variant) & (points.frame["n_train"] > 0)]
        x, y = np.log10(g["n_train"].to_numpy(float)), g["value"].to_numpy(float)
        fit = dict.fromkeys(columns[:5], np.nan)
        if len(np.unique(x)) >= 2:
            res = stats.linregress(x, y)
            fit = {"slope": res.slope, "intercept": res.intercept, "r": res.rvalue,
                   "p_value": res.pvalue if len(x) > 2 else np.nan, "stderr": res.stderr if len(x) > 2 else np.nan}
        rows[variant] = {**fit, "n_points": len(g), "n_min": g["n_train"].min() if len(g) else np.nan,
                         "n_max": g["n_train"].max() if len(g) else np.nan}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    out.index.name = "variant"
    return out


# --- groups ------------------------------------------------------------------------------------------------------------


def per_seed_groups(points: Points, grouping: Grouping) -> pd.DataFrame:
    """Per variant x seed x group: the mean over the group's classes (`value`) and how many classes
    (`n_classes`); group `all` = every class, `gap` = many - few (only where both groups have classes).

    A seed that lacks some of the variant's categories (an unfinished sweep) is left out whole, so that every
    per-seed mean covers the same classes (`partial_seeds` in `group_table`'s rows)."""
    columns = ["variant", "seed", "group", "value", "n_classes"]
    if points.empty:
        return pd.DataFrame(columns=columns)
    f = points.frame.assign(group=grouping.assign(points.frame["n_train"]))
    seed_categories = f.groupby(["variant", "seed"])["category"].transform("nunique")
    f = f[seed_categories == f["variant"].map(f.groupby("variant")["category"].nunique())]
    groups = (f.groupby(["variant", "seed", "group"])["value"].agg(value="mean", n_classes="count").reset_index())
    every = f.groupby(["variant", "seed"])["value"].agg(value="mean", n_classes="count").reset_index().assign(group=ALL)
    wide = groups.pivot_table(index=["variant", "seed"], columns="group", values="value")
    gap = (wide[MANY] - wide[FEW]).dropna() if {MANY, FEW} <= set(wide.columns) else pd.Series(dtype=float)
    gaps = pd.DataFrame({"variant": [i[0] for i in gap.index], "seed": [i[1] for i in gap.index], "group": GAP,
                         "value": gap.to_numpy(float), "n_classes": np.nan})
    out = pd.concat([x for x in (groups, every, gaps) if len(x)], ignore_index=True)
    return out[columns].sort_values(["variant", "seed", "group"]).reset_index(drop=True)


@dataclass
class GroupBoard(Leaderboard):
    """The group table: rows = variants, columns = many / medium / few / all / gap (a `Leaderboard`, so
    `ad_core.analysis.export` renders it). Cells: mean ± std over seeds of the per-seed group mean."""

    grouping: Grouping | None = None
    group_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # group -> (min, max) classes per seed
    uncounted: int = 0

    @property
    def empty_groups(self) -> list[str]:
        return [g for g in GROUPS if self.group_sizes.get(g, (0, 0))[1] == 0]

    @property
    def partial(self) -> list[str]:
        """Variants whose table leaves out seeds that lack some categories."""
        return [] if self.empty else list(self.rows.index[self.rows["partial_seeds"] > 0])

    def _size(self, group: str) -> str:
        lo, hi = self.group_sizes.get(group, (0, 0))
        n = f"{lo}" if lo == hi else f"{lo}–{hi}"
        return f"{n} class{'es' if hi != 1 else ''}" + (" per seed" if lo != hi else "")

    def caption(self, with_root: bool = True) -> str:
        """Dataset, recipe, grouping convention with its thresholds and class counts, what a cell is, metric
        version. Plain words for the thresholds (no <, >, ≤ or −), so that LaTeX typesets it unchanged."""
        grouping = self.grouping or literature_grouping()
        roots = f" at {', '.join(self.roots)}" if self.roots and with_root else ""
        words = grouping.words()
        seeds = self.seeds
        groups = ", ".join(f"{g} = {words[g]} ({self._size(g)})" for g in GROUPS)
        what = (f"mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1
                else f"single seed ({seeds[0] if seeds else '-'}), no std")
        source = (f"tertiles of the split's {grouping.n_counts} per-class training counts"
                  if grouping.convention == TERTILES else "the long-tail convention of Liu et al., CVPR 2019")
        parts = [
            f"{self.metric_label} on {self.dataset}{roots} by training images per class",
            f"split: {self.split_label} ({self.protocol})" if self.protocol else f"split: {self.split_label}",
            *self.frame_caption(),
            f"groups by {source}: {groups} training images",
            f"cells: {what} of the per-seed group mean (the mean over the classes in the group in that seed, "
            "each class with its own count)",
            f"{ALL} = every class; {GAP} = {MANY} - {FEW}, per seed (not ranked)",
            f"metric version {self.metric_version}",
            "best in bold, second underlined",
        ]
        empty = self.empty_groups
        if empty:
            parts.append(f"– = no class in the {' and '.join(empty)} group"
                         + (", so no gap" if {MANY, FEW} & set(empty) else ""))
        fewer = [f"{self.row_label(v)}: {n}" for v, n in self.rows["seeds"].items() if n < len(seeds)]
        if fewer:
            parts.append(f"fewer seeds for {', '.join(fewer)}")
        if self.partial:
            parts.append("seeds lacking some categories are left out")
        if self.any_random:
            parts.append("⚠ random backbone weights (not pretrained; not ranked)")
        return "; ".join(parts) + "."

    def long(self) -> pd.DataFrame:
        table = super().long()
        table["grouping"] = (self.grouping or literature_grouping()).describe()
        return table


def _group_sizes(points: Points, grouping: Grouping) -> dict[str, tuple[int, int]]:
    """Per group: the fewest and most classes it holds in one seed of the split (0, 0 = empty)."""
    counts = points.counts
    if counts.empty:
        return {g: (0, 0) for g in GROUPS}
    counts = counts.assign(group=grouping.assign(counts["n_train"]))
    table = counts.groupby(["seed", "group"]).size().unstack("group").reindex(columns=list(GROUPS)).fillna(0)
    return {g: (int(table[g].min()), int(table[g].max())) for g in GROUPS}


def group_table(points: Points, grouping: str | Grouping = LITERATURE, precision: int = 3) -> GroupBoard:
    """The many/medium/few (+ all, gap) table of `points`: per variant, the mean ± std (sample std, ddof=1)
    over seeds of the per-seed group means; `n` = seeds per cell. A group with no class stays empty (NaN,
    shown as '–'), and so does the gap when many or few is empty. Ranks: higher is better for the groups and
    `all`; the gap is not ranked; random-weight rows are never ranked unless every row is random."""
    grouping = make_grouping(grouping, points.counts["n_train"] if len(points.counts) else None)
    sizes = _group_sizes(points, grouping)
    cols = list(COLUMNS)
    seeded = per_seed_groups(points, grouping)
    base = dict(dataset=points.dataset, roots=points.roots, metric=points.metric,
                metric_version=points.metric_version, categories=cols, other_versions=points.other_versions,
                precision=precision, split_key=points.split_key or STANDARD_SPLIT_KEY,
                split_label=points.split_label, protocol=points.protocol, other_splits=points.other_splits,
                excluded=points.excluded, grouping=grouping, group_sizes=sizes, uncounted=points.uncounted,
                eval_frame=points.eval_frame, eval_frame_label=points.eval_frame_label,
                other_frames=points.other_frames)
    if seeded.empty:
        empty = pd.DataFrame(columns=cols, dtype=float)
        rows = pd.DataFrame(columns=["method", "preset", "config_hash", "random_weights", "seed_list",
                                     "n_categories", "partial_seeds", "seeds"])
        return GroupBoard(mean=empty, std=empty.copy(), n=empty.copy(), rank=empty.copy(), rows=rows, **base)

    grouped = seeded.groupby(["variant", "group"])["value"]
    mean = grouped.mean().unstack("group").reindex(columns=cols)
    std = grouped.std(ddof=1).unstack("group").reindex(columns=cols)
    n = grouped.count().unstack("group").reindex(columns=cols).fillna(0).astype(int)

    f = points.frame
    info = f.groupby("variant").agg(
        method=("method", "first"), preset=("preset", "first"), config_hash=("config_hash", "first"),
        random_weights=("random_weights", "max"), seed_list=("seed", lambda s: sorted({int(x) for x in s})),
        n_classes=("category", "nunique"), jobs=("job_id", "nunique"),
    )
    used = seeded.groupby("variant")["seed"].apply(lambda s: sorted({int(x) for x in s}))
    info["partial_seeds"] = [len(info.at[v, "seed_list"]) - len(used.get(v, [])) for v in info.index]
    info["seed_list"] = [used.get(v, []) for v in info.index]
    info["seeds"] = info["seed_list"].map(len)
    info["n_categories"] = len(cols)  # every column is defined by the groups, never a subset mean
    info = info.loc[mean.index]
    info = info.assign(_all=mean[ALL]).sort_values(["random_weights", "_all"], ascending=[True, False])
    order = list(info.index)
    info = info.drop(columns="_all")
    mean, std, n = mean.loc[order], std.loc[order], n.loc[order]
    real = ~info["random_weights"].astype(bool)
    eligible = real if real.any() else pd.Series(True, index=info.index)
    rank = pd.DataFrame({c: _rank(mean[c], eligible, precision) for c in [*GROUPS, ALL]}, index=order)
    rank[GAP] = 0
    for table in (mean, std, n, rank):
        table.index.name = "variant"
        table.columns.name = None
    return GroupBoard(mean=mean, std=std, n=n, rank=rank, rows=info, **base)


# --- long-tailed vs full training set ----------------------------------------------------------------------------


@dataclass
class Drop:
    """Per variant x category: the metric on the long-tailed split and on the standard split (same variant,
    dataset root, evaluation frame and metric version), and the drop caused by imbalance (`drop` = full −
    long-tailed)."""

    table: pd.DataFrame
    missing: pd.DataFrame  # long-tailed jobs with no standard result for some (category, seed) of theirs
    metric: str
    metric_version: str | None
    split_label: str
    note: str = ""  # why there is no table (e.g. the chosen split is the standard one)
    eval_frame: str | None = None  # both sides' evaluation frame (`ad_core.frame`)
    eval_frame_label: str = ""

    TABLE_COLUMNS: ClassVar[tuple[str, ...]] = (
        "variant", "method", "random_weights", "category", "n_train", "seeds", "long_tail", "long_tail_std",
        "long_tail_seeds", "n_train_full", "full", "full_std", "full_seeds", "drop", "relative_drop",
    )
    MISSING_COLUMNS: ClassVar[tuple[str, ...]] = ("job_id", "variant", "method", "preset", "config_hash", "seed", "categories",
                                        "missing_categories")

    @property
    def empty(self) -> bool:
        return self.table.empty


def _key(frame: pd.DataFrame) -> pd.Series:
    return frame["method"].astype(str) + "\x00" + frame["preset"].fillna("").astype(str) + "\x00" + frame["config_hash"]


def drop_table(
    results: pd.DataFrame,
    metric: str,
    split: str | None = None,
    metric_version: str | None = None,
    methods: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    include_random: bool = True,
    dataset: str | None = None,
    eval_frame: str | None = None,
) -> Drop:
    """Long-tailed (`split`, default `default_split`) vs standard split, per variant, class and long-tailed
    training count.

    Rows are points grouped first: a `seed=None` recipe may give a class 200 images in seed 0 and 5 in seed
    1, which are two rows (`n_train`, with the `seeds` that gave the class this count), never one average.
    Variants are matched by method, preset and full config hash; both sides use the long-tailed side's metric
    version. `long_tail` is the mean over those seeds, `full` the mean over the variant's standard-split seeds
    of the class (`*_std`: sample std, NaN for one seed; `n_train_full`: the standard training count).
    `drop` = full − long_tail, `relative_drop` = drop / full. A class without a standard result has NaN there
    and its long-tailed jobs are listed in `missing` (one row per job: a multi-class job covers all its
    classes at once). Both sides are in one evaluation frame (`eval_frame`; default: as `select_points`
    picks it for the long-tailed side)."""
    lt = select_points(results, metric, split, metric_version, methods, categories, include_random, dataset,
                       eval_frame=eval_frame)
    framing = {"eval_frame": lt.eval_frame, "eval_frame_label": lt.eval_frame_label}
    empty = Drop(pd.DataFrame(columns=list(Drop.TABLE_COLUMNS)), pd.DataFrame(columns=list(Drop.MISSING_COLUMNS)),
                 metric, lt.metric_version, lt.split_label, **framing)
    if lt.split_key == STANDARD_SPLIT_KEY:
        empty.note = "this is the standard split: choose a long-tailed split to compare against it"
        return empty
    if lt.empty:
        empty.note = "no long-tailed results match these filters"
        return empty
    base = results[results["metric"] == metric]
    if "split_key" in base and (base["split_key"] == STANDARD_SPLIT_KEY).any():
        standard = base[base["split_key"] == STANDARD_SPLIT_KEY]
        if lt.eval_frame is not None and "eval_frame" in standard:
            standard = standard[standard["eval_frame"] == lt.eval_frame]
        full_frame = pd.DataFrame(columns=POINT_COLUMNS)
        if len(standard):
            full = select_points(standard, metric, STANDARD_SPLIT_KEY, lt.metric_version, methods,
                                 sorted(lt.frame["category"].unique()), include_random, dataset, need_counts=False,
                                 eval_frame=lt.eval_frame)
            full_frame = full.frame
    else:
        full_frame = pd.DataFrame(columns=POINT_COLUMNS)
    lt_frame = lt.frame.assign(key=_key(lt.frame))
    labels = dict(zip(lt_frame["key"], lt_frame["variant"], strict=False))
    full_frame = full_frame.assign(key=_key(full_frame) if len(full_frame) else pd.Series(dtype=str))
    full_frame = full_frame[full_frame["key"].isin(labels)].assign(variant=lambda d: d["key"].map(labels))

    side = lt_frame.groupby(["variant", "category", "n_train"]).agg(
        method=("method", "first"), random_weights=("random_weights", "max"),
        seeds=("seed", lambda s: ", ".join(str(int(x)) for x in sorted(s))), long_tail=("value", "mean"),
        long_tail_std=("value", lambda v: v.std(ddof=1)), long_tail_seeds=("seed", "nunique"),
    ).reset_index("n_train")
    if len(full_frame):
        other = full_frame.groupby(["variant", "category"]).agg(
            n_train_full=("n_train", "mean"), full=("value", "mean"), full_std=("value", lambda v: v.std(ddof=1)),
            full_seeds=("seed", "nunique"),
        )
    else:
        other = pd.DataFrame(columns=["n_train_full", "full", "full_std", "full_seeds"],
                             index=pd.MultiIndex.from_tuples([], names=["variant", "category"]))
    table = side.join(other, how="left")
    table["full_seeds"] = table["full_seeds"].fillna(0).astype(int)
    for col in ("n_train_full", "full", "full_std"):
        table[col] = table[col].astype(float)
    table["drop"] = table["full"] - table["long_tail"]
    table["relative_drop"] = table["drop"] / table["full"]
    table = table.reset_index()[list(Drop.TABLE_COLUMNS)]
    order = {v: i for i, v in enumerate(lt.variants)}
    table = table.sort_values(["variant", "n_train", "category"],
                              key=lambda s: s.map(order) if s.name == "variant" else s,
                              ascending=[True, False, True]).reset_index(drop=True)

    done = set(zip(full_frame["key"], full_frame["category"], full_frame["seed"], strict=True))
    rows = []
    for job_id, g in lt_frame.groupby("job_id", sort=True):
        first = g.iloc[0]
        missing = [c for c in sorted(g["category"]) if (first["key"], c, first["seed"]) not in done]
        if missing:
            rows.append({"job_id": int(job_id), "variant": first["variant"], "method": first["method"],
                         "preset": first["preset"], "config_hash": first["config_hash"], "seed": int(first["seed"]),
                         "categories": sorted(g["category"]), "missing_categories": missing})
    # Values as floats (NaN where there is none: one seed's std, a missing standard run), never None objects.
    numeric = ["long_tail", "long_tail_std", "full", "full_std", "n_train_full", "drop", "relative_drop"]
    table[numeric] = table[numeric].astype(float)
    return Drop(table, pd.DataFrame(rows, columns=list(Drop.MISSING_COLUMNS)), metric, lt.metric_version,
                lt.split_label, **framing)


__all__ = [
    "ALL", "COLUMNS", "FEW", "FEW_BELOW", "GAP", "GROUPINGS", "GROUPS", "LITERATURE", "MANY", "MANY_ABOVE",
    "MEDIUM", "TERTILES", "Drop", "GroupBoard", "Grouping", "Points", "default_split", "drop_table",
    "group_table", "literature_grouping", "make_grouping", "per_seed_groups", "scatter_points", "select_points",
    "split_kind", "tertile_grouping", "trend_lines",
]
