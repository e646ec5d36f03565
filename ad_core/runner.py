"""Train and evaluate one method on one or more categories; the single entry point for CLI and workers.

`run_category` does one category: seed, load the split, fit, predict the test set, compute metrics. It
reports progress through a callback and checks `should_cancel` between steps; it knows nothing of jobs,
databases or queues. Every result carries its provenance (config, seed, weights source, metric version,
package versions, git commit) so that a number can always be traced back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import os
import platform
import random
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ad_core import metrics
from ad_core.backbones import RANDOM_WEIGHTS_LABEL
from ad_core.data import DATASET_KINDS, DatasetError, ImageDataset, load_split
from ad_core.methods.base import ConfigError, MethodConfig, ProgressFn, get_method, no_progress

# Share of a category's progress spent in fit (the rest is prediction and metrics).
FIT_SHARE = 0.75
PACKAGES = ("iad-workbench", "torch", "torchvision", "timm", "faiss-cpu", "numpy", "scipy", "scikit-learn")


class Cancelled(Exception):
    """Raised inside a run when `should_cancel()` returned True."""


@dataclass
class RunSpec:
    """What to run. Validated up front (`validate`) so that bad input fails at submit time."""

    method: str
    dataset: str
    root: str
    categories: list[str]
    backbone: str | None = None
    weights: str | None = None
    preset: str | None = None
    seed: int = 0
    device: str = "cpu"
    overrides: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0

    def build_config(self) -> MethodConfig:
        cls = get_method(self.method)
        return cls.Config.build(self.preset, backbone=self.backbone, weights=self.weights, **self.overrides)

    def validate(self) -> MethodConfig:
        """Check everything that can be checked without training; raise ConfigError/DatasetError."""
        config = self.build_config()
        if self.dataset not in DATASET_KINDS:
            raise DatasetError(f"unknown dataset kind {self.dataset!r}; use one of {', '.join(DATASET_KINDS)}")
        if not self.categories:
            raise ConfigError("no category given")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but no CUDA GPU is visible to torch on this host")
        weights = config.weights
        if weights not in ("imagenet", "bundled", "random") and not Path(weights).expanduser().is_file():
            raise ConfigError(f"weights file {weights} does not exist; pass 'imagenet', 'bundled', 'random' or a path")
        for category in self.categories:
            load_split(self.dataset, self.root, category)  # raises DatasetError naming the path
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ImageResult:
    path: str
    label: int
    defect_type: str
    score: float


@dataclass
class CategoryResult:
    category: str
    metrics: dict[str, float | None]
    images: list[ImageResult]
    anomaly_maps: np.ndarray  # float32 [N, H, W] in the order of `images`
    timings: dict[str, float]
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    spec: RunSpec
    config: dict[str, Any]
    provenance: dict[str, Any]
    categories: dict[str, CategoryResult] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The `--json` document: metrics per category, per-image scores, timings and provenance."""
        return {
            "metrics": {c: r.metrics for c, r in self.categories.items()},
            "per_image": {c: [dataclasses.asdict(i) for i in r.images] for c, r in self.categories.items()},
            "timings": {c: r.timings for c, r in self.categories.items()},
            "counts": {c: r.counts for c, r in self.categories.items()},
            "notes": {c: r.notes for c, r in self.categories.items() if r.notes},
            "spec": self.spec.to_dict(),
            "config": self.config,
            "provenance": self.provenance,
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def git_commit() -> str:
    """Commit of the code that produced a result ("+dirty" when the tree has local changes)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("IAD_GIT_COMMIT", "unknown")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance(spec: RunSpec, weights_source: str) -> dict[str, Any]:
    device = spec.device
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {
        "seed": spec.seed,
        "weights_source": weights_source,
        "random_weights": weights_source == RANDOM_WEIGHTS_LABEL,
        "metric_version": metrics.METRIC_VERSION,
        "packages": package_versions(),
        "git_commit": git_commit(),
        "device": device,
        "host": platform.node(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _checked(progress: ProgressFn, should_cancel: Callable[[], bool] | None, lo: float, hi: float) -> ProgressFn:
    """Map a step's 0..1 progress into [lo, hi] of the caller's range and honour cancellation."""

    def report(fraction: float, message: str) -> None:
        if should_cancel is not None and should_cancel():
            raise Cancelled(message)
        progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), message)

    return report


def run_category(
    spec: RunSpec,
    category: str,
    config: MethodConfig | None = None,
    progress: ProgressFn = no_progress,
    should_cancel: Callable[[], bool] | None = None,
) -> tuple[CategoryResult, str]:
    """Fit and evaluate one category. Returns the result and the weights source of the model."""
    config = config or spec.build_config()
    seed_everything(spec.seed)
    split = load_split(spec.dataset, spec.root, category)
    model = get_method(spec.method)(config, device=spec.device)
    prep = model.preprocess()
    loader_seed = torch.Generator().manual_seed(spec.seed)
    train_loader = torch.utils.data.DataLoader(
        ImageDataset(split.train, prep),
        batch_size=config.batch_size,
        shuffle=True,
        generator=loader_seed,
        num_workers=spec.num_workers,
    )
    test_loader = torch.utils.data.DataLoader(
        ImageDataset(split.test, prep), batch_size=config.batch_size, shuffle=False, num_workers=spec.num_workers
    )

    fit_progress = _checked(progress, should_cancel, 0.0, FIT_SHARE)
    fit_progress(0.0, f"{category}: fitting {spec.method} on {len(split.train)} normal images")
    start = time.perf_counter()
    model.fit(train_loader, fit_progress)
    fit_s = time.perf_counter() - start

    test_progress = _checked(progress, should_cancel, FIT_SHARE, 1.0)
    labels, scores, masks, maps, images = [], [], [], [], []
    start = time.perf_counter()
    for i, batch in enumerate(test_loader):
        prediction = model.predict(batch["image"])
        scores.append(prediction.image_scores)
        maps.append(prediction.anomaly_maps.astype(np.float32))
        masks.append(batch["mask"][:, 0].numpy() > 0.5)
        labels.append(np.asarray(batch["label"]))
        for path, label, defect, score in zip(
            batch["path"], batch["label"], batch["defect_type"], prediction.image_scores, strict=True
        ):
            images.append(ImageResult(str(path), int(label), str(defect), float(score)))
        test_progress((i + 1) / len(test_loader), f"{category}: scored {len(images)}/{len(split.test)} test images")
    predict_s = time.perf_counter() - start

    all_maps = np.concatenate(maps)
    result_metrics = metrics.compute_all(
        np.concatenate(labels),
        np.concatenate(scores),
        np.concatenate(masks) if split.has_masks else None,
        all_maps,
    )
    timings = {
        "fit_s": round(fit_s, 3),
        "predict_s": round(predict_s, 3),
        "images_per_s": round(len(images) / predict_s, 3) if predict_s > 0 else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if spec.device.startswith("cuda") and torch.cuda.is_available():
        timings["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result = CategoryResult(
        category=category,
        metrics=result_metrics,
        images=images,
        anomaly_maps=all_maps,
        timings=timings,
        counts=split.counts(),
        notes=list(split.notes),
    )
    return result, model.weights_source


def run(
    spec: RunSpec,
    progress: ProgressFn = no_progress,
    should_cancel: Callable[[], bool] | None = None,
    on_category: Callable[[CategoryResult], None] | None = None,
) -> RunResult:
    """Run every category of `spec` in turn. `on_category` sees each result as soon as it exists."""
    config = spec.validate()
    result: RunResult | None = None
    n = len(spec.categories)
    for i, category in enumerate(spec.categories):
        cat_progress = _checked(progress, should_cancel, i / n, (i + 1) / n)
        category_result, weights_source = run_category(spec, category, config, cat_progress, should_cancel)
        if result is None:
            result = RunResult(spec=spec, config=config.to_dict(), provenance=provenance(spec, weights_source))
        result.categories[category] = category_result
        if on_category is not None:
            on_category(category_result)
    assert result is not None
    return result
