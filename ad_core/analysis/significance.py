"""Is a gap real? Significance of differences between methods (pure numpy/scipy/pandas, no SQL).

Two methods on one class (the same test images):

- `paired_bootstrap`: the difference of a metric under resampling of the *test images*, the same resample
  for both methods (paired), stratified by image label (normal and anomalous images are resampled separately,
  so every resample keeps both and every image metric stays defined; pROC's default for ROC bootstraps).
  Several seeds per method: the statistic is the difference of the seed means, every seed seeing the same
  resample. Several classes: the difference of the class means (each class resampled within itself), which
  is what the leaderboard's mean column shows. Percentile interval, seeded: the same call gives the same
  interval.
- `delong_test`: DeLong, DeLong & Clarke-Pearson (1988) for two correlated image AUROCs, in the fast
  midrank form of Sun & Xu (2014); the closed-form alternative to the bootstrap for image AUROC.
- Pixel metrics over images (`PixelCounts`): each image's pixels are counted once, above a grid of
  thresholds per method (quantiles of its maps), so that a resample of images is a weighted sum of per-image
  counts (a matrix product) rather than a new sort of millions of pixels. The grid makes each resample's
  pixel AUROC / AUPRO approximate (to about 1e-3 with 1,000 thresholds); the interval is therefore centred on
  the exact difference: exact + (resampled - grid value at the full sample), the bootstrap's shift only.

Many methods over many classes (`rank_test`, Demšar 2006): per-class ranks (1 = best, ties averaged),
Friedman's test (Demšar's chi-square and Iman-Davenport's F), then Nemenyi's post-hoc test
(`scikit_posthocs.posthoc_nemenyi_friedman`; critical difference CD = q_alpha sqrt(k(k+1) / 6N) with q_alpha
from the studentized range) or Wilcoxon signed-rank tests with Holm's correction
(`scikit_posthocs.posthoc_wilcoxon`). `cliques` are the groups a critical-difference diagram joins with a bar.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import ndimage, stats

from ad_core import metrics

if TYPE_CHECKING:
    from ad_core.analysis.leaderboard import Leaderboard

ALPHA = 0.05
N_BOOT = 2000
BOOT_SEED = 0
N_THRESHOLDS = 1000
STORED_TOLERANCE = 1e-6  # recomputed from the stored scores vs the stored metric value
IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "aupro")
POSTHOCS = ("nemenyi", "wilcoxon-holm")
# 8-connected regions, as MVTec AD's evaluation code labels its ground-truth masks (`ad_core.metrics`).
_REGIONS = np.ones((3, 3), dtype=int)


# --- DeLong ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeLong:
    """DeLong's test of AUROC(a) = AUROC(b) on the same images: z statistic and two-sided p-value."""

    auc_a: float
    auc_b: float
    se: float  # standard error of auc_a - auc_b
    z: float
    p: float


