"""Metrics against independent computations: sklearn for AUROC/AP/F1, a slow brute-force AUPRO reference."""

import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from ad_core.metrics import (
    METRIC_NAMES,
    METRIC_VERSION,
    UndefinedMetricWarning,
    aupro,
    compute_all,
    image_ap,
    image_auroc,
    image_f1_max,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
    pro_curve,
)

TOL = 1e-6


# ---------------------------------------------------------------------------------------------------------
# Independent references


def sklearn_f1_max(labels, scores):
    precision, recall, _ = precision_recall_curve(labels, scores)
    defined = precision + recall > 0  # the 0/0 points carry no F1
    return np.max(2 * precision[defined] * recall[defined] / (precision[defined] + recall[defined]))


def reference_pro_points(masks, maps):
    """Every point of the PRO curve, brute force: one boolean pass per distinct threshold."""
    masks = np.asarray(masks) > 0.5
    regions = []  # (image index, region mask)
    for index, mask in enumerate(masks):
        labeled, n_regions = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(index, labeled == k) for k in range(1, n_regions + 1)]
    normal = ~masks
    # Above the highest score nothing is detected: both FPR and PRO are 0.
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        detected = maps >= threshold
        fpr = (detected & normal).sum() / normal.sum()
        pro = np.mean([detected[index][region].sum() / region.sum() for index, region in regions])
        points.append((fpr, pro))
    return points


def reference_aupro(masks, maps, fpr_limit):
    points = reference_pro_points(masks, maps)
    xs, ys = [0.0], [0.0]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x1 <= fpr_limit:
            xs.append(x1)
            ys.append(y1)
            continue
        if x0 < fpr_limit:  # this segment crosses the limit: cut it there
            xs.append(fpr_limit)
            ys.append(y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0))
        break
    return np.trapezoid(ys, xs) / fpr_limit


# ---------------------------------------------------------------------------------------------------------
# Test data


