"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Follows the official implementation (amazon-science/patchcore-inspection):
- features of backbone stages 2 and 3 (layer2 + layer3 of a WideResNet-50 with torchvision's ImageNet weights,
  timm `wide_resnet50_2.tv_in1k`; for other timm backbones the feature levels with reductions 8 and 16);
- local neighbourhood aggregation: every feature map is unfolded into 3x3 patches (stride 1, padding 1);
  the stage-3 patch grid is bilinearly upsampled (align_corners=False) to the stage-2 grid;
- per stage, the flattened (C*3*3) patch vector is adaptive-average-pooled to `pretrain_embed_dim` (1024);
  the stages are stacked and pooled again to `target_embed_dim` (1024);
- embedding size (`embed_dim_policy`). Paper / official code: always 1024 per stage, then 1024 (512 values per
  stage). We do "never_pool_up" by default: a stage with fewer than 512 values per patch (C*3*3) is stored in
  as many values as its official pooled vector has degrees of freedom, with the official pairwise distances
  (an orthonormal change of basis, `ad_core.components.features`); stages that pool down keep the official
  pooling. Why: for WideResNet-50 (4608 and 9216 values per patch) nothing changes (1024); for
  EfficientNet-Lite0 (360 and 1008 values) the official code pools stage 2 up, adding no information while
  the exact nearest-neighbour search, most of inference, costs in proportion to the dimension: 872 instead
  of 1024, same distances, same full-bank metrics (benchmarks/bench_embed_dim.py, docs/speed.md).
  `"official"` reproduces the official sizes for any backbone; stored configs from before this field load
  with it (`PatchCoreConfig.from_dict`), so saved models keep their banks' size;
- memory bank: approximate greedy coreset (k-center) on a 128-d random linear projection, with 10 random
  starting points, keeping `coreset_ratio` (10%) of the training patches (on a CPU with the updates deferred
  per block and applied as small matrix products, on a GPU the official dense loop on the GPU; the same
  selection up to float32 near-ties: `ad_core.components.coreset`);
- scoring: faiss nearest neighbour search (k=1). As in the official code the patch score is the mean
  *squared* L2 distance that faiss' IndexFlatL2 returns (the paper writes the L2 norm; this only changes
  pixel maps after smoothing, not image rankings). Search (`nn_index`). Paper: exact; official code: exact
  (faiss IndexFlatL2, IVF only as an unused option). We do: exact by default, and offer `"pca_refine"`
  (candidates in 128 principal components, exact re-ranking of 8) and `"ivf"` as named, recorded
  approximations. Why: exact search is most of CPU inference; on bottle `pca_refine` is several times faster
  with image AUROC unchanged (benchmarks/bench_knn.py, docs/speed.md), but published numbers stay exact.
  A GPU model's exact search runs in torch on its GPU (faiss' CPU search would idle the GPU);
- image score = max patch score (the paper's re-weighting of the max is not in the official code either);
- anomaly map = patch score grid, bilinear upsampling to the input size, Gaussian filter sigma=4
  (scipy.ndimage.gaussian_filter, truncate=4).

Deviations (documented): masks are resized with nearest neighbour instead of bilinear + "==1" (see
`ad_core.data.Preprocess`); image normalisation uses the backbone's own timm mean/std (ImageNet for
ResNets, 0.5/0.5 for the TF-Lite EfficientNets) instead of always ImageNet's.

The building blocks (patch features, coreset, nearest-neighbour scorer, map post-processing) live in
`ad_core.components`, shared with other methods; this module holds PatchCore's config and its assembly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ad_core.components import (
    NearestNeighbourScorer,
    PatchFeatures,
    approximate_greedy_coreset,
    check_patch_memory_bank,
    collect_patch_features,
    scores_to_prediction,
)
from ad_core.data.base import Preprocess
from ad_core.methods.base import (
    AnomalyModel,
    MethodConfig,
    Prediction,
    ProgressFn,
    no_progress,
    register,
)


