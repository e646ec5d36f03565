"""Evaluation metrics for industrial anomaly detection: image/pixel AUROC, AP, F1-max, and AUPRO.

Every function takes the ground truth first. Image metrics take `labels` [N] (0/1 or bool, 1 = anomalous)
and `scores` [N]; pixel metrics take `masks` [N, H, W] (any dtype, values > 0.5 are anomalous) and anomaly
`maps` [N, H, W], pooled over all pixels of all images. A metric that is undefined for the given ground
truth (e.g. AUROC with one class only) is returned as nan with an `UndefinedMetricWarning`; malformed input
(shape mismatch, NaN scores) raises ValueError.

Pixel metrics run on whole test sets (MVTec AD: 1,725 maps of 256x256 = 113M pixels), so they never call
sklearn's curve functions. They sort the anomaly-free pixels once and count, for every distinct anomalous
score, how many anomaly-free pixels score at least as high (`_threshold_counts`); AUROC, AP, F1-max and the
PRO curve all follow exactly from those counts, matching sklearn and the official MVTec AD evaluation code.

Results are stored together with METRIC_VERSION; bump it whenever a definition changes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from sklearn.metrics import roc_auc_score

# One definition in the catalogue; METRIC_NAMES are the keys of `compute_all`, in display order.
from ad_core.catalog import METRIC_NAMES, METRIC_VERSION

# A ground-truth region is an 8-connected component of one mask (3x3 all-ones structure, as in MVTec AD).
_REGION_STRUCTURE = np.ones((3, 3), dtype=bool)


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the given ground truth (e.g. only one class) and was returned as nan."""


def _undefined(metric: str, reason: str) -> float:
    warnings.warn(f"{metric} is undefined: {reason}; returning nan", UndefinedMetricWarning, stacklevel=3)
    return float("nan")


# ---------------------------------------------------------------------------------------------------------
# Input validation


def _as_scores(scores: np.ndarray) -> np.ndarray:
    """Float array of scores (float32 stays float32: maps of a whole test set are large)."""
    if scores.dtype in (np.float32, np.float64):
        return scores
    return scores.astype(np.float32 if scores.dtype == np.float16 else np.float64)


def _check_finite(name: str, *arrays: np.ndarray) -> None:
    if not all(np.isfinite(array).all() for array in arrays):
        raise ValueError(f"{name} contain NaN or infinite values")


def _image_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"labels and scores must be 1-D with the same length, got labels {labels.shape} "
            f"and scores {scores.shape}"
        )
    if labels.dtype != bool and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0/1 or bool, got values {np.unique(labels)[:10].tolist()}")
    scores = _as_scores(scores)
    _check_finite("scores", scores)
    return labels.astype(bool), scores


