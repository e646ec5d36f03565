"""The names every layer agrees on: dataset kinds, metrics, learning types, splits, job statuses, queues.

One definition each, imported by ad_core, db, workers and the dashboard. Torch-free and numpy-free (only
the standard library), so that the CLI's `--help`, `iad jobs` and the dashboard can import it cheaply.
`ad_core.data` derives its own DATASET_KINDS from its loaders; the tests check that both agree.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dataset kinds with a loader in ad_core.data (`iad run/submit --dataset`, the Launch page).
DATASET_KINDS: tuple[str, ...] = ("mvtec", "btad", "folder", "demo")

# Version of the metric definitions in ad_core.metrics, stored with every result; bump it whenever a
# definition changes (numbers of different versions are never mixed in one table).
# iad-metrics-2: pixel metrics are computed in the run's evaluation frame (below; default the full image at
# 256 x 256 px, which changes the pixel numbers of cropping methods); in the native frame they are computed
# exactly as iad-metrics-1 computed them.
METRIC_VERSION = "iad-metrics-2"

# Evaluation frames (`ad_core.frame`; `iad run/submit --frame`, the Launch page): on which pixels and at which
# resolution pixel metrics are computed. Part of every comparability key; results stored before frames were
# recorded were evaluated natively and count as "native".
DEFAULT_FRAME = "full:256"
EVAL_FRAMES: dict[str, str] = {
    "full": "the full image resized to N x N px for every method (full = full:256); a cropping method's map is "
            "mapped back and its cut-away border gets the image's lowest score",
    "native": "each method's own input geometry (resize + centre crop), as in the papers",
}

# Metric name -> display label, in the order the dashboard and the exports offer them
# (the keys of `ad_core.metrics.compute_all`).
METRICS: dict[str, str] = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "aupro": "AUPRO@0.3",
    "image_f1_max": "Image F1-max",
    "pixel_f1_max": "Pixel F1-max",
    "image_ap": "Image AP",
    "pixel_ap": "Pixel AP",
}
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)

# Learning settings a benchmark can be run under: name -> one-line description.
LEARNING_TYPES: dict[str, str] = {
    "one_class": "one model per category, trained on normal images only",
    "few_shot_supervised": "trained on normal images plus a few labelled anomalous images per category",
    "multi_class": "one model for all categories, trained on their normal images together",
}

# The built-in methods by name, so that name checks (`iad methods`, `iad submit`'s typo check, the Launch page)
# need no torch: name -> the module whose import registers it (`ad_core.methods.base.register`), its learning
# type, and the presets its config accepts ("paper" = the config's defaults, first). The registry itself stays
# the truth: tests/test_catalog.py checks that both agree, and methods from IAD_PLUGINS are only known to it.
@dataclass(frozen=True)
class MethodEntry:
    module: str
    learning_type: str
    presets: tuple[str, ...]


METHODS: dict[str, MethodEntry] = {
    "isstad": MethodEntry("ad_core.methods.isstad.model", "one_class", ("paper", "fast")),
    "ltad": MethodEntry("ad_core.methods.ltad.model", "multi_class", ("paper", "fast")),
    "patchcore": MethodEntry("ad_core.methods.patchcore", "one_class", ("paper", "fast", "ensemble")),
    "patchcore_unified": MethodEntry("ad_core.methods.patchcore", "multi_class", ("paper", "fast", "ensemble")),
    "prn": MethodEntry("ad_core.methods.prn.model", "few_shot_supervised", ("paper", "fast")),
    "reconpatch": MethodEntry("ad_core.methods.reconpatch", "one_class", ("paper", "fast", "ensemble")),
    "reconpatch_unified": MethodEntry("ad_core.methods.reconpatch", "multi_class", ("paper", "fast", "ensemble")),
}

# How a category's images are split into train and test: name -> one-line description.
SPLIT_KINDS: dict[str, str] = {
    "standard": "the dataset's official train/test split",
    "few_shot": "k labelled anomalies per category moved from the test set into training (DRA protocol)",
    "long_tail": "per-category training counts from a long-tailed profile (not implemented yet: issue 10)",
}

# Formats of a leaderboard export (`iad export --format`, the Export page): LaTeX booktabs, CSV, Markdown.
EXPORT_FORMATS: tuple[str, ...] = ("latex", "csv", "md")

# Life cycle of a job: queued -> running -> one of the final statuses.
JOB_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATUSES: tuple[str, ...] = ("succeeded", "failed", "cancelled")

# Worker queues (each may carry a prefix, see workers.settings.queue_name).
QUEUES: tuple[str, ...] = ("cpu", "gpu")

__all__ = [
    "DATASET_KINDS",
    "DEFAULT_FRAME",
    "EVAL_FRAMES",
    "EXPORT_FORMATS",
    "FINAL_STATUSES",
    "JOB_STATUSES",
    "LEARNING_TYPES",
    "METHODS",
    "METRICS",
    "METRIC_NAMES",
    "METRIC_VERSION",
    "MethodEntry",
    "QUEUES",
    "SPLIT_KINDS",
]
