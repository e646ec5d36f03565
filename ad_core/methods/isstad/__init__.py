"""ISSTAD (Jin, Guo, Zhu, arXiv 2303.17354; official code github.com/xjspin/ISSTAD): a masked auto-encoder
followed by pixel-level self-supervised learning on a frozen encoder. See `model` for the method (paper,
official code, what we do and why).

- `model`: `ISSTADConfig`, the `ISSTAD` method (registered as "isstad") and its scoring `isstad_scores`;
- `mae`: the network `IsstadMAE` (ViT encoder + growing decoder) and `load_pretrained_encoder`;
- `augment`: stage-1 random resized crops and stage-2 pixel-level corruption.
"""

from ad_core.methods.isstad.augment import (
    OFFICIAL_CATEGORY_SETTINGS,
    CorruptionSettings,
    corrupt,
    foreground_box,
    random_resized_crop_flip,
    shape_mask,
)
from ad_core.methods.isstad.mae import EncoderWeightsError, IsstadMAE, load_pretrained_encoder
from ad_core.methods.isstad.model import ISSTAD, ISSTADConfig, isstad_scores

__all__ = [
    "ISSTAD",
    "OFFICIAL_CATEGORY_SETTINGS",
    "CorruptionSettings",
    "EncoderWeightsError",
    "ISSTADConfig",
    "IsstadMAE",
    "corrupt",
    "foreground_box",
    "isstad_scores",
    "load_pretrained_encoder",
    "random_resized_crop_flip",
    "shape_mask",
]
