"""Patch score grids -> image scores and anomaly maps, as the official PatchCore implementation
(amazon-science/patchcore-inspection, `patchcore/patchcore.py` `_predict` + `common.RescaleSegmentor`):
image score = max patch score (the paper's re-weighting of the max is not in the official code either);
anomaly map = patch score grid, bilinear upsampling (align_corners=False) to the input size, then
scipy.ndimage.gaussian_filter(sigma) (truncate=4).

Used by PatchCore and ReConPatch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

if TYPE_CHECKING:
    from ad_core.methods.base import Prediction


def scores_to_prediction(patch_scores: torch.Tensor, size: tuple[int, int], sigma: float) -> Prediction:
    """Patch score grids [B,h,w] -> image score = max, map = bilinear upsampling + Gaussian(sigma)."""
    # Imported here, not at the top: importing ad_core.methods imports the methods, which import this room.
    from ad_core.methods.base import Prediction

    image_scores = patch_scores.reshape(patch_scores.shape[0], -1).max(dim=1).values
    maps = F.interpolate(patch_scores[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    maps = maps.cpu().numpy().astype(np.float32)
    if sigma > 0:
        maps = np.stack([gaussian_filter(m, sigma=sigma) for m in maps]).astype(np.float32)
    return Prediction(image_scores=image_scores.cpu().numpy().astype(np.float32), anomaly_maps=maps)
