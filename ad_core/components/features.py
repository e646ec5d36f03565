"""PatchCore's locally aware patch features (Roth et al., CVPR 2022), as in the official implementation
(amazon-science/patchcore-inspection: `NetworkFeatureAggregator`, `Preprocessing`/`MeanMapper` and
`Aggregator` in `patchcore/common.py`, `PatchMaker` in `patchcore/patchcore.py`):

- features of the chosen backbone stages (default 2 and 3: layer2 + layer3 of a WideResNet-50; for other timm
  backbones the feature levels with reductions 8 and 16, see `ad_core.backbones.default_out_indices`);
- local neighbourhood aggregation: every feature map is unfolded into p x p patches (stride 1, zero padding);
  coarser patch grids are bilinearly upsampled (align_corners=False) to the finest stage's grid;
- per stage, the flattened (C*p*p) patch vector is adaptive-average-pooled to `pretrain_embed_dim`; the stages
  are stacked and pooled again to `target_embed_dim`.

Used by PatchCore (memory bank of these features) and ReConPatch (the frozen input of its trainable layers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ad_core.backbones import FeatureExtractor, create_feature_extractor, default_out_indices

if TYPE_CHECKING:
    from ad_core.methods.base import ProgressFn


def _no_progress(fraction: float, message: str) -> None:
    """Default progress callback: ignore."""


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
        device: str | torch.device = "cpu",
    ):
        self.stages = tuple(stages)
        self.patch_size = patch_size
        self.pretrain_embed_dim = pretrain_embed_dim
        self.target_embed_dim = target_embed_dim
        self.device = torch.device(device)
        out_indices = default_out_indices(backbone, self.stages)
        self.backbone: FeatureExtractor = create_feature_extractor(
            backbone, weights, out_indices=out_indices, device=self.device
        )

    @property
    def dim(self) -> int:
        return self.target_embed_dim

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
        for feature in features:
            patches = self._patchify(feature)  # [B,h,w,C*p*p]
            if patches.shape[1:3] != (ref_h, ref_w):
                # Upsample the coarser stage's patch grid to the finest stage's grid (bilinear, as official).
                patches = F.interpolate(
                    patches.permute(0, 3, 1, 2), size=(ref_h, ref_w), mode="bilinear", align_corners=False
                ).permute(0, 2, 3, 1)
            flat = patches.reshape(-1, 1, patches.shape[-1])
            pooled.append(F.adaptive_avg_pool1d(flat, self.pretrain_embed_dim).squeeze(1))
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
