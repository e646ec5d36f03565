"""`toy_mean`: a one-class method cheap enough to measure the job system, not a model (bench_load.py).

It keeps the mean normal image and scores a test image by its squared distance to it. Registered through
IAD_PLUGINS=benchmarks.load_toy (the benchmark sets it for its workers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ad_core.methods.base import AnomalyModel, MethodConfig, Prediction, ProgressFn, no_progress, register


@dataclass
class ToyMeanConfig(MethodConfig):
    backbone: str = "none"
    weights: str = "random"
    resize: int = 32
    crop: int = 32
    batch_size: int = 8
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def backbone_names(self) -> tuple[str, ...]:
        return ()  # no timm backbone


@register
class ToyMean(AnomalyModel):
    name = "toy_mean"
    Config = ToyMeanConfig
    learning_type = "one_class"

    def __init__(self, config: ToyMeanConfig, device: str | torch.device = "cpu"):
        super().__init__(config, device)
        self.weights_source = "none (toy)"
        self.mean: torch.Tensor | None = None

    def fit(self, train_loader: Any, progress: ProgressFn = no_progress) -> None:
        images = torch.cat([batch["image"] for batch in train_loader])
        self.mean = images.mean(0)
        progress(1.0, f"toy mean of {len(images)} images")

    def predict(self, images: torch.Tensor) -> Prediction:
        assert self.mean is not None
        maps = ((images - self.mean[None]) ** 2).mean(dim=1).numpy().astype(np.float32)
        return Prediction(image_scores=maps.reshape(len(maps), -1).max(axis=1), anomaly_maps=maps)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = state["mean"]
