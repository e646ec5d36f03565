"""Two toy methods that exercise the experiment seam (registered for the seam tests only, via IAD_PLUGINS).

- `toy_multiclass` (learning type `multi_class`): one model for all classes; it keeps the mean normal image
  of each class and scores a test image by its squared distance to the mean of *its* class, so it needs
  the class label at test time. It counts its fits and the classes it saw.
- `toy_fewshot` (learning type `few_shot_supervised`): the mean normal image plus the mean defect colour
  of the labelled anomalies' masked pixels; it refuses to train without labelled anomalies, and records
  which anomalous images it was given (so a test can check none of them is evaluated).

Both are cheap (a few numpy operations per image), so a worker runs them in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ad_core.methods.base import AnomalyModel, MethodConfig, Prediction, ProgressFn, no_progress, register


@dataclass
class ToyConfig(MethodConfig):
    backbone: str = "none"
    weights: str = "random"
    resize: int = 64
    crop: int = 64
    batch_size: int = 4
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def backbone_names(self) -> tuple[str, ...]:
        return ()  # no timm backbone


def _squared_distance_maps(images: torch.Tensor, means: torch.Tensor) -> Prediction:
    maps = ((images - means) ** 2).mean(dim=1).numpy().astype(np.float32)
    return Prediction(image_scores=maps.reshape(len(maps), -1).max(axis=1), anomaly_maps=maps)


@register
class ToyMultiClass(AnomalyModel):
    name = "toy_multiclass"
    Config = ToyConfig
    learning_type = "multi_class"

    def __init__(self, config: ToyConfig, device: str | torch.device = "cpu"):
        super().__init__(config, device)
        self.weights_source = "none (toy)"
        self.means: dict[str, torch.Tensor] = {}
        self.fits = 0
        self.train_labels: list[int] = []

    def fit(self, train_loader: Any, progress: ProgressFn = no_progress) -> None:
        self.fits += 1
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for batch in train_loader:
            self.train_labels += [int(v) for v in batch["label"]]
            for image, category in zip(batch["image"], batch["category"], strict=True):
                sums[category] = sums.get(category, 0) + image
                counts[category] = counts.get(category, 0) + 1
        self.means = {c: sums[c] / counts[c] for c in sums}
        progress(1.0, f"toy means of {len(self.means)} classes")

    def predict(self, images: torch.Tensor, categories: list[str] | None = None) -> Prediction:
        if categories is None:
            raise ValueError("toy_multiclass needs the class of every test image")
        means = torch.stack([self.means[c] for c in categories])
        return _squared_distance_maps(images, means)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "fits": self.fits, "classes": sorted(self.means),
                "train_labels": sorted(set(self.train_labels))}

    def state_dict(self) -> dict[str, Any]:
        return {"means": self.means}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.means = dict(state["means"])


@register
class ToyFewShot(AnomalyModel):
    name = "toy_fewshot"
    Config = ToyConfig
    learning_type = "few_shot_supervised"

    def __init__(self, config: ToyConfig, device: str | torch.device = "cpu"):
        super().__init__(config, device)
        self.weights_source = "none (toy)"
        self.mean: torch.Tensor | None = None
        self.defect_colour: torch.Tensor | None = None
        self.anomalous_paths: list[str] = []
        self.categories: set[str] = set()

    def fit(self, train_loader: Any, progress: ProgressFn = no_progress) -> None:
        normal, defect_pixels = [], []
        for batch in train_loader:
            self.categories.update(batch["category"])
            for image, mask, label, path in zip(batch["image"], batch["mask"], batch["label"], batch["path"],
                                                strict=True):
                if int(label) == 0:
                    normal.append(image)
                else:
                    self.anomalous_paths.append(str(path))
                    defect_pixels.append(image[:, mask[0] > 0.5])
        if not self.anomalous_paths:
            raise ValueError("toy_fewshot got no labelled anomalies")
        self.mean = torch.stack(normal).mean(0)
        self.defect_colour = torch.cat(defect_pixels, dim=1).mean(1)
        progress(1.0, f"toy: {len(normal)} normal + {len(self.anomalous_paths)} anomalous images")

    def predict(self, images: torch.Tensor) -> Prediction:
        assert self.mean is not None
        return _squared_distance_maps(images, self.mean[None])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "anomalous_paths": sorted(self.anomalous_paths),
                "categories": sorted(self.categories)}

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "defect_colour": self.defect_colour}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.defect_colour = state["mean"], state["defect_colour"]
