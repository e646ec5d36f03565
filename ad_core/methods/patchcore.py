"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Follows the official implementation (amazon-science/patchcore-inspection):
- features of backbone stages 2 and 3 (layer2 + layer3 of a WideResNet-50; for other timm backbones the
  feature levels with reductions 8 and 16);
- local neighbourhood aggregation: every feature map is unfolded into 3x3 patches (stride 1, padding 1);
  the stage-3 patch grid is bilinearly upsampled (align_corners=False) to the stage-2 grid;
- per stage, the flattened (C*3*3) patch vector is adaptive-average-pooled to `pretrain_embed_dim` (1024);
  the stages are stacked and pooled again to `target_embed_dim` (1024);
- memory bank: approximate greedy coreset (k-center) on a 128-d random linear projection, with 10 random
  starting points, keeping `coreset_ratio` (10%) of the training patches;
- scoring: faiss nearest neighbour search (k=1). As in the official code the patch score is the mean
  *squared* L2 distance that faiss' IndexFlatL2 returns (the paper writes the L2 norm; this only changes
  pixel maps after smoothing, not image rankings);
- image score = max patch score (the paper's re-weighting of the max is not in the official code either);
- anomaly map = patch score grid, bilinear upsampling to the input size, Gaussian filter sigma=4
  (scipy.ndimage.gaussian_filter, truncate=4).

Deviations (documented): masks are resized with nearest neighbour instead of bilinear + "==1" (see
`ad_core.data.Preprocess`); image normalisation uses the backbone's own timm mean/std (ImageNet for
ResNets, 0.5/0.5 for the TF-Lite EfficientNets) instead of always ImageNet's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ad_core.backbones import FeatureExtractor, create_feature_extractor, default_out_indices
from ad_core.data.base import Preprocess
from ad_core.methods.base import (
    AnomalyModel,
    ConfigError,
    MethodConfig,
    Prediction,
    ProgressFn,
    no_progress,
    register,
)


@dataclass
class PatchCoreConfig(MethodConfig):
    backbone: str = "wide_resnet50_2"
    weights: str = "imagenet"
    stages: tuple[int, ...] = (2, 3)
    patch_size: int = 3
    pretrain_embed_dim: int = 1024
    target_embed_dim: int = 1024
    coreset_ratio: float = 0.1
    coreset_projection_dim: int = 128
    coreset_start_points: int = 10
    num_neighbors: int = 1
    sigma: float = 4.0
    # "flat" = exact search (official); "ivf" = faiss IVF-Flat for very large banks (approximate).
    nn_index: str = "flat"
    ivf_nprobe: int = 8

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU demo: the offline EfficientNet-Lite0 ImageNet weights and a smaller bank.
        "fast": {"backbone": "tf_efficientnet_lite0", "weights": "bundled", "coreset_ratio": 0.05},
        # 1% coreset as used by the official ensemble models ("P001" configs).
        "ensemble": {"coreset_ratio": 0.01},
    }

    def validate(self) -> None:
        super().validate()
        if not 0 < self.coreset_ratio <= 1:
            raise ConfigError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ConfigError(f"patch_size must be a positive odd number, got {self.patch_size}")
        if self.num_neighbors < 1:
            raise ConfigError(f"num_neighbors must be >= 1, got {self.num_neighbors}")
        if self.nn_index not in ("flat", "ivf"):
            raise ConfigError(f"nn_index must be 'flat' or 'ivf', got {self.nn_index!r}")
        if not self.stages:
            raise ConfigError("stages must name at least one backbone stage")


class PatchFeatures:
    """Backbone + PatchCore's locally aware patch features: images [B,3,H,W] -> [B, h, w, D]."""

    def __init__(self, config: PatchCoreConfig, device: torch.device):
        self.config = config
        self.device = device
        out_indices = default_out_indices(config.backbone, tuple(config.stages))
        self.backbone: FeatureExtractor = create_feature_extractor(
            config.backbone, config.weights, out_indices=out_indices, device=device
        )

    @property
    def dim(self) -> int:
        return self.config.target_embed_dim

    def _patchify(self, feature: torch.Tensor) -> torch.Tensor:
        """[B,C,h,w] -> [B,h,w,C*p*p]: every position's p x p neighbourhood (zero padded), as the official code."""
        b, c, h, w = feature.shape
        p = self.config.patch_size
        unfolded = F.unfold(feature, kernel_size=p, stride=1, padding=(p - 1) // 2)  # [B, C*p*p, h*w]
        return unfolded.reshape(b, c * p * p, h, w).permute(0, 2, 3, 1)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images.to(self.device))
        ref_h, ref_w = features[0].shape[-2:]
        pooled = []
        for feature in features:
            patches = self._patchify(feature)  # [B,h,w,C*p*p]
            if patches.shape[1:3] != (ref_h, ref_w):
                # Upsample the coarser stage's patch grid to the finest stage's grid (bilinear, as official).
                patches = F.interpolate(
                    patches.permute(0, 3, 1, 2), size=(ref_h, ref_w), mode="bilinear", align_corners=False
                ).permute(0, 2, 3, 1)
            flat = patches.reshape(-1, 1, patches.shape[-1])
            pooled.append(F.adaptive_avg_pool1d(flat, self.config.pretrain_embed_dim).squeeze(1))
        stacked = torch.stack(pooled, dim=1).reshape(-1, 1, len(pooled) * self.config.pretrain_embed_dim)
        embedded = F.adaptive_avg_pool1d(stacked, self.config.target_embed_dim).squeeze(1)
        return embedded.reshape(images.shape[0], ref_h, ref_w, -1).float()


