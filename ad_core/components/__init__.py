"""The components room: building blocks that several anomaly detection methods share.

One small module per kind of thing, each saying where it comes from (official code, paper):

- `features`: backbone + PatchCore's locally aware patch features (`PatchFeatures`, `collect_patch_features`,
  `never_pool_up_maps`);
- `coreset`: approximate greedy k-center coreset (`approximate_greedy_coreset`);
- `scoring`: faiss nearest-neighbour patch scores against a memory bank (`NearestNeighbourScorer`) and the
  validation of the settings every patch-feature + memory-bank method shares (`check_patch_memory_bank`);
- `postprocess`: patch score grids -> image scores + smoothed anomaly maps (`scores_to_prediction`);
- `normalization`: robust score normalisation (`robust_stats`, `modified_z_score`, `MAD_BETA`) and image
  re-normalisation between backbones (`Renormalised`);
- `losses`: generic training losses (`ssim`);
- `seg_losses`: pixel-wise losses on anomaly probability maps (`focal_loss`, `smooth_l1_loss`);
- `perlin`: Perlin noise and DRAEM-style thresholded Perlin masks for synthetic anomalies (`perlin_noise`,
  `perlin_mask`);
- `textures`: foreign texture images for synthetic anomalies, offline (scikit-image's bundled photos) or from a
  folder such as DTD (`TextureSource`, `SKIMAGE_TEXTURES`).

Components take plain parameters, never a method's config, so any method can use them; method-specific
parts (e.g. ReConPatch's pseudo-labels and relaxed contrastive loss) stay in the method's own module.
Nothing here may import `ad_core.methods` at import time (the methods import this package).
"""

from ad_core.components.coreset import approximate_greedy_coreset
from ad_core.components.features import (
    EMBED_DIM_POLICIES,
    PatchFeatures,
    collect_patch_features,
    never_pool_up_maps,
)
from ad_core.components.losses import ssim
from ad_core.components.normalization import MAD_BETA, Renormalised, modified_z_score, robust_stats
from ad_core.components.perlin import perlin_mask, perlin_noise
from ad_core.components.postprocess import scores_to_prediction
from ad_core.components.scoring import NearestNeighbourScorer, check_patch_memory_bank
from ad_core.components.seg_losses import focal_loss, smooth_l1_loss
from ad_core.components.textures import SKIMAGE_TEXTURES, TextureSource

__all__ = [
    "EMBED_DIM_POLICIES",
    "MAD_BETA",
    "SKIMAGE_TEXTURES",
    "NearestNeighbourScorer",
    "PatchFeatures",
    "Renormalised",
    "TextureSource",
    "approximate_greedy_coreset",
    "check_patch_memory_bank",
    "collect_patch_features",
    "never_pool_up_maps",
    "focal_loss",
    "modified_z_score",
    "perlin_mask",
    "perlin_noise",
    "robust_stats",
    "scores_to_prediction",
    "smooth_l1_loss",
    "ssim",
]