def _delong_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROCs [k] and the structural components V10 [k, m] (anomalous) and V01 [k, n] (normal) of k score
    rows, from midranks (Sun & Xu 2014, Algorithm 1)."""
    pos, neg = scores[:, labels], scores[:, ~labels]
    m, n = pos.shape[1], neg.shape[1]
    ranks_all = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    ranks_pos = stats.rankdata(pos, axis=1)
    ranks_neg = stats.rankdata(neg, axis=1)
    auc = (ranks_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (ranks_all[:, :m] - ranks_pos) / n  # per anomalous image: share of normals it outscores
    v01 = 1.0 - (ranks_all[:, m:] - ranks_neg) / m  # per normal image: share of anomalies above it
    return auc, v10, v01


def delong_test(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> DeLong:
    """DeLong's test for two correlated image AUROCs (same images, `labels` 1 = anomalous). p = 1 when the
    two score vectors rank the images identically (the difference has no variance)."""
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        raise ValueError("DeLong's test needs both anomalous and normal images")
    scores = np.vstack([np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)])
    if scores.shape[1] != y.size:
        raise ValueError(f"{y.size} labels but {scores.shape[1]} scores")
    auc, v10, v01 = _delong_components(y, scores)
    cov = np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(auc[0] - auc[1])
    if var <= 1e-15:
        return DeLong(float(auc[0]), float(auc[1]), 0.0, 0.0 if diff == 0 else np.copysign(np.inf, diff),
                      1.0 if diff == 0 else 0.0)
    z = diff / np.sqrt(var)
    return DeLong(float(auc[0]), float(auc[1]), float(np.sqrt(var)), float(z), float(2 * stats.norm.sf(abs(z))))


# --- paired bootstrap ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """metric(a) - metric(b) with its paired-bootstrap interval (and DeLong's p for image AUROC)."""

    metric: str
    a: float
    b: float
    low: float
    high: float
    n_images: int
    n_boot: int = N_BOOT
    seed: int = BOOT_SEED
    level: float = 1 - ALPHA
    delong_p: tuple[float, ...] = ()  # one per seed pair compared (image AUROC only)

    @property
    def diff(self) -> float:
        return self.a - self.b

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return bool(self.low > 0 or self.high < 0)

    def text(self, precision: int = 3) -> str:
        """'Δ +0.012 [-0.004, +0.030] (95 % bootstrap, 2000 resamples of 83 images); DeLong p = 0.21'."""
        f = f"+.{precision}f"
        text = (f"Δ {self.diff:{f}} [{self.low:{f}}, {self.high:{f}}] ({self.level:.0%} paired bootstrap, "
                f"{self.n_boot} resamples of {self.n_images} images)")
        if self.delong_p:
            text += "; DeLong p = " + ", ".join(f"{p:.3g}" for p in self.delong_p)
        return text


@dataclass(frozen=True)
class Group:
    """One class's test set for a paired comparison: labels [n] (1 = anomalous) and each method's scores as
    [seeds, n] (rows: seeds; columns: the same images in the same order)."""

    labels: np.ndarray
    scores_a: np.ndarray
    scores_b: np.ndarray

    @classmethod
    def of(cls, labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> Group:
        y = np.asarray(labels).astype(bool)
        a, b = np.atleast_2d(np.asarray(scores_a, dtype=np.float64)), np.atleast_2d(np.asarray(scores_b, dtype=np.float64))
        if a.shape[1] != y.size or b.shape[1] != y.size:
            raise ValueError(f"{y.size} labels but scores of {a.shape[1]} and {b.shape[1]} images")
        if y.all() or not y.any():
            raise ValueError("a paired comparison needs both anomalous and normal test images")
        return cls(y, a, b)


def _resample_counts(labels: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] how often each image is drawn, normal and anomalous images resampled separately."""
    counts = np.zeros((n_boot, labels.size))
    for stratum in (np.flatnonzero(labels), np.flatnonzero(~labels)):
        counts[:, stratum] = rng.multinomial(stratum.size, np.full(stratum.size, 1.0 / stratum.size), size=n_boot)
    return counts


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Image AUROC under image weights: [B] for weights [B, n] (counts of a resample); ties count one half.
    Equals `ad_core.metrics.image_auroc` for weights of ones."""
    levels, level_of = np.unique(scores, return_inverse=True)
    neg = ~labels
    per_level = np.zeros((weights.shape[0], levels.size))
    np.add.at(per_level.T, level_of[neg], weights[:, neg].T)  # normal weight at each distinct score
    below = np.cumsum(per_level, axis=1) - per_level
    pos_levels = level_of[labels]
    won = weights[:, labels] * (below[:, pos_levels] + 0.5 * per_level[:, pos_levels])
    return won.sum(axis=1) / (weights[:, labels].sum(axis=1) * weights[:, neg].sum(axis=1))


def _image_metric_under(metric: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """metric(labels, scores [n], weights [B, n]) -> [B]: vectorised for AUROC, else one call per resample
    on the repeated images (AP and F1-max depend on multiplicities the same way)."""
    if metric == "image_auroc":
        return weighted_auroc
    fn = getattr(metrics, metric)

    def under(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
        index = np.arange(labels.size)
        out = np.empty(weights.shape[0])
        for b, w in enumerate(weights.astype(np.int64)):
            take = np.repeat(index, w)
            out[b] = fn(labels[take], scores[take])
        return out

    return under


def paired_bootstrap(
    groups: Group | Sequence[Group],
    metric: str = "image_auroc",
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
    level: float = 1 - ALPHA,
) -> Difference:
    """Paired, label-stratified bootstrap over test images of metric(a) - metric(b) for an image metric:
    per group (class) the difference of seed means, averaged over the groups. Seeded (`seed`)."""
    if metric not in IMAGE_METRICS:
        raise ValueError(f"paired_bootstrap works on image scores ({', '.join(IMAGE_METRICS)}); for {metric} "
                         "use PixelCounts")
    groups = [groups] if isinstance(groups, Group) else list(groups)
    rng = np.random.default_rng(seed)
    fn = _image_metric_under(metric)
    full_a, full_b, boot = [], [], np.zeros(n_boot)
    for g in groups:
        ones = np.ones((1, g.labels.size))
        full_a.append(np.mean([fn(g.labels, s, ones)[0] for s in g.scores_a]))
        full_b.append(np.mean([fn(g.labels, s, ones)[0] for s in g.scores_b]))
        weights = _resample_counts(g.labels, n_boot, rng)
        boot += (np.mean([fn(g.labels, s, weights) for s in g.scores_a], axis=0)
                 - np.mean([fn(g.labels, s, weights) for s in g.scores_b], axis=0))
    boot /= len(groups)
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    p = ()
    if metric == "image_auroc" and len(groups) == 1:
        g = groups[0]
        p = tuple(delong_test(g.labels, a, b).p for a, b in zip(g.scores_a, g.scores_b, strict=False))
    return Difference(metric, float(np.mean(full_a)), float(np.mean(full_b)), float(low), float(high),
                      sum(g.labels.size for g in groups), n_boot, seed, level, p)


# --- pixel metrics over images ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelCounts:
    """One method's pixels on one test set, counted per image at or above each of T thresholds: what a
    resample of images needs for pixel AUROC and AUPRO (a weighted sum over images)."""

    anomalous_above: np.ndarray  # [n, T] anomalous pixels scoring >= threshold t
    normal_above: np.ndarray  # [n, T] anomaly-free pixels scoring >= t
    overlap_above: np.ndarray  # [n, T] summed region overlap (each region weighs 1) at >= t
    anomalous: np.ndarray  # [n] anomalous pixels per image
    normal: np.ndarray  # [n] anomaly-free pixels per image
    regions: np.ndarray  # [n] ground-truth regions per image

    @classmethod
    def of(cls, masks: ArrayLike, maps: ArrayLike, n_thresholds: int = N_THRESHOLDS) -> PixelCounts:
        masks, maps = np.asarray(masks).astype(bool), np.asarray(maps, dtype=np.float32)
        if masks.shape != maps.shape:
            raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
        # Thresholds: quantiles of all map values, highest first (the curve's order).
        thresholds = np.unique(np.quantile(maps, np.linspace(0, 1, n_thresholds)))[::-1]
        t = thresholds.size
        n = masks.shape[0]
        anomalous_above, normal_above, overlap_above = np.zeros((n, t)), np.zeros((n, t)), np.zeros((n, t))
        regions = np.zeros(n)
        ascending = thresholds[::-1]
        for i in range(n):
            # bin k (0..t): number of thresholds <= value; a pixel of bin k counts at the k highest thresholds.
            bins = np.searchsorted(ascending, maps[i].ravel(), side="right")
            m = masks[i].ravel()

            def above(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
                hist = np.bincount(values, weights=weights, minlength=t + 1)
                return np.cumsum(hist[::-1])[:t]  # [j]: pixels in bins > t-1-j, i.e. >= thresholds[j]

            normal_above[i] = above(bins[~m])
            if m.any():
                labelled, count = ndimage.label(masks[i], structure=_REGIONS)
                region = labelled.ravel()[m]
                anomalous_above[i] = above(bins[m])
                overlap_above[i] = above(bins[m], 1.0 / np.bincount(region)[region])
                regions[i] = count
        return cls(anomalous_above, normal_above, overlap_above, masks.sum(axis=(1, 2)).astype(float),
                   (~masks).sum(axis=(1, 2)).astype(float), regions)

    def metric(self, metric: str, weights: np.ndarray, fpr_limit: float = 0.3) -> np.ndarray:
        """`metric` ('pixel_auroc' or 'aupro') under image weights [B, n] -> [B]."""
        fpr = (weights @ self.normal_above) / (weights @ self.normal)[:, None]
        if metric == "pixel_auroc":
            y = (weights @ self.anomalous_above) / (weights @ self.anomalous)[:, None]
        elif metric == "aupro":
            y = np.minimum((weights @ self.overlap_above) / (weights @ self.regions)[:, None], 1.0)
        else:
            raise ValueError(f"PixelCounts computes {', '.join(PIXEL_METRICS)}, not {metric}")
        zeros, ones = np.zeros((weights.shape[0], 1)), np.ones((weights.shape[0], 1))
        fpr, y = np.hstack([zeros, fpr, ones]), np.hstack([zeros, y, ones])
        if metric == "pixel_auroc":
            return np.sum(np.diff(fpr, axis=1) * (y[:, 1:] + y[:, :-1]), axis=1) / 2
        return np.array([metrics._area_up_to(f, p, fpr_limit) / fpr_limit for f, p in zip(fpr, y, strict=True)])


def pixel_bootstrap(
    labels: ArrayLike,
    counts_a: PixelCounts,
    counts_b: PixelCounts,
    metric: str,
    exact_a: float,
    exact_b: float,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
    level: float = 1 - ALPHA,
) -> Difference:
    """Paired, label-stratified bootstrap over test images of a pixel metric's difference (one class, one
    seed per method), centred on the exact difference `exact_a - exact_b` (see the module docstring)."""
    y = np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    weights = _resample_counts(y, n_boot, rng)
    ones = np.ones((1, y.size))
    grid_diff = counts_a.metric(metric, ones)[0] - counts_b.metric(metric, ones)[0]
    boot = counts_a.metric(metric, weights) - counts_b.metric(metric, weights) - grid_diff + (exact_a - exact_b)
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Difference(metric, float(exact_a), float(exact_b), float(low), float(high), int(y.size), n_boot, seed, level)


def compare_category(
    labels: ArrayLike,
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    masks: np.ndarray | None = None,
    maps_a: np.ndarray | None = None,
    maps_b: np.ndarray | None = None,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> list[Difference]:
    """Two runs on one class (the same images in the same order): the image metrics from the scores and,
    when `masks` and both runs' maps are given (the same evaluation frame), pixel AUROC and AUPRO."""
    group = Group.of(labels, scores_a, scores_b)
    diffs = [paired_bootstrap(group, metric, n_boot, seed) for metric in IMAGE_METRICS]
    if masks is not None and maps_a is not None and maps_b is not None:
        counts_a, counts_b = PixelCounts.of(masks, maps_a), PixelCounts.of(masks, maps_b)
        exact = {"pixel_auroc": metrics.pixel_auroc, "aupro": metrics.aupro}
        for metric in PIXEL_METRICS:
            diffs.append(pixel_bootstrap(labels, counts_a, counts_b, metric, exact[metric](masks, maps_a),
                                         exact[metric](masks, maps_b), n_boot, seed))
    return diffs


# --- the leaderboard's evidence ----------------------------------------------------------------------------

NOT_SIGNIFICANT = "≈"  # a best entry not significantly better than the second
WITHIN_SEEDS = "~"  # a best entry whose gap to the second is smaller than the seed spread


@dataclass
class BoardEvidence:
    """What backs (or does not back) a leaderboard's ranking: per column, every variant against the column's
    best (`vs_best`: variant -> Difference, the best's own entry absent), the verdict on best vs second, the
    seed spread check, and the rank test across the categories."""

    metric: str
    vs_best: dict[str, dict[str, Difference]]  # column -> variant -> best minus variant
    best: dict[str, str]  # column -> best variant
    second: dict[str, str]  # column -> second variant
    within_seeds: dict[str, bool]  # column -> best - second < the larger seed std of the two
    ranks: RankTest | None = None
    reason: str = ""  # why there are no intervals (e.g. a pixel metric: needs the stored maps)
    rank_reason: str = ""  # why there is no rank test
    n_boot: int = N_BOOT

    def verdict(self, column: str) -> Difference | None:
        second = self.second.get(column)
        return None if second is None else self.vs_best.get(column, {}).get(second)

    def table(self, precision: int = 3) -> pd.DataFrame:
        """One row per column: best, second, the best's lead with its interval, DeLong's p, the verdicts."""
        rows = []
        for column, best in self.best.items():
            diff = self.verdict(column)
            rows.append({
                "column": column, "best": best, "second": self.second.get(column, ""),
                "lead": None if diff is None else round(diff.diff, precision + 1),
                "95% interval": "" if diff is None else f"[{diff.low:+.{precision}f}, {diff.high:+.{precision}f}]",
                "DeLong p": "" if diff is None or not diff.delong_p else ", ".join(f"{p:.3g}" for p in diff.delong_p),
                "significant": None if diff is None else diff.significant,
                "gap < seed std": self.within_seeds.get(column, False),
            })
        return pd.DataFrame(rows)

    def marked(self, board: Leaderboard) -> Leaderboard:
        """A copy of `board` with the best entries marked (NOT_SIGNIFICANT / WITHIN_SEEDS) and the caption
        saying what the marks mean."""
        marks = {}
        for column, best in self.best.items():
            diff = self.verdict(column)
            mark = (NOT_SIGNIFICANT if diff is not None and not diff.significant else "") + (
                WITHIN_SEEDS if self.within_seeds.get(column) else "")
            if mark:
                marks[(best, column)] = mark
        notes = []
        if self.vs_best:
            notes.append(f"{NOT_SIGNIFICANT} best not significantly better than the second ({1 - ALPHA:.0%} paired "
                         f"bootstrap over test images, {self.n_boot} resamples)")
        if any(self.within_seeds.values()):
            notes.append(f"{WITHIN_SEEDS} gap to the second smaller than the seed std")
        return dataclasses.replace(board, marks=marks, mark_notes=notes)


def _groups_of(board: Leaderboard, scores: pd.DataFrame, a: str, b: str, column: str) -> list[Group] | str:
    """The paired test sets of variants a and b in `column` (a category, or MEAN: every category), or why none."""
    from ad_core.analysis.leaderboard import MEAN

    values = board.seed_values
    categories = board.categories if column == MEAN else [column]
    groups = []
    for category in categories:
        per = {}
        for variant in (a, b):
            jobs = values[(values["variant"] == variant) & (values["column"] == category)]["job_id"].dropna()
            rows = scores[scores["job_id"].isin(jobs.astype(int)) & (scores["category"] == category)]
            if rows.empty:
                return f"no per-image scores stored for {variant} on {category}"
            per[variant] = rows.pivot_table(index="path", columns="job_id", values="score", aggfunc="first")
            labels = rows.drop_duplicates("path").set_index("path")["label"]
        if set(per[a].index) != set(per[b].index):
            return f"{a} and {b} were tested on different images of {category}"
        paths = sorted(per[a].index)
        if per[a].loc[paths].isna().any().any() or per[b].loc[paths].isna().any().any():
            return f"some runs of {category} lack scores for some images"
        try:
            groups.append(Group.of(labels.loc[paths].to_numpy(), per[a].loc[paths].to_numpy().T,
                                   per[b].loc[paths].to_numpy().T))
        except ValueError as exc:
            return f"{category}: {exc}"
    return groups


def rank_table(board: Leaderboard) -> pd.DataFrame:
    """Categories x variants of the board's means, for the rank test: variants with every category only, and
    random-weight rows only when every row is random (as in the ranking)."""
    rows = board.rows
    real = rows.index[~rows["random_weights"]] if (~rows["random_weights"]).any() else rows.index
    return board.mean.loc[real, board.categories].T.dropna(axis=1)


def board_evidence(
    board: Leaderboard, scores: pd.DataFrame, n_boot: int = N_BOOT, seed: int = BOOT_SEED, alpha: float = ALPHA,
    posthoc: str = "nemenyi",
) -> BoardEvidence:
    """The evidence behind `board` from the per-image scores of its jobs (`db.results.image_scores_frame`:
    job_id, category, path, label, score). Intervals for image metrics; the seed spread check and the rank
    test for every metric. Random-weight rows take part only when every row is random (as in the ranking)."""
    from ad_core.analysis.leaderboard import MEAN

    rows = board.rows
    columns = [*board.categories, MEAN]
    best, second, within = {}, {}, {}
    for column in columns:
        ranked = board.rank[column]
        firsts, seconds = list(ranked.index[ranked == 1]), list(ranked.index[ranked == 2])
        if not firsts:
            continue
        best[column] = firsts[0]
        runner_up = firsts[1:] + seconds  # a tie at display precision: the other best is the "second"
        if runner_up:
            second[column] = runner_up[0]
            spread = board.std.loc[[firsts[0], runner_up[0]], column].max()
            gap = board.mean.at[firsts[0], column] - board.mean.at[runner_up[0], column]
            within[column] = bool(pd.notna(spread) and gap < spread)
    vs_best: dict[str, dict[str, Difference]] = {}
    reason = ""
    if board.metric not in IMAGE_METRICS:
        reason = (f"{board.metric}: intervals over test images need the stored maps and masks; the run comparison "
                  "(Run detail) computes them")
    else:
        eligible = [v for v in rows.index if not rows.at[v, "random_weights"]] or list(rows.index)
        for column, top in best.items():
            out = {}
            for variant in eligible:
                if variant == top or pd.isna(board.mean.at[variant, column]):
                    continue
                groups = _groups_of(board, scores, top, variant, column)
                if isinstance(groups, str):
                    reason = reason or groups
                    continue
                diff = paired_bootstrap(groups, board.metric, n_boot, seed, 1 - alpha)
                # The scores must give the table's own numbers; they do not when the table's metrics were
                # re-scored against another ground truth than the labels stored with the scores.
                if (abs(diff.a - board.mean.at[top, column]) > STORED_TOLERANCE
                        or abs(diff.b - board.mean.at[variant, column]) > STORED_TOLERANCE):
                    reason = reason or (f"the stored per-image scores of {column} do not reproduce the table's "
                                        f"{board.metric} (re-scored against another ground truth?): no interval")
                    continue
                out[variant] = diff
            vs_best[column] = out
    ranks, rank_reason = None, ""
    try:
        ranks = rank_test(rank_table(board), alpha=alpha, posthoc=posthoc)
    except ValueError as exc:
        rank_reason = str(exc)
    return BoardEvidence(board.metric, vs_best, best, second, within, ranks, reason, rank_reason, n_boot)


# --- many methods over many classes -----------------------------------------------------------------------


@dataclass
class RankTest:
    """Friedman's test and a post-hoc test over blocks (classes) x methods, as in Demšar (2006)."""

    average_ranks: pd.Series  # per method, best (lowest) first
    n_blocks: int
    chi2: float  # Friedman's statistic (Demšar's eq. without tie correction)
    p: float
    f: float  # Iman-Davenport's F
    p_f: float
    posthoc: str
    pvalues: pd.DataFrame  # pairwise post-hoc p-values (adjusted for Wilcoxon-Holm)
    cd: float | None  # Nemenyi's critical difference in average rank (None for Wilcoxon-Holm)
    alpha: float = ALPHA
    cliques: list[list[str]] = field(default_factory=list)  # groups not significantly different (>= 2)

    @property
    def k(self) -> int:
        return len(self.average_ranks)

    def different(self, a: str, b: str) -> bool:
        return bool(self.pvalues.at[a, b] < self.alpha)

    def summary(self) -> str:
        text = (f"Friedman over {self.n_blocks} classes and {self.k} methods: chi² = {self.chi2:.2f}, "
                f"p = {self.p:.3g} (Iman-Davenport F = {self.f:.2f}, p = {self.p_f:.3g})")
        if self.posthoc == "nemenyi":
            return text + f"; Nemenyi CD = {self.cd:.2f} at α = {self.alpha:g}"
        return text + f"; Wilcoxon signed-rank with Holm's correction at α = {self.alpha:g}"


def _cliques(order: list[str], same: Callable[[str, str], bool]) -> list[list[str]]:
    """Maximal runs of rank-ordered methods whose pairs are all not significantly different."""
    runs = []
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and all(same(order[x], order[j + 1]) for x in range(i, j + 1)):
            j += 1
        if j > i:
            runs.append((i, j))
    maximal = [r for r in runs if not any(o != r and o[0] <= r[0] and r[1] <= o[1] for o in runs)]
    return [order[i : j + 1] for i, j in maximal]


def rank_test(
    values: pd.DataFrame, higher_is_better: bool = True, alpha: float = ALPHA, posthoc: str = "nemenyi"
) -> RankTest:
    """Friedman + post-hoc over `values` (rows: blocks, e.g. classes; columns: methods; no missing cells).
    Needs at least 3 methods and 2 blocks."""
    import scikit_posthocs as sp

    if posthoc not in POSTHOCS:
        raise ValueError(f"posthoc must be one of {', '.join(POSTHOCS)}")
    values = values.dropna()
    n, k = values.shape
    if k < 3 or n < 2:
        raise ValueError(f"Friedman's test needs >= 3 methods and >= 2 classes with values for all; got {k} x {n}")
    ranks = (-values if higher_is_better else values).rank(axis=1, method="average")
    average = ranks.mean(axis=0).sort_values(kind="stable")
    chi2 = 12 * n / (k * (k + 1)) * (float(np.sum(average**2)) - k * (k + 1) ** 2 / 4)
    f = (n - 1) * chi2 / (n * (k - 1) - chi2) if n * (k - 1) != chi2 else np.inf
    p, p_f = float(stats.chi2.sf(chi2, k - 1)), float(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))
    order = list(average.index)
    if posthoc == "nemenyi":
        q = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / np.sqrt(2)
        cd = q * np.sqrt(k * (k + 1) / (6 * n))
        pvalues = sp.posthoc_nemenyi_friedman(values.to_numpy())
        pvalues.index = pvalues.columns = list(values.columns)

        def same(a: str, b: str) -> bool:
            return abs(average[a] - average[b]) <= cd
    else:
        cd = None
        pvalues = sp.posthoc_wilcoxon([values[c].to_numpy() for c in values.columns], zero_method="zsplit",
                                      p_adjust="holm")
        pvalues.index = pvalues.columns = list(values.columns)

        def same(a: str, b: str) -> bool:
            return not pvalues.at[a, b] < alpha
    pvalues = pvalues.loc[order, order]
    return RankTest(average, n, float(chi2), p, float(f), p_f, posthoc, pvalues, cd, alpha, _cliques(order, same))


__all__ = [
    "ALPHA", "BOOT_SEED", "NOT_SIGNIFICANT", "WITHIN_SEEDS", "BoardEvidence", "board_evidence", "compare_category", "rank_table", "IMAGE_METRICS", "N_BOOT", "PIXEL_METRICS", "POSTHOCS", "DeLong", "Difference", "Group",
    "PixelCounts", "RankTest", "delong_test", "paired_bootstrap", "pixel_bootstrap", "rank_test", "weighted_auroc",
]
