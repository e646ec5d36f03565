"""Score and image normalisation shared by methods.

- `robust_stats` / `modified_z_score`: the modified z-score (x - median) / (beta * MAD) with the median
  absolute deviation and beta = `MAD_BETA` = 1.4826 (Iglewicz & Hoaglin), which ReConPatch's paper uses to put
  the scores of its ensemble members on one scale before averaging them.
- `Renormalised`: re-normalises images from one backbone's mean/std to another's, so members of an ensemble
  (ReConPatch) can share one data loader.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ad_core.data.base import Preprocess

# Consistency constant that makes the median absolute deviation estimate a normal distribution's sigma.
MAD_BETA = 1.4826


def robust_stats(values: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """(median, MAD) with MAD = median |x - median| (median absolute deviation)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    median = float(np.median(x))
    return median, float(np.median(np.abs(x - median)))


def modified_z_score(values: np.ndarray, median: float, mad: float, beta: float = MAD_BETA) -> np.ndarray:
    """(x - median) / (beta * MAD); a zero MAD is replaced by a tiny constant instead of dividing by zero."""
    scale = max(beta * mad, 1e-12)
    return ((np.asarray(values, dtype=np.float64) - median) / scale).astype(np.float32)


class Renormalised:
    """Iterates a loader's batches, re-normalising images from one mean/std to another and counting images.

    `convert(images)` does the same for one batch; `loader` may be None when only `convert` is needed.
    Iteration yields {"image": converted images} only, and `images` counts the images seen in the last pass.
    """

    def __init__(self, loader: Any, src: Preprocess, dst: Preprocess):
        self.loader, self.images = loader, 0
        self.shift = None
        if (src.mean, src.std) != (dst.mean, dst.std):
            s_mean, s_std = torch.tensor(src.mean).view(1, 3, 1, 1), torch.tensor(src.std).view(1, 3, 1, 1)
            d_mean, d_std = torch.tensor(dst.mean).view(1, 3, 1, 1), torch.tensor(dst.std).view(1, 3, 1, 1)
            self.shift = (s_mean, s_std, d_mean, d_std)

    def convert(self, images: torch.Tensor) -> torch.Tensor:
        if self.shift is None:
            return images
        s_mean, s_std, d_mean, d_std = self.shift
        return ((images * s_std + s_mean) - d_mean) / d_std

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.images = 0
        for batch in self.loader:
            self.images += len(batch["image"])
            yield {"image": self.convert(batch["image"])}