def _pixel_inputs(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(
            f"masks and maps must have the same shape, got masks {masks.shape} and maps {maps.shape}"
        )
    if masks.ndim != 3:
        raise ValueError(f"masks and maps must be [N, H, W], got shape {masks.shape}")
    ground_truth = masks if masks.dtype == bool else masks > 0.5
    return ground_truth, _as_scores(maps)


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


# ---------------------------------------------------------------------------------------------------------
# Shared counting core


@dataclass(frozen=True)
class _ThresholdCounts:
    """Cumulative counts at every distinct score t of the positives, highest t first.

    Thresholds that only negatives score at are left out on purpose: between two consecutive positive
    scores only negatives enter, so the ROC and PRO curves run horizontally there and precision only drops.
    The points kept (`neg_above`, previous `pos_at`) and (`neg_at`, `pos_at`) therefore give exact areas,
    exact AP (recall does not change elsewhere) and the exact F1 maximum.
    """

    pos_at: np.ndarray  # positives (or their summed weights) with score >= t
    neg_at: np.ndarray  # negatives with score >= t
    neg_above: np.ndarray  # negatives with score > t
    pos_total: float
    neg_total: int


def _threshold_counts(
    pos_scores: np.ndarray,
    neg_sorted: np.ndarray,
    pos_weights: np.ndarray | None = None,
    neg_total: int | None = None,
) -> _ThresholdCounts:
    """Counts from the positives' scores and the negatives' scores sorted ascending.

    Sorting the negatives by value (np.sort) is several times faster than the argsort of all samples that
    a single-pass implementation needs; only the positives, usually a few percent of the pixels, are
    argsorted, and only when they carry weights (PRO).

    `neg_sorted` may hold only the highest negatives (all those >= its first value) of `neg_total`; the
    counts are then exact for thresholds >= neg_sorted[0], the only ones the caller may pass.
    """
    if pos_weights is None:
        ranked = np.sort(pos_scores)[::-1]
    else:
        order = np.argsort(pos_scores)[::-1]
        ranked = pos_scores[order]
    # Tied scores enter the curve together: keep the last index of each run of equal scores.
    run_ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], ranked.size > 0))
    thresholds = ranked[run_ends]
    if pos_weights is None:
        pos_at = run_ends + 1
        pos_total = float(pos_scores.size)
    else:
        cumulative = np.cumsum(pos_weights[order], dtype=np.float64)
        pos_at = cumulative[run_ends]
        pos_total = float(cumulative[-1]) if cumulative.size else 0.0
    kept = neg_sorted.size
    # Ascending queries let searchsorted narrow its search from the previous answer (~15% faster).
    ascending = thresholds[::-1]
    return _ThresholdCounts(
        pos_at=pos_at,
        neg_at=kept - np.searchsorted(neg_sorted, ascending, side="left")[::-1],
        neg_above=kept - np.searchsorted(neg_sorted, ascending, side="right")[::-1],
        pos_total=pos_total,
        neg_total=kept if neg_total is None else neg_total,
    )


def _counts(labels: np.ndarray, scores: np.ndarray) -> _ThresholdCounts:
    return _threshold_counts(scores[labels], np.sort(scores[~labels]))


def _curve_points(counts: _ThresholdCounts) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised (negatives, positives) curve from (0, 0) to (neg_total, pos_total), in threshold order.

    For each distinct positive score t: the point just above t, then the point at t (the segment between
    them is diagonal when negatives tie with positives at t).
    """
    n = counts.pos_at.size
    negatives = np.empty(2 * n + 2)
    positives = np.empty(2 * n + 2)
    negatives[0] = positives[0] = 0.0
    negatives[1:-1:2] = counts.neg_above
    negatives[2:-1:2] = counts.neg_at
    negatives[-1] = counts.neg_total
    positives[1:-1:2] = np.concatenate(([0.0], counts.pos_at[:-1]))
    positives[2:-1:2] = counts.pos_at
    positives[-1] = counts.pos_total
    return negatives, positives


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # np.trapezoid only exists from numpy 2.0 on; the project still supports 1.26.
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2)


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under the polyline (x, y) (x non-decreasing, x[0] <= x_max) from x[0] to x_max.

    The segment that crosses x_max is cut there, with y linearly interpolated (as MVTec AD's `trapezoid`).
    """
    end = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    if end < x.size:
        x0, x1, y0, y1 = x[end - 1], x[end], y[end - 1], y[end]
        y_at_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        x = np.append(x[:end], x_max)
        y = np.append(y[:end], y_at_max)
    return _trapezoid(y, x)


def _auroc_from_counts(counts: _ThresholdCounts, metric: str) -> float:
    if counts.pos_total == 0 or counts.neg_total == 0:
        return _undefined(metric, "needs both anomalous and normal samples")
    negatives, positives = _curve_points(counts)
    return _trapezoid(positives / counts.pos_total, negatives / counts.neg_total)


