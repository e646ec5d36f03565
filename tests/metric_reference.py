"""A run's metrics recomputed independently of the runner, from what the run stored and the mask files.

`assert_metrics_match_outputs(spec, category_result)` recomputes every metric of one category from its stored
image scores and anomaly maps (in the run's evaluation frame) and the ground-truth masks read from disk and
brought into that frame here: image/pixel AUROC, AP and F1-max with sklearn, AUPRO with `ad_core.metrics.aupro`
(checked against hand-computed references in test_metrics.py). It replaces "0 <= metric <= 1" checks: a run
that pairs maps with the wrong masks, scores with the wrong labels, or reports numbers of other data fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from ad_core import metrics
from ad_core.data.base import Preprocess


def _f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(f1.max())


def _mask(mask_path: str | None, spec, config, shape: tuple[int, int]) -> np.ndarray:
    """The ground truth in the geometry of the stored maps: the full mask resized to the evaluation frame
    (nearest neighbour) in a full-image frame, else in the method's own geometry (resize + centre crop)."""
    if mask_path is None:
        return np.zeros(shape, dtype=bool)
    mask = Image.open(mask_path).convert("L")
    frame = getattr(spec, "eval_frame", None)
    if frame is not None and frame.is_full:
        out = np.asarray(mask.resize((frame.size, frame.size), resample=Image.NEAREST)) > 127
    else:
        out = Preprocess(resize=config.resize, crop=config.crop).mask(mask)[0].numpy() > 0.5
    assert out.shape == shape, (mask_path, out.shape, shape)
    return out


def reference_metrics(spec, category_result) -> dict[str, float]:
    """The metrics of `category_result` recomputed from its stored scores and maps and the mask files."""
    plan = spec.prepare()
    split = plan.splits[category_result.category]
    by_path = {s.path: s for s in split.test}
    samples = [by_path[i.path] for i in category_result.images]
    labels = np.array([s.label for s in samples])
    assert labels.tolist() == [i.label for i in category_result.images]
    scores = np.array([i.score for i in category_result.images], dtype=np.float64)
    maps = category_result.anomaly_maps
    masks = np.stack([_mask(s.mask_path, spec, plan.config, maps.shape[1:]) for s in samples])
    assert masks[labels == 1].any() and not masks[labels == 0].any()  # the masks belong to these images
    pixels, truth = maps.reshape(-1).astype(np.float64), masks.reshape(-1)
    return {
        "image_auroc": roc_auc_score(labels, scores),
        "image_ap": average_precision_score(labels, scores),
        "image_f1_max": _f1_max(labels, scores),
        "pixel_auroc": roc_auc_score(truth, pixels),
        "pixel_ap": average_precision_score(truth, pixels),
        "pixel_f1_max": _f1_max(truth, pixels),
        "aupro": metrics.aupro(masks, maps),
    }


def assert_metrics_match_outputs(spec, category_result) -> None:
    expected = reference_metrics(spec, category_result)
    assert set(category_result.metrics) == set(expected)
    for name, value in expected.items():
        assert category_result.metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