def approximate_greedy_coreset(
    features: torch.Tensor,
    ratio: float,
    projection_dim: int = 128,
    start_points: int = 10,
    generator: torch.Generator | None = None,
    progress: ProgressFn = no_progress,
) -> np.ndarray:
    """Indices of an approximate greedy k-center coreset (official PatchCore's ApproximateGreedyCoresetSampler).

    Features are projected to `projection_dim` with a random linear map; the distance of every point to the
    selected set starts as its mean distance to `start_points` random points and is updated with the distance
    to each newly selected point (the farthest one), so memory stays O(N).
    """
    n = features.shape[0]
    k = max(1, int(n * ratio))
    if k >= n:
        return np.arange(n)
    if features.shape[1] > projection_dim:
        projection = torch.randn(features.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        reduced = features @ projection.to(features.device)
    else:
        reduced = features
    # The greedy loop is a GEMV per step; numpy's BLAS path is several times faster than torch's here.
    points = np.ascontiguousarray(reduced.cpu().numpy(), dtype=np.float32)
    sq_norms = np.einsum("ij,ij->i", points, points)
    starts = torch.randperm(n, generator=generator)[: min(start_points, n)].numpy()
    # Euclidean distances to the start points, averaged: the official initialisation of the running distance.
    start_sq = sq_norms[:, None] + sq_norms[starts][None] - 2 * points @ points[starts].T
    min_distance = np.sqrt(np.maximum(start_sq, 0)).mean(1).astype(np.float32)
    distance = np.empty(n, dtype=np.float32)
    selected = np.empty(k, dtype=np.int64)
    report_every = max(1, k // 50)
    for i in range(k):
        idx = int(np.argmax(min_distance))
        selected[i] = idx
        np.matmul(points, points[idx], out=distance)
        distance *= -2
        distance += sq_norms
        distance += sq_norms[idx]
        np.maximum(distance, 0, out=distance)
        np.sqrt(distance, out=distance)
        np.minimum(min_distance, distance, out=min_distance)
        if i % report_every == 0:
            progress(i / k, f"coreset {i}/{k}")
    return selected


class NearestNeighbourScorer:
    """faiss k-NN over a memory bank; patch score = mean of the k squared L2 distances (official code)."""

    def __init__(self, bank: np.ndarray, num_neighbors: int = 1, index: str = "flat", nprobe: int = 8):
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.num_neighbors = min(num_neighbors, len(bank))
        dim = bank.shape[1]
        if index == "ivf" and len(bank) >= 4096:
            nlist = int(math.sqrt(len(bank)))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
            self.index.train(bank)
            self.index.nprobe = nprobe
        else:
            self.index = faiss.IndexFlatL2(dim)
        self.index.add(bank)

    def __call__(self, queries: np.ndarray) -> np.ndarray:
        distances, _ = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), self.num_neighbors)
        return distances.mean(axis=1)


def scores_to_prediction(patch_scores: torch.Tensor, size: tuple[int, int], sigma: float) -> Prediction:
    """Patch score grids [B,h,w] -> image score = max, map = bilinear upsampling + Gaussian(sigma)."""
    image_scores = patch_scores.reshape(patch_scores.shape[0], -1).max(dim=1).values
    maps = F.interpolate(patch_scores[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    maps = maps.cpu().numpy().astype(np.float32)
    if sigma > 0:
        maps = np.stack([gaussian_filter(m, sigma=sigma) for m in maps]).astype(np.float32)
    return Prediction(image_scores=image_scores.cpu().numpy().astype(np.float32), anomaly_maps=maps)


def collect_patch_features(
    extractor: PatchFeatures, loader: torch.utils.data.DataLoader, progress: ProgressFn = no_progress
) -> torch.Tensor:
    """All patch features of a loader's images as one [N*h*w, D] CPU tensor."""
    chunks = []
    total = len(loader)
    for i, batch in enumerate(loader):
        chunks.append(extractor(batch["image"]).reshape(-1, extractor.dim).cpu())
        progress((i + 1) / total, f"features {i + 1}/{total} batches")
    if not chunks:
        raise ValueError("the training split is empty: no normal images to fit on")
    return torch.cat(chunks)


@register
class PatchCore(AnomalyModel):
    name = "patchcore"
    Config = PatchCoreConfig

    def __init__(self, config: PatchCoreConfig, device: str | torch.device = "cpu"):
        super().__init__(config, device)
        self.features = PatchFeatures(config, self.device)
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
        )
        self._set_bank(features[keep].numpy())
        progress(1.0, f"memory bank: {len(keep)} of {len(features)} patches")

    def _set_bank(self, bank: np.ndarray) -> None:
        self.memory_bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.scorer = NearestNeighbourScorer(
            self.memory_bank, self.config.num_neighbors, self.config.nn_index, self.config.ivf_nprobe
        )

    def predict(self, images: torch.Tensor) -> Prediction:
        if self.scorer is None:
            raise RuntimeError("PatchCore.predict called before fit/load")
        grid = self.features(images)  # [B,h,w,D]
        b, h, w, d = grid.shape
        scores = self.scorer(grid.reshape(-1, d).cpu().numpy()).reshape(b, h, w)
        return scores_to_prediction(torch.from_numpy(scores), tuple(images.shape[-2:]), self.config.sigma)

    def state_dict(self) -> dict[str, Any]:
        return {"memory_bank": self.memory_bank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._set_bank(state["memory_bank"])
