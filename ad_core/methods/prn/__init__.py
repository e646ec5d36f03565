"""PRN (Zhang et al., CVPR 2023, arXiv 2212.02031): prototypical residual networks, a few-shot supervised
method. See `model` for the method and its table of choices (paper / reference code / what we do / why).

- `model`: `PRNConfig`, the `PRN` method (registered as "prn"), `topk_mean`;
- `network`: `Prototypes` (k-means prototype maps, nearest-prototype residuals), `MultiScaleFusion`,
  `MultiSizeAttention`, `PRNetwork`;
- `generate`: the training anomalies (real, copy-paste, Perlin + texture), `foreground_mask`, `plan_epoch`.
"""

from ad_core.methods.prn.generate import (
    AnomalyGenerator,
    GenerationSettings,
    copy_paste,
    foreground_mask,
    plan_epoch,
    texture_anomaly,
)
from ad_core.methods.prn.model import PRN, PRNConfig, topk_mean
from ad_core.methods.prn.network import (
    MultiScaleFusion,
    MultiSizeAttention,
    PRNetwork,
    Prototypes,
    assign_prototypes,
    residuals,
)

__all__ = [
    "PRN",
    "AnomalyGenerator",
    "GenerationSettings",
    "MultiScaleFusion",
    "MultiSizeAttention",
    "PRNConfig",
    "PRNetwork",
    "Prototypes",
    "assign_prototypes",
    "copy_paste",
    "foreground_mask",
    "plan_epoch",
    "residuals",
    "texture_anomaly",
    "topk_mean",
]
