"""Train and evaluate one method on one or more categories: the one runner loop, for the CLI and the workers.

`run(spec, progress, should_cancel, on_category)` does everything: validate the spec, apply its split
recipe (`ad_core.splits`) to get the concrete per-category train/test lists, plan *fit units* from the
method's learning type, and for each unit seed, fit once and evaluate every category of the unit.

- `one_class` and `few_shot_supervised` methods: one unit (one model) per category;
- `multi_class` methods: one unit over all categories of the run; results are still per category.

One-class methods see only the normal training images of a split (a few-shot split's labelled anomalies
are withheld from them), so every method can run on the same split and be compared on the same test set.
The runner reports progress through a callback and checks `should_cancel` between steps; it knows nothing
of jobs, databases or queues. Every result carries its provenance (config, seed, split recipe and content
hash, evaluation frame, weights source, metric version, package versions, thread count, git commit).

Pixel metrics are computed in the run's evaluation frame (`ad_core.frame`; default: the full image at
256 x 256 px for every method, so that methods with different input geometries are scored on the same
pixels; `frame="native"`: each method's own geometry). The stored maps are in that frame too.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ad_core import metrics
from ad_core.annotations import DEFAULT_GT_LABEL, DEFAULT_GT_VERSION, ground_truth_entries
from ad_core.backbones import RANDOM_WEIGHTS_LABEL, check_backbone_name
from ad_core.catalog import DATASET_KINDS
from ad_core.data import CategorySplit, DatasetError, ImageDataset, Sample
from ad_core.errors import AnnotationError
from ad_core.frame import DEFAULT_FRAME, EvalFrame, maps_to_frame
from ad_core.methods.base import AnomalyModel, ConfigError, MethodConfig, ProgressFn, get_method, no_progress
from ad_core.splits import SplitSpec

# Share of a unit's progress spent in fit (the rest is prediction and metrics).
FIT_SHARE = 0.75
PACKAGES = ("iad-workbench", "torch", "torchvision", "timm", "faiss-cpu", "numpy", "scipy", "scikit-learn")


class Cancelled(Exception):
    """Raised inside a run when `should_cancel()` returned True."""


@dataclass
class RunSpec:
    """What to run. Validated up front (`validate`/`prepare`) so that bad input fails at submit time.

    `config`, when given, is a complete stored method config (`MethodConfig.to_dict()`, e.g. a job's) and
    is rebuilt as it is (`MethodConfig.from_dict`); otherwise the config is built from `preset`,
    `backbone`, `weights` and `overrides`. `split` is a split recipe (`SplitSpec.to_dict()`; default: the
    dataset as downloaded). `frame` is the evaluation frame (`ad_core.frame`: 'full:256' by default, 'full:N'
    or 'native'). `ground_truth` is an annotation set's ground truth as plain data
    (`ad_core.annotations.ground_truth_doc`): the test images it names are labelled and masked as the set
    says before the split recipe draws (a few-shot split with `source=annotated` draws its labelled anomalies
    from them), and every metric is computed against it and stored under its version.
    """

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
    split: dict[str, Any] = field(default_factory=lambda: SplitSpec().to_dict())
    config: dict[str, Any] | None = None
    frame: str = DEFAULT_FRAME
    # An annotation set's ground truth (`ad_core.annotations.ground_truth_doc`); None = the dataset's files.
    ground_truth: dict[str, Any] | None = None

    @property
    def method_class(self) -> type[AnomalyModel]:
        return get_method(self.method)

    @property
    def split_spec(self) -> SplitSpec:
        return SplitSpec.from_dict(self.split)

    @property
    def eval_frame(self) -> EvalFrame:
        return EvalFrame.parse(self.frame)

    @property
    def gt_version(self) -> str:
        """The ground truth the metrics are computed against: 'dataset' or an annotation set's key."""
        return DEFAULT_GT_VERSION if self.ground_truth is None else str(self.ground_truth.get("version"))

    def ground_truth_entries(self) -> dict[str, Any] | None:
        """The annotation set's entries (relative path -> GroundTruth), checked against their version."""
        if self.ground_truth is None:
            return None
        try:
            return ground_truth_entries(self.ground_truth)
        except AnnotationError as exc:
            raise ConfigError(str(exc)) from exc

    def build_config(self) -> MethodConfig:
        cls = self.method_class
        if self.config is not None:
            return cls.Config.from_dict(self.config)
        return cls.Config.build(self.preset, backbone=self.backbone, weights=self.weights, **self.overrides)

    def validate(self) -> MethodConfig:
        """Check everything that can be checked without training, including that the pretrained weights can
        be had on this machine (submit time; `run` itself does not ask again); raise ConfigError/DatasetError/
        WeightsError."""
        config = self.prepare().config
        config.check_weights_available()
        return config

    def prepare(self) -> RunPlan:
        """Validate and resolve: the config, the concrete split of every category and the fit units."""
        cls = self.method_class
        config = self.build_config()
        EvalFrame.parse(self.frame)  # ConfigError for an unknown frame, at submit time
        if self.dataset not in DATASET_KINDS:
            raise DatasetError(f"unknown dataset kind {self.dataset!r}; use one of {', '.join(DATASET_KINDS)}")
        if not self.categories:
            raise ConfigError("no category given")
        if len(set(self.categories)) != len(self.categories):
            raise ConfigError(f"categories repeat: {self.categories}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but no CUDA GPU is visible to torch on this host")
        weights = config.weights
        if weights not in ("imagenet", "bundled", "random") and not Path(weights).expanduser().is_file():
            raise ConfigError(f"weights file {weights} does not exist; pass 'imagenet', 'bundled', 'random' or a path")
        for name in config.backbone_names():
            check_backbone_name(name)
        split_spec = self.split_spec
        check_pairing(cls, split_spec, self.categories)
        splits = split_spec.apply(self.dataset, self.root, self.categories, run_seed=self.seed,
                                  ground_truth=self.ground_truth_entries())
        cls.check_data(config, {c: s.counts() for c, s in splits.items()})
        return RunPlan(config=config, splits=splits, units=plan_fit_units(cls.learning_type, self.categories))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_pairing(cls: type[AnomalyModel], split: SplitSpec, categories: Sequence[str]) -> None:
    """Reject a method / split / categories combination that makes no sense, with one clear line."""
    if cls.learning_type == "few_shot_supervised" and split.kind != "few_shot":
        raise ConfigError(
            f"{cls.name} is a few_shot_supervised method: it trains on labelled anomalies, which only a "
            f"few_shot split provides (got split {split.label!r}); use e.g. --split few_shot:k=10"
        )
    if cls.learning_type == "multi_class" and len(categories) < 2:
        raise ConfigError(
            f"{cls.name} is a multi_class method (one model over several classes); give at least 2 categories"
        )


@dataclass
class FitUnit:
    """One model to fit: its index in the run and the categories it is trained on and tested on."""

    index: int
    categories: list[str]


def plan_fit_units(learning_type: str, categories: Sequence[str]) -> list[FitUnit]:
    """One unit per category, or one unit over all categories for multi-class methods."""
    if learning_type == "multi_class":
        return [FitUnit(0, list(categories))]
    return [FitUnit(i, [c]) for i, c in enumerate(categories)]


def training_samples(learning_type: str, split: CategorySplit) -> list[Sample]:
    """What a method of this learning type trains on: labelled anomalies only for few-shot supervised ones."""
    return list(split.train) if learning_type == "few_shot_supervised" else split.train_normal


@dataclass
class RunPlan:
    config: MethodConfig
    splits: dict[str, CategorySplit]
    units: list[FitUnit]


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
    anomaly_maps: np.ndarray | None  # float32 [N, H, W] in the order of `images`, in the evaluation frame
    # (None once handed over)
    timings: dict[str, float]  # fit_s only when the category had its own fit unit (see UnitResult)
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)
    split_hash: str = ""  # CategorySplit.content_hash() of the lists this result was computed on
    split: dict[str, Any] = field(default_factory=dict)  # the recipe, seed resolved
    train_anomalies: list[str] = field(default_factory=list)  # labelled anomalies trained on (relative paths)
    has_masks: bool = True
    fit_unit: int = 0
    frame: str = DEFAULT_FRAME  # the evaluation frame's key (`ad_core.frame`)