@dataclass
class PatchCoreConfig(MethodConfig):
    # torchvision's ImageNet weights, as the official code loads them (timm's default tag for this
    # architecture, racm_in1k, is timm's own training and gives other numbers).
    backbone: str = "wide_resnet50_2.tv_in1k"
    weights: str = "imagenet"
    stages: tuple[int, ...] = (2, 3)
    patch_size: int = 3
    pretrain_embed_dim: int = 1024
    target_embed_dim: int = 1024
    # "never_pool_up" (ours: cap both poolings at their input sizes) | "official" (always the sizes above).
    embed_dim_policy: str = "never_pool_up"
    coreset_ratio: float = 0.1
    coreset_projection_dim: int = 128
    coreset_start_points: int = 10
    num_neighbors: int = 1
    sigma: float = 4.0
    # "flat" = exact search (official) | "pca_refine" | "ivf" (approximate; ad_core/components/scoring.py).
    nn_index: str = "flat"
    ivf_nprobe: int = 8
    nn_pca_dim: int = 128
    nn_refine_factor: int = 8

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU demo: the offline EfficientNet-Lite0 ImageNet weights and a smaller bank.
        "fast": {"backbone": "tf_efficientnet_lite0", "weights": "bundled", "coreset_ratio": 0.05},
        # 1% coreset as used by the official ensemble models ("P001" configs).
        "ensemble": {"coreset_ratio": 0.01},
    }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MethodConfig:
        # Configs stored before `embed_dim_policy` existed were computed (and their banks built) with the
        # official sizes.
        return super().from_dict({"embed_dim_policy": "official", **values})

    def validate(self) -> None:
        super().validate()
        check_patch_memory_bank(self)


@register
class PatchCore(AnomalyModel):
    name = "patchcore"
    Config = PatchCoreConfig

    def __init__(self, config: PatchCoreConfig, device: str | torch.device = "cpu"):
        super().__init__(config, device)
        self.features = PatchFeatures(
            config.backbone,
            config.weights,
            stages=config.stages,
            patch_size=config.patch_size,
            pretrain_embed_dim=config.pretrain_embed_dim,
            target_embed_dim=config.target_embed_dim,
            embed_dim_policy=config.embed_dim_policy,
            device=self.device,
        )
        self.weights_source = self.features.backbone.weights_source
        self.memory_bank: np.ndarray | None = None
        self.scorer: NearestNeighbourScorer | None = None

    def preprocess(self) -> Preprocess:
        bb = self.features.backbone
        return Preprocess(resize=self.config.resize, crop=self.config.crop, mean=bb.mean, std=bb.std)

    def fit(self, train_loader: torch.utils.data.DataLoader, progress: ProgressFn = no_progress) -> None:
        features = collect_patch_features(self.features, train_loader, lambda f, m: progress(0.4 * f, m))
        generator = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**63)
        keep = approximate_greedy_coreset(
            features,
            self.config.coreset_ratio,
            self.config.coreset_projection_dim,
            self.config.coreset_start_points,
            generator=generator,
            progress=lambda f, m: progress(0.4 + 0.55 * f, m),
            device=self.device,
        )
        self._set_bank(features[keep].numpy())
        progress(1.0, f"memory bank: {len(keep)} of {len(features)} patches")

    def _set_bank(self, bank: np.ndarray) -> None:
        self.memory_bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.scorer = NearestNeighbourScorer.from_config(self.memory_bank, self.config, self.device)

    def predict(self, images: torch.Tensor) -> Prediction:
        if self.scorer is None:
            raise RuntimeError("PatchCore.predict called before fit/load")
        grid = self.features(images)  # [B,h,w,D]
        b, h, w, d = grid.shape
        scores = self.scorer(grid.reshape(-1, d)).reshape(b, h, w)  # a GPU model's exact search stays on the GPU
        return scores_to_prediction(torch.from_numpy(scores), tuple(images.shape[-2:]), self.config.sigma)

    def describe(self) -> dict[str, Any]:
        # The size actually used (the config holds the requested sizes and the policy).
        return {**super().describe(), "embedding_dim": self.features.dim,
                "memory_bank_size": None if self.memory_bank is None else len(self.memory_bank),
                "scorer": None if self.scorer is None else self.scorer.description}

    def state_dict(self) -> dict[str, Any]:
        return {"memory_bank": self.memory_bank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._set_bank(state["memory_bank"])


@register
class PatchCoreUnified(PatchCore):
    """PatchCore's "unified" multi-class baseline: ONE memory bank over the normal patches of every class of
    the run (the setting long-tailed and multi-class papers compare against), scored exactly like
    PatchCore. The class of a test image is not used: a unified model is class-agnostic. Same config and
    presets as PatchCore; its coreset ratio applies to the pooled patches, so the bank is as large as the
    per-class banks together."""

    name = "patchcore_unified"
    learning_type = "multi_class"

    def predict(self, images: torch.Tensor, categories: list[str] | None = None) -> Prediction:
        return super().predict(images)
