"""PatchCore's locally aware patch features (Roth et al., CVPR 2022), as in the official implementation
(amazon-science/patchcore-inspection: `NetworkFeatureAggregator`, `Preprocessing`/`MeanMapper` and
`Aggregator` in `patchcore/common.py`, `PatchMaker` in `patchcore/patchcore.py`):

- features of the chosen backbone stages (default 2 and 3: layer2 + layer3 of a WideResNet-50; for other timm
  backbones the feature levels with reductions 8 and 16, see `ad_core.backbones.default_out_indices`);
- local neighbourhood aggregation: every feature map is unfolded into p x p patches (stride 1, zero padding);
  coarser patch grids are bilinearly upsampled (align_corners=False) to the finest stage's grid;
- per stage, the flattened (C*p*p) patch vector is adaptive-average-pooled to `pretrain_embed_dim`; the stages
  are stacked and pooled again to `target_embed_dim`.

Embedding-size policy (`never_pool_up_maps`): the official code pools to 1024 + 1024 whatever the backbone
gives. For a WideResNet-50 that pools down (4608 and 9216 values per patch); for a small backbone it pools up
(EfficientNet-Lite0: 360 and 1008 values become 1024 each, and after the final pooling 512 + 512), which adds
no information but makes every nearest-neighbour distance cost what 1024 values cost. Both poolings are
linear, and with the stage count dividing `target_embed_dim` the final pooling's bins never cross stages,
so each stage ends as its C*p*p values times a fixed matrix A (C*p*p x target/S). `"never_pool_up"` stores
a stage whose A has fewer independent rows than target/S in rank(A) values: x A V, V an orthonormal basis
of A's row space (from its SVD). Distances, hence coreset geometry and nearest-neighbour scores, are the
official ones (to float rounding); Lite0 patches take 360 + 512 = 872 values instead of 1024. Stages that
pool down keep the official pooling, so WideResNet-50 is unchanged. `"official"` always pools as published.

Used by PatchCore (memory bank of these features) and ReConPatch (the frozen input of its trainable layers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ad_core.backbones import FeatureExtractor, create_feature_extractor, default_out_indices

if TYPE_CHECKING:
    from ad_core.methods.base import ProgressFn


EMBED_DIM_POLICIES = ("never_pool_up", "official")


def _no_progress(fraction: float, message: str) -> None:
    """Default progress callback: ignore."""


def never_pool_up_maps(
    stage_values: list[int], pretrain_embed_dim: int, target_embed_dim: int
) -> list[torch.Tensor | None] | None:
    """Per stage of `stage_values` (C*p*p) values: None (the official pooling, which pools down) or the
    [C*p*p, rank] matrix x -> x A V that gives the official pooled vector's distances in rank values (module
    docstring). None overall when no stage pools up, or the stages do not split the target evenly."""
    n_stages = len(stage_values)
    if target_embed_dim % n_stages:
        return None
    share = target_embed_dim // n_stages  # what the official final pooling leaves each stage
    maps: list[torch.Tensor | None] = []
    for values in stage_values:
        if min(values, pretrain_embed_dim) >= share:
            maps.append(None)
            continue
        eye = torch.eye(values, dtype=torch.float64)[:, None, :]
        official = F.adaptive_avg_pool1d(F.adaptive_avg_pool1d(eye, pretrain_embed_dim), share)[:, 0]  # A
        _, singular, vh = torch.linalg.svd(official, full_matrices=False)
        rank = int((singular > singular[0] * 1e-9).sum())
        reduce = official @ vh[:rank].T
        # Most entries are SVD round-off (the pooling is banded); as float32 some would be denormals, which
        # make every later product (features, then the kNN search) several times slower on x86.
        reduce[reduce.abs() < 1e-6 * reduce.abs().max()] = 0
        maps.append(reduce.float())
    return maps if any(m is not None for m in maps) else None


class PatchFeatures:
    """Backbone + locally aware patch features: images [B,3,H,W] -> [B, h, w, target_embed_dim]."""

    def __init__(
        self,
        backbone: str,
        weights: str,
        *,
        stages: tuple[int, ...] = (2, 3),
        patch_size: int = 3,
        pretrain_embed_dim: int = 1024,
        target_embed_dim: int = 1024,
        embed_dim_policy: str = "official",
        device: str | torch.device = "cpu",
    ):
        self.stages = tuple(stages)
        self.patch_size = patch_size
        self.device = torch.device(device)
        out_indices = default_out_indices(backbone, self.stages)
        self.backbone: FeatureExtractor = create_feature_extractor(
            backbone, weights, out_indices=out_indices, device=self.device
        )
        self.pretrain_embed_dim = pretrain_embed_dim
        self.target_embed_dim = target_embed_dim
        if embed_dim_policy not in EMBED_DIM_POLICIES:
            raise ValueError(f"embed_dim_policy must be one of {EMBED_DIM_POLICIES}, got {embed_dim_policy!r}")
        # None: the official pooling; else per stage None (official) or its rank-reducing matrix.
        self.stage_maps = None
        if embed_dim_policy == "never_pool_up":
            stage_values = [c * patch_size**2 for c in self.backbone.channels]
            self.stage_maps = never_pool_up_maps(stage_values, pretrain_embed_dim, target_embed_dim)

    @property
    def dim(self) -> int:
        if self.stage_maps is None:
            return self.target_embed_dim
        share = self.target_embed_dim // len(self.stage_maps)
        return sum(share if m is None else m.shape[1] for m in self.stage_maps)

    def _patchify(self, feature: torch.Tensor) -> torch.Tensor:
        """[B,C,h,w] -> [B,h,w,C*p*p]: every position's p x p neighbourhood (zero padded), as the official code."""
        b, c, h, w = feature.shape
        p = self.patch_size
        unfolded = F.unfold(feature, kernel_size=p, stride=1, padding=(p - 1) // 2)  # [B, C*p*p, h*w]
        return unfolded.reshape(b, c * p * p, h, w).permute(0, 2, 3, 1)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images.to(self.device))
        ref_h, ref_w = features[0].shape[-2:]
        pooled = []
        for s, feature in enumerate(features):
            patches = self._patchify(feature)  # [B,h,w,C*p*p]
            if patches.shape[1:3] != (ref_h, ref_w):
                # Upsample the coarser stage's patch grid to the finest stage's grid (bilinear, as official).
                patches = F.interpolate(
                    patches.permute(0, 3, 1, 2), size=(ref_h, ref_w), mode="bilinear", align_corners=False
                ).permute(0, 2, 3, 1)
            flat = patches.reshape(-1, 1, patches.shape[-1])
            if self.stage_maps is not None:
                # The official pooling split by stage (exact when the stage count divides the target).
                reduce = self.stage_maps[s]
                if reduce is None:
                    share = self.target_embed_dim // len(features)
                    pooled.append(F.adaptive_avg_pool1d(F.adaptive_avg_pool1d(flat, self.pretrain_embed_dim), share))
                else:
                    pooled.append((flat.squeeze(1) @ reduce.to(flat.device))[:, None])
                continue
            pooled.append(F.adaptive_avg_pool1d(flat, self.pretrain_embed_dim).squeeze(1))
        if self.stage_maps is not None:
            return torch.cat(pooled, dim=2).reshape(images.shape[0], ref_h, ref_w, -1).float()
        stacked = torch.stack(pooled, dim=1).reshape(-1, 1, len(pooled) * self.pretrain_embed_dim)
        embedded = F.adaptive_avg_pool1d(stacked, self.target_embed_dim).squeeze(1)
        return embedded.reshape(images.shape[0], ref_h, ref_w, -1).float()


def collect_patch_features(
    extractor: PatchFeatures, loader: torch.utils.data.DataLoader, progress: ProgressFn = _no_progress
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