@dataclass
class UnitResult:
    """One fit: which categories it covered, its time and memory (recorded once), and the method's
    `describe()` (e.g. the corruption settings ISSTAD chose)."""

    index: int
    categories: list[str]
    fit_s: float
    peak_rss_mb: float
    details: dict[str, Any]
    weights_source: str
    peak_gpu_mb: float | None = None


@dataclass
class RunResult:
    spec: RunSpec
    config: dict[str, Any]
    provenance: dict[str, Any]
    categories: dict[str, CategoryResult] = field(default_factory=dict)
    units: list[UnitResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The `--json` document: metrics per category, per-image scores, timings and provenance."""
        return {
            "metrics": {c: r.metrics for c, r in self.categories.items()},
            "per_image": {c: [dataclasses.asdict(i) for i in r.images] for c, r in self.categories.items()},
            "timings": {c: r.timings for c, r in self.categories.items()},
            "counts": {c: r.counts for c, r in self.categories.items()},
            "splits": {c: {"recipe": r.split, "content_hash": r.split_hash} for c, r in self.categories.items()},
            "frame": self.spec.eval_frame.key,
            "ground_truth": self.spec.gt_version,
            "fit_units": [dataclasses.asdict(u) for u in self.units],
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
    """Versions of the packages a number depends on, plus the BLAS libraries numpy/torch/faiss load (their
    kernels and thread counts change results in the last digits)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        from threadpoolctl import threadpool_info

        libraries = sorted({f"{i.get('internal_api')} {i.get('version')} {i.get('architecture') or ''}".strip()
                            + f" ({i.get('num_threads')} threads)" for i in threadpool_info()})
        versions["blas"] = "; ".join(libraries) or "none found"
    except ImportError:
        versions["blas"] = "unknown (threadpoolctl not installed)"
    return versions


def provenance(spec: RunSpec, weights_source: str) -> dict[str, Any]:
    device = spec.device
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {
        "seed": spec.seed,
        "split": spec.split_spec.with_seed(spec.seed).to_dict(),
        "frame": spec.eval_frame.key,
        "ground_truth": {"version": spec.gt_version,
                         "label": (spec.ground_truth or {}).get("label") or DEFAULT_GT_LABEL},
        "weights_source": weights_source,
        # Any part with random weights (a backbone, or LTAD's foundation model) flags the whole result.
        "random_weights": RANDOM_WEIGHTS_LABEL in weights_source or "NOT pretrained" in weights_source,
        "metric_version": metrics.METRIC_VERSION,
        "packages": package_versions(),
        "threads": torch.get_num_threads(),
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


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _loader(spec: RunSpec, samples: Sequence[Sample], prep: Any, batch_size: int, train: bool,
            frame_size: int | None = None) -> Any:
    if train:
        return torch.utils.data.DataLoader(
            ImageDataset(samples, prep), batch_size=batch_size, shuffle=True,
            generator=torch.Generator().manual_seed(spec.seed), num_workers=spec.num_workers,
        )
    return torch.utils.data.DataLoader(
        ImageDataset(samples, prep, frame_size), batch_size=batch_size, shuffle=False, num_workers=spec.num_workers
    )


def fit_unit(
    spec: RunSpec, plan: RunPlan, unit: FitUnit, progress: ProgressFn = no_progress
) -> tuple[AnomalyModel, UnitResult]:
    """Seed, build the model and fit it once on the training images of the unit's categories."""
    cls = spec.method_class
    seed_everything(spec.seed)
    model = cls(plan.config, device=spec.device)
    train = [s for c in unit.categories for s in training_samples(cls.learning_type, plan.splits[c])]
    loader = _loader(spec, train, model.preprocess(), plan.config.batch_size, train=True)
    what = unit.categories[0] if len(unit.categories) == 1 else f"{len(unit.categories)} classes"
    n_anomalous = sum(s.label for s in train)
    extra = f" + {n_anomalous} labelled anomalies" if n_anomalous else ""
    progress(0.0, f"{what}: fitting {spec.method} on {len(train) - n_anomalous} normal images{extra}")
    start = time.perf_counter()
    model.fit(loader, progress)
    fit_s = time.perf_counter() - start
    peak_gpu = None
    if spec.device.startswith("cuda") and torch.cuda.is_available():
        peak_gpu = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    details = model.describe()
    details.pop("config", None)  # stored once, with the job
    return model, UnitResult(
        index=unit.index, categories=list(unit.categories), fit_s=round(fit_s, 3), peak_rss_mb=_peak_rss_mb(),
        details=details, weights_source=model.weights_source, peak_gpu_mb=peak_gpu,
    )


def evaluate_category(
    spec: RunSpec, plan: RunPlan, model: AnomalyModel, category: str, progress: ProgressFn = no_progress
) -> CategoryResult:
    """Score the test images of one category and compute its metrics in the run's evaluation frame.

    In a full-image frame each map goes back into the full image (`ad_core.frame.map_to_frame`: the part the
    method cropped away gets that image's lowest score) and is scored against the full-resolution mask
    resized to the frame; in the native frame maps and masks stay in the method's geometry."""
    split = plan.splits[category]
    frame = spec.eval_frame
    prep = model.preprocess()
    loader = _loader(spec, split.test, prep, plan.config.batch_size, train=False,
                     frame_size=frame.size if frame.is_full else None)
    class_aware = type(model).learning_type == "multi_class"
    labels, scores, masks, maps, images = [], [], [], [], []
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        if class_aware:
            prediction = model.predict(batch["image"], list(batch["category"]))
        else:
            prediction = model.predict(batch["image"])
        scores.append(prediction.image_scores)
        batch_maps = prediction.anomaly_maps.astype(np.float32)
        if frame.is_full:
            sizes = batch["image_size"].tolist()
            batch_maps = maps_to_frame(batch_maps, [prep.placement(w, h) for w, h in sizes], frame.size)
            masks.append(batch["frame_mask"][:, 0].numpy() > 0.5)
        else:
            masks.append(batch["mask"][:, 0].numpy() > 0.5)
        maps.append(batch_maps)
        labels.append(np.asarray(batch["label"]))
        for path, label, defect, score in zip(
            batch["path"], batch["label"], batch["defect_type"], prediction.image_scores, strict=True
        ):
            images.append(ImageResult(str(path), int(label), str(defect), float(score)))
        progress((i + 1) / len(loader), f"{category}: scored {len(images)}/{len(split.test)} test images")
    predict_s = time.perf_counter() - start

    all_maps = np.concatenate(maps)
    result_metrics = metrics.compute_all(
        np.concatenate(labels),
        np.concatenate(scores),
        np.concatenate(masks) if split.has_masks else None,
        all_maps,
    )
    timings = {
        "predict_s": round(predict_s, 3),
        "images_per_s": round(len(images) / predict_s, 3) if predict_s > 0 else None,
        "peak_rss_mb": _peak_rss_mb(),
    }
    return CategoryResult(
        category=category, metrics=result_metrics, images=images, anomaly_maps=all_maps, timings=timings,
        counts=split.counts(), notes=list(split.notes), split_hash=split.content_hash(), split=dict(split.recipe),
        train_anomalies=split.relative_paths(s for s in split.train if s.label == 1), has_masks=split.has_masks,
        frame=frame.key,
    )


def run(
    spec: RunSpec,
    progress: ProgressFn = no_progress,
    should_cancel: Callable[[], bool] | None = None,
    on_category: Callable[[CategoryResult], None] | None = None,
    keep_maps: bool = True,
) -> RunResult:
    """The runner loop: prepare, then fit each unit once and evaluate its categories.

    `on_category` sees each category result as soon as it exists (the worker writes its maps then);
    with `keep_maps=False` the maps are dropped from the result after that, so a long run does not hold
    every category's maps in memory.
    """
    plan = spec.prepare()
    result = RunResult(spec=spec, config=plan.config.to_dict(), provenance={})
    total = len(spec.categories)
    done = 0
    for unit in plan.units:
        share = len(unit.categories) / total
        lo, hi = done / total, done / total + share
        fit_hi = lo + (hi - lo) * FIT_SHARE
        model, unit_result = fit_unit(spec, plan, unit, _checked(progress, should_cancel, lo, fit_hi))
        result.units.append(unit_result)
        if not result.provenance:
            result.provenance = provenance(spec, model.weights_source)
        step = (hi - fit_hi) / len(unit.categories)
        for j, category in enumerate(unit.categories):
            cat_progress = _checked(progress, should_cancel, fit_hi + j * step, fit_hi + (j + 1) * step)
            category_result = evaluate_category(spec, plan, model, category, cat_progress)
            category_result.fit_unit = unit.index
            if len(unit.categories) == 1:
                category_result.timings = {"fit_s": unit_result.fit_s, **category_result.timings}
                if unit_result.peak_gpu_mb is not None:
                    category_result.timings["peak_gpu_mb"] = unit_result.peak_gpu_mb
            result.categories[category] = category_result
            if on_category is not None:
                on_category(category_result)
            if not keep_maps:
                category_result.anomaly_maps = None
        done += len(unit.categories)
        del model
    return result