def blob_data(seed, n_images=6, size=16, ties=False, dtype=np.float64):
    """Random blob masks (image 0 anomaly-free) and noisy maps that score the blobs higher on average."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for mask in masks[2:]:
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(0.5, 4) ** 2
    # Image 1: a pair of pixels touching only diagonally (one region under 8-connectivity) and a bar.
    masks[1, 2, 2] = masks[1, 3, 3] = True
    masks[1, 10:12, 6:14] = True
    maps = rng.normal(size=masks.shape) + 1.2 * masks
    if ties:
        maps = np.round(maps, 1)
    return masks, maps.astype(dtype)


def image_data(seed, n=60, ties=False):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    scores = rng.normal(size=n) + labels
    return labels, np.round(scores, 1) if ties else scores


# ---------------------------------------------------------------------------------------------------------
# Image and pixel AUROC / AP / F1-max


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_match_sklearn(seed, ties):
    labels, scores = image_data(seed, ties=ties)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=TOL)
    assert image_ap(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=TOL)
    assert image_f1_max(labels, scores) == pytest.approx(sklearn_f1_max(labels, scores), abs=TOL)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_metrics_match_sklearn(seed, ties, dtype):
    masks, maps = blob_data(seed, n_images=10, size=24, ties=ties, dtype=dtype)
    labels, scores = masks.ravel(), maps.ravel()
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(labels, scores), abs=TOL)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(labels, scores), abs=TOL)
    assert pixel_f1_max(masks, maps) == pytest.approx(sklearn_f1_max(labels, scores), abs=TOL)


def test_pixel_metrics_on_few_distinct_scores():
    """Nearly everything tied: only 3 distinct scores, shared by both classes."""
    rng = np.random.default_rng(5)
    masks = rng.random((4, 8, 8)) < 0.3
    maps = rng.integers(0, 3, size=masks.shape).astype(np.float32) + masks * (rng.random(masks.shape) < 0.5)
    labels, scores = masks.ravel(), maps.ravel()
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(labels, scores), abs=TOL)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(labels, scores), abs=TOL)
    assert pixel_f1_max(masks, maps) == pytest.approx(sklearn_f1_max(labels, scores), abs=TOL)


def test_hand_computed_image_metrics():
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8]
    assert image_auroc(labels, scores) == pytest.approx(0.75)
    # thresholds 0.8: P=1 R=.5; 0.4: P=2/3 R=.5; 0.35: P=2/3 R=1 -> AP = .5*1 + .5*2/3
    assert image_ap(labels, scores) == pytest.approx(0.5 + 1 / 3)
    assert image_f1_max(labels, scores) == pytest.approx(0.8)  # P=2/3, R=1


def test_mask_encodings_are_equivalent():
    masks, maps = blob_data(3)
    expected = (
        pixel_auroc(masks, maps),
        pixel_ap(masks, maps),
        pixel_f1_max(masks, maps),
        aupro(masks, maps),
    )
    for encoded in (masks.astype(np.uint8) * 255, masks.astype(np.float32), masks.astype(int)):
        got = (pixel_auroc(encoded, maps), pixel_ap(encoded, maps), pixel_f1_max(encoded, maps))
        assert got + (aupro(encoded, maps),) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------
# AUPRO


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_brute_force_reference(seed, ties, fpr_limit):
    masks, maps = blob_data(seed, ties=ties)
    expected = reference_aupro(masks, maps, fpr_limit)
    assert 0 < expected < 1
    assert aupro(masks, maps, fpr_limit) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_float32_maps(fpr_limit):
    masks, maps = blob_data(7, dtype=np.float32)
    assert aupro(masks, maps, fpr_limit) == pytest.approx(reference_aupro(masks, maps, fpr_limit), abs=TOL)


def hand_case():
    """One 3x3 image, region A (2 pixels, top left) and region B (1 pixel, bottom right); 6 normal pixels.

    Thresholds give the curve (0,0) (1/6,0) (1/6,1/4) (1/3,3/4) (1/2,3/4) (1/2,1) ... (1,1): at 0.6 a normal
    pixel ties with B, so the segment from (1/6,1/4) to (1/3,3/4) is diagonal.
    """
    mask = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1]])
    scores = np.array([[0.8, 0.4, 0.9], [0.6, 0.3, 0.1], [0.2, 0.5, 0.6]])
    return mask[None], scores[None]


@pytest.mark.parametrize(
    ("fpr_limit", "expected"),
    [
        (1.0, 17 / 24),  # 1/12 (diagonal) + 1/8 + 1/2
        (0.3, 0.2),  # PRO(0.3) = 0.65: (0.25 + 0.65) / 2 * (0.3 - 1/6) / 0.3
        (0.25, 0.125),  # PRO(0.25) = 0.5: (0.25 + 0.5) / 2 * (1/12) / 0.25
        (1 / 6, 0.0),  # up to the first normal pixel nothing is found
    ],
)
def test_aupro_hand_computed(fpr_limit, expected):
    masks, maps = hand_case()
    assert aupro(masks, maps, fpr_limit) == pytest.approx(expected, abs=1e-12)
    assert reference_aupro(masks, maps, fpr_limit) == pytest.approx(expected, abs=1e-12)


def test_aupro_regions_are_8_connected():
    """(0,0) touches (1,1) only diagonally: one region of 3 pixels, a third of which is found at once."""
    mask = np.zeros((1, 3, 3), dtype=bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 1, 2] = True
    maps = np.where(mask, 0.05, 0.5)
    maps[0, 0, 0] = 0.9
    # With 4-connectivity it would be regions {(0,0)} and {(1,1),(1,2)}: PRO 1/2 instead of 1/3.
    assert aupro(mask, maps, fpr_limit=1.0) == pytest.approx(1 / 3, abs=1e-12)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_perfect_and_inverted_maps(fpr_limit):
    masks, _ = blob_data(4)
    noise = np.random.default_rng(0).random(masks.shape)
    perfect = masks + 0.5 * noise  # every anomalous pixel above every normal one
    assert aupro(masks, perfect, fpr_limit) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, masks.astype(float), fpr_limit) == pytest.approx(1.0, abs=1e-12)
    inverted = -perfect
    assert aupro(masks, inverted, fpr_limit) == pytest.approx(
        reference_aupro(masks, inverted, fpr_limit), abs=TOL
    )
    if fpr_limit < 1:
        assert aupro(masks, inverted, fpr_limit) == 0.0


def test_aupro_counts_normal_pixels_of_good_images():
    """Adding an anomaly-free image with high scores raises the FPR and lowers AUPRO."""
    masks, maps = blob_data(0)
    good_mask = np.zeros((1, *masks.shape[1:]), dtype=bool)
    good_map = np.full((1, *maps.shape[1:]), maps.max())
    more_masks, more_maps = np.concatenate([masks, good_mask]), np.concatenate([maps, good_map])
    assert aupro(more_masks, more_maps) < aupro(masks, maps)
    assert aupro(more_masks, more_maps) == pytest.approx(reference_aupro(more_masks, more_maps, 0.3), abs=TOL)


@pytest.mark.parametrize("ties", [False, True])
def test_pro_curve_is_the_reference_curve_without_collinear_points(ties):
    masks, maps = blob_data(1, ties=ties)
    fpr, pro = pro_curve(masks, maps)
    reference = np.array(reference_pro_points(masks, maps))
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert (fpr[-1], pro[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    # Every point is a point of the reference curve ...
    distance = np.abs(np.stack([fpr, pro], 1)[:, None] - reference[None]).max(axis=2).min(axis=1)
    assert distance.max() < 1e-12
    # ... and the omitted ones change no area.
    assert np.trapezoid(pro, fpr) == pytest.approx(np.trapezoid(reference[:, 1], reference[:, 0]), abs=1e-12)
    assert len(fpr) < len(reference)


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_aupro_from_the_partial_ranking_equals_the_complete_curve(decimals):
    """aupro sorts only the anomaly-free pixels above its cut (the (floor(x n) + 1)-th highest); its value
    equals the area under the complete curve for limits between curve points, on points, and with heavy
    ties at the cut (decimals=0: a handful of distinct scores shared by both classes)."""
    masks, maps = blob_data(4, n_images=6, size=20)
    if decimals is not None:
        maps = np.round(maps, decimals)
    fpr, pro = pro_curve(masks, maps)
    n_negative = int((~masks).sum())
    for limit in (1 / n_negative, 0.01, 0.05, 0.1, 0.3, 0.5, 0.9, 1.0, *fpr[1:6], *fpr[-6:-1]):
        if limit <= 0:
            continue
        end = np.searchsorted(fpr, limit, side="right")
        x = np.append(fpr[:end], limit)
        y = np.append(pro[:end], np.interp(limit, fpr, pro))
        assert aupro(masks, maps, limit) == pytest.approx(np.trapezoid(y, x) / limit, abs=1e-12), limit


# ---------------------------------------------------------------------------------------------------------
# compute_all


def test_compute_all_matches_individual_metrics():
    masks, maps = blob_data(2)
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2))
    results = compute_all(labels, scores, masks, maps, fpr_limit=0.2)
    assert tuple(results) == METRIC_NAMES
    assert set(results) == {
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "image_f1_max",
        "pixel_f1_max",
        "image_ap",
        "pixel_ap",
    }
    assert all(type(value) is float for value in results.values())
    assert results == pytest.approx(
        {
            "image_auroc": image_auroc(labels, scores),
            "image_ap": image_ap(labels, scores),
            "image_f1_max": image_f1_max(labels, scores),
            "pixel_auroc": pixel_auroc(masks, maps),
            "pixel_ap": pixel_ap(masks, maps),
            "pixel_f1_max": pixel_f1_max(masks, maps),
            "aupro": aupro(masks, maps, fpr_limit=0.2),
        },
        abs=1e-12,
    )
    assert METRIC_VERSION == "iad-metrics-2"  # 2: pixel metrics in the evaluation frame (ad_core.frame)


def test_compute_all_without_masks():
    labels, scores = image_data(0)
    results = compute_all(labels, scores)
    assert tuple(results) == METRIC_NAMES
    assert (
        results["pixel_auroc"] is results["pixel_ap"] is results["pixel_f1_max"] is results["aupro"] is None
    )
    assert results["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=TOL)


def test_compute_all_rejects_inconsistent_inputs():
    masks, maps = blob_data(0)
    with pytest.raises(ValueError, match="maps are required"):
        compute_all(masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks)
    with pytest.raises(ValueError, match="5 image labels but 6 masks"):
        compute_all(np.array([0, 1, 0, 1, 1]), np.zeros(5), masks, maps)


# ---------------------------------------------------------------------------------------------------------
# Errors and undefined metrics


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"masks \(2, 4, 4\) and maps \(2, 4, 5\)"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"masks \(2, 4, 4\) and maps \(2, 4, 5\)"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"labels \(3,\) and scores \(4,\)"):
        image_auroc([0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        pixel_ap(np.zeros((4, 4)), np.zeros((4, 4)))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("anomalous_pixel", [False, True])
def test_non_finite_maps_are_rejected(bad_value, anomalous_pixel):
    masks, maps = blob_data(0)
    image, row, col = np.argwhere(masks == anomalous_pixel)[7]
    maps[image, row, col] = bad_value
    for metric in (pixel_auroc, pixel_ap, pixel_f1_max, aupro, compute_all_pixels):
        with pytest.raises(ValueError, match="maps contain NaN or infinite values"):
            metric(masks, maps)


def compute_all_pixels(masks, maps):
    return compute_all(masks.any(axis=(1, 2)), np.zeros(len(masks)), masks, maps)


def test_nan_scores_are_rejected():
    for metric in (image_auroc, image_ap, image_f1_max):
        with pytest.raises(ValueError, match="NaN"):
            metric([0, 1, 1], [0.1, np.nan, 0.3])


def test_non_binary_labels_are_rejected():
    with pytest.raises(ValueError, match="0/1 or bool"):
        image_auroc([0, 2, 1], [0.1, 0.2, 0.3])


@pytest.mark.parametrize("fpr_limit", [0.0, -0.1, 1.5])
def test_fpr_limit_out_of_range(fpr_limit):
    masks, maps = blob_data(0)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit)


@pytest.mark.parametrize("metric", [image_auroc, image_ap, image_f1_max])
def test_image_metrics_without_anomalies_are_nan(metric):
    with pytest.warns(UndefinedMetricWarning, match=metric.__name__):
        assert np.isnan(metric([0, 0, 0], [0.1, 0.5, 0.2]))


def test_single_class_auroc_is_nan_but_ap_is_defined():
    with pytest.warns(UndefinedMetricWarning, match="image_auroc"):
        assert np.isnan(image_auroc([1, 1], [0.1, 0.5]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # AP and F1 are defined (= 1) without normal samples
        assert image_ap([1, 1], [0.1, 0.5]) == 1.0
        assert image_f1_max([1, 1], [0.1, 0.5]) == 1.0


def test_pixel_metrics_without_anomalies_are_nan():
    masks = np.zeros((2, 4, 4), dtype=bool)
    maps = np.random.default_rng(0).random(masks.shape)
    for metric in (pixel_auroc, pixel_ap, pixel_f1_max, aupro):
        with pytest.warns(UndefinedMetricWarning, match=metric.__name__):
            assert np.isnan(metric(masks, maps))
    with pytest.warns(UndefinedMetricWarning, match="no anomalous ground-truth regions"):
        aupro(masks, maps)
    with pytest.raises(ValueError, match="no anomalous ground-truth regions"):
        pro_curve(masks, maps)


def test_aupro_without_normal_pixels_is_nan():
    masks = np.ones((1, 4, 4), dtype=bool)
    maps = np.random.default_rng(0).random(masks.shape)
    with pytest.warns(UndefinedMetricWarning, match="aupro.*no anomaly-free pixels"):
        assert np.isnan(aupro(masks, maps))
    with pytest.warns(UndefinedMetricWarning, match="pixel_auroc"):
        assert np.isnan(pixel_auroc(masks, maps))


def test_compute_all_returns_nan_for_undefined_metrics():
    masks = np.zeros((2, 4, 4), dtype=bool)
    maps = np.random.default_rng(0).random(masks.shape)
    with pytest.warns(UndefinedMetricWarning):
        results = compute_all([0, 0], [0.2, 0.3], masks, maps)
    assert all(type(value) is float and np.isnan(value) for value in results.values())