def _ap_from_counts(counts: _ThresholdCounts, metric: str) -> float:
    """sklearn's average_precision_score: sum of precision times recall increase (a step function)."""
    if counts.pos_total == 0:
        return _undefined(metric, "no anomalous samples")
    recall = counts.pos_at / counts.pos_total
    precision = counts.pos_at / (counts.pos_at + counts.neg_at)
    return max(0.0, float(np.sum(np.diff(recall, prepend=0.0) * precision)))


def _f1_max_from_counts(counts: _ThresholdCounts, metric: str) -> float:
    """Maximum over thresholds of 2PR/(P+R) = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + #positives)."""
    if counts.pos_total == 0:
        return _undefined(metric, "no anomalous samples")
    return float(np.max(2 * counts.pos_at / (counts.pos_at + counts.neg_at + counts.pos_total)))


# ---------------------------------------------------------------------------------------------------------
# Image metrics


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve of image scores (sklearn's `roc_auc_score`); nan if only one class."""
    labels, scores = _image_inputs(labels, scores)
    if labels.all() or not labels.any():
        return _undefined("image_auroc", "needs both anomalous and normal images")
    return float(roc_auc_score(labels, scores))


def image_ap(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision of image scores (sklearn's step-wise `average_precision_score`)."""
    return _ap_from_counts(_counts(*_image_inputs(labels, scores)), "image_ap")


def image_f1_max(labels: ArrayLike, scores: ArrayLike) -> float:
    """Best F1 over all thresholds on the image scores (points of sklearn's `precision_recall_curve`)."""
    return _f1_max_from_counts(_counts(*_image_inputs(labels, scores)), "image_f1_max")


# ---------------------------------------------------------------------------------------------------------
# Pixel metrics


# Cut for a partial ranking: a quantile of every _CUT_STRIDE-th anomaly-free pixel (a prime, so the sample does
# not follow image rows), lowered by _CUT_MARGIN of the pixels so that sampling error practically never leaves
# too few above it (checked exactly; then all are sorted).
_CUT_STRIDE = 97
_CUT_MARGIN = 0.01


@dataclass(frozen=True)
class _PixelRanking:
    """Validated pixel inputs, with the anomaly-free pixels sorted once for all pixel metrics.

    `from_inputs(..., fpr_limit=x)` keeps only what a curve up to FPR x needs: the anomaly-free pixels scoring
    >= a cut that more than x * neg_total of them reach (ties included), sorted. Every threshold below the
    cut has an FPR above x, so no curve point there can change an area up to x. With x = 0.3 about a third
    of the pixels are sorted instead of all of them.
    """

    ground_truth: np.ndarray  # [N, H, W] bool
    pos_scores: np.ndarray  # scores of the anomalous pixels, in C order of `ground_truth`
    neg_sorted: np.ndarray  # scores of the anomaly-free pixels (or all those >= a cut, see above), ascending
    neg_total: int  # number of anomaly-free pixels

    @property
    def complete(self) -> bool:
        return self.neg_sorted.size == self.neg_total

    @classmethod
    def from_inputs(cls, masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 1.0) -> _PixelRanking:
        ground_truth, maps = _pixel_inputs(masks, maps)
        # Flat views: numpy's boolean indexing of a 1-D array is several times faster than of [N, H, W].
        truth, scores = ground_truth.reshape(-1), maps.reshape(-1)
        # min and max propagate NaN and reveal infinities: one cheap look at every pixel.
        _check_finite("maps", scores.min(keepdims=True), scores.max(keepdims=True))
        pos_scores = scores[truth]
        neg_total = truth.size - pos_scores.size
        neg_sorted = _highest_negatives(scores, truth, neg_total, fpr_limit) if fpr_limit < 1 else None
        if neg_sorted is None:
            neg_sorted = scores[~truth]  # boolean indexing copies, so sorting in place is safe
            neg_sorted.sort()
        return cls(ground_truth, pos_scores, neg_sorted, neg_total)

    def counts(self) -> _ThresholdCounts:
        if not self.complete:
            raise RuntimeError("counts over all thresholds need the complete ranking (fpr_limit=1)")
        return _threshold_counts(self.pos_scores, self.neg_sorted)


def _highest_negatives(
    scores: np.ndarray, truth: np.ndarray, neg_total: int, fpr_limit: float
) -> np.ndarray | None:
    """The anomaly-free scores >= a cut that more than `fpr_limit` of them reach, sorted; None when nearly all
    would be kept or the sampled cut turns out too high (the caller then sorts them all)."""
    quantile = 1 - fpr_limit - _CUT_MARGIN
    sample = scores[::_CUT_STRIDE][~truth[::_CUT_STRIDE]]
    if quantile <= 0 or sample.size == 0:
        return None
    rank = int(quantile * (sample.size - 1))
    cut = sample[np.argpartition(sample, rank)[rank]]
    keep = scores >= cut
    keep &= ~truth
    top = scores[keep]
    if top.size <= fpr_limit * neg_total + 1:  # +1: never at the limit by rounding
        return None
    top.sort()
    return top


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level AUROC pooled over all pixels of all images (equals sklearn's `roc_auc_score`)."""
    return _auroc_from_counts(_PixelRanking.from_inputs(masks, maps).counts(), "pixel_auroc")


def pixel_ap(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level average precision pooled over all pixels (equals sklearn's `average_precision_score`)."""
    return _ap_from_counts(_PixelRanking.from_inputs(masks, maps).counts(), "pixel_ap")


def pixel_f1_max(masks: ArrayLike, maps: ArrayLike) -> float:
    """Best pixel-level F1 over all thresholds, pooled over all pixels of all images."""
    return _f1_max_from_counts(_PixelRanking.from_inputs(masks, maps).counts(), "pixel_f1_max")


def _region_weights(ground_truth: np.ndarray) -> tuple[np.ndarray, int]:
    """1 / (size of its region) for each anomalous pixel in C order, and the number of regions.

    Each region weighs 1 in total, so the summed weight above a threshold over the number of regions is the
    mean per-region overlap. Masks are labelled per image and cropped to the box around their anomalous
    pixels first (labelling the whole masks took 10x longer on bench_aupro.py's blobs). Row-major order
    within the crop is the same as within the image.
    """
    weights = []
    n_regions = 0
    for image_index in np.flatnonzero(ground_truth.any(axis=(1, 2))):
        mask = ground_truth[image_index]
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        labels, n = ndimage.label(crop, structure=_REGION_STRUCTURE)
        region_of_pixel = labels[crop]
        weights.append(1.0 / np.bincount(region_of_pixel)[region_of_pixel])
        n_regions += n
    return (np.concatenate(weights) if weights else np.empty(0)), n_regions


def _pro_curve(ranking: _PixelRanking) -> tuple[np.ndarray, np.ndarray] | str:
    """(fpr, pro) of the exact PRO curve, or the reason why it is undefined.

    From a partial ranking (see `_PixelRanking`) the curve is exact up to the FPR of its lowest kept negative
    and ends there, with one more point: (that FPR, the PRO reached), which lies on the true curve because
    only anomaly-free pixels enter between the lowest kept threshold and it.
    """
    if ranking.neg_total == 0:
        return "no anomaly-free pixels"
    pixel_weights, n_regions = _region_weights(ranking.ground_truth)
    if n_regions == 0:
        return "no anomalous ground-truth regions"
    pos_scores = ranking.pos_scores
    if not ranking.complete:
        keep = pos_scores >= ranking.neg_sorted[0]  # thresholds below the cut lie beyond the FPR limit
        pos_scores, pixel_weights = pos_scores[keep], pixel_weights[keep]
    counts = _threshold_counts(pos_scores, ranking.neg_sorted, pixel_weights, ranking.neg_total)
    negatives, covered = _curve_points(counts)
    if not ranking.complete:
        negatives[-1], covered[-1] = ranking.neg_sorted.size, covered[-2]
    fpr = negatives / counts.neg_total
    pro = np.minimum(covered / n_regions, 1.0)  # summed weights may overshoot 1 by rounding
    if ranking.complete:
        pro[-1] = 1.0
    # Drop repeated points (a threshold just above t can coincide with the previous threshold).
    keep = np.append(True, (np.diff(fpr) != 0) | (np.diff(pro) != 0))
    return fpr[keep], pro[keep]


def pro_curve(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve: (fpr, pro) arrays from (0, 0) to (1, 1), by decreasing threshold.

    At threshold t, PRO is the mean over all ground-truth regions of the test set (8-connected components
    of each mask) of the fraction of the region's pixels scoring >= t, and FPR is the fraction of all
    anomaly-free pixels of the test set scoring >= t. Points lie at distinct score values; interior points
    of horizontal runs (thresholds where only anomaly-free pixels enter) are omitted, which changes no area.
    Raises ValueError when the curve is undefined (no regions or no anomaly-free pixels).
    """
    curve = _pro_curve(_PixelRanking.from_inputs(masks, maps))
    if isinstance(curve, str):
        raise ValueError(f"the PRO curve is undefined: {curve}")
    return curve


def _aupro(ranking: _PixelRanking, fpr_limit: float) -> float:
    curve = _pro_curve(ranking)
    if isinstance(curve, str):
        return _undefined("aupro", curve)
    fpr, pro = curve
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def aupro(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to `fpr_limit` (MVTec AD's AU-PRO).

    Exact over all distinct score values (see `pro_curve`); trapezoid rule from FPR 0 to `fpr_limit`, with
    PRO linearly interpolated at FPR = `fpr_limit`, divided by `fpr_limit`. nan with a warning when there
    are no anomalous regions or no anomaly-free pixels.
    """
    _check_fpr_limit(fpr_limit)  # before the expensive part
    return _aupro(_PixelRanking.from_inputs(masks, maps, fpr_limit), fpr_limit)


# ---------------------------------------------------------------------------------------------------------


def compute_all(
    labels: ArrayLike,
    scores: ArrayLike,
    masks: ArrayLike | None = None,
    maps: ArrayLike | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float | None]:
    """All metrics as plain floats, keyed by METRIC_NAMES; pixel metrics are None when `masks` is None.

    The pixels are validated and sorted once for all pixel metrics.
    """
    _check_fpr_limit(fpr_limit)
    results: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)
    results["image_auroc"] = image_auroc(labels, scores)
    image_counts = _counts(*_image_inputs(labels, scores))
    results["image_ap"] = _ap_from_counts(image_counts, "image_ap")
    results["image_f1_max"] = _f1_max_from_counts(image_counts, "image_f1_max")
    if masks is not None:
        if maps is None:
            raise ValueError("maps are required when masks are given")
        ranking = _PixelRanking.from_inputs(masks, maps)
        if ranking.ground_truth.shape[0] != np.shape(labels)[0]:
            raise ValueError(
                f"got {np.shape(labels)[0]} image labels but {ranking.ground_truth.shape[0]} masks"
            )
        pixel_counts = ranking.counts()
        results["pixel_auroc"] = _auroc_from_counts(pixel_counts, "pixel_auroc")
        results["pixel_ap"] = _ap_from_counts(pixel_counts, "pixel_ap")
        results["pixel_f1_max"] = _f1_max_from_counts(pixel_counts, "pixel_f1_max")
        del pixel_counts
        results["aupro"] = _aupro(ranking, fpr_limit)
    return {name: None if value is None else float(value) for name, value in results.items()}


__all__ = [
    "METRIC_NAMES",
    "METRIC_VERSION",
    "UndefinedMetricWarning",
    "aupro",
    "compute_all",
    "image_ap",
    "image_auroc",
    "image_f1_max",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "pro_curve",
]
