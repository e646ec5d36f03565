"""LTAD (Ho, Peng, Vasconcelos, CVPR 2024, arXiv 2403.20236): long-tailed multi-class anomaly detection with
learnable class names. See `model` for the method (what the paper says, what we do and why).

- `model`: `LTADConfig` and the `LTAD` method (registered as "ltad", learning type `multi_class`);
- `foundation`: the frozen open_clip foundation model (`Foundation`, `FoundationSpec`), prompts with learned
  pseudo class names, and the random-weights label;
- `vae`: the conditional feature VAE of phase 1 (`FeatureVAE`);
- `networks`: the transformer reconstruction module, the patch projections and the two per-patch scores.
"""

from ad_core.methods.ltad.foundation import FOUNDATION_RANDOM_LABEL, Foundation, FoundationSpec
from ad_core.methods.ltad.model import LTAD, SEMANTIC_OFF_LABEL, LTADConfig
from ad_core.methods.ltad.networks import (
    PatchProjection,
    ReconstructionModule,
    neighbour_mask,
    rec_scores,
    sem_scores,
)
from ad_core.methods.ltad.vae import FeatureVAE

__all__ = [
    "FOUNDATION_RANDOM_LABEL",
    "LTAD",
    "SEMANTIC_OFF_LABEL",
    "FeatureVAE",
    "Foundation",
    "FoundationSpec",
    "LTADConfig",
    "PatchProjection",
    "ReconstructionModule",
    "neighbour_mask",
    "rec_scores",
    "sem_scores",
]
