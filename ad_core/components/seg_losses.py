"""Pixel-wise segmentation losses on anomaly probabilities (used by PRN; any method predicting a per-pixel
anomaly probability map can use them).

- `focal_loss`: the focal loss (Lin et al., ICCV 2017) on the two-class distribution [1 - p, p] with label
  smoothing, in the form PRN's unofficial code uses (xcyao00/PRNet `losses/focal_loss.py`, itself from
  Hsuxu/Loss_ToolBox-PyTorch): with y the pixel label, p_1 = p, p_0 = 1 - p and smoothing s,
      p_t = (1 - s) p_y + s p_(1-y) + s,      loss = - a_y (1 - p_t)^gamma log(p_t),
  averaged over all pixels. a_1 = `alpha` weighs anomalous pixels and a_0 = 1 - alpha normal ones (the
  reference's float alpha goes to class 0 instead; both give 0.5 / 0.5 at its alpha = 0.5).
- `smooth_l1_loss`: the Huber-style smooth L1 between the probability map and the mask (mean over pixels,
  0.5 d^2 / beta for |d| < beta, else |d| - 0.5 beta), as torch's `F.smooth_l1_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["focal_loss", "smooth_l1_loss"]


def focal_loss(
    prob: torch.Tensor, target: torch.Tensor, alpha: float = 0.5, gamma: float = 4.0, smooth: float = 1e-5
) -> torch.Tensor:
    """Mean focal loss of anomaly probabilities `prob` against binary `target` (same shape)."""
    target = target.to(prob.dtype)
    p_y = target * prob + (1 - target) * (1 - prob)  # probability of the true class
    p_t = (1 - smooth) * p_y + smooth * (1 - p_y) + smooth
    weight = target * alpha + (1 - target) * (1 - alpha)
    return (-weight * (1 - p_t).clamp(min=0) ** gamma * torch.log(p_t)).mean()


def smooth_l1_loss(prob: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Mean smooth L1 between `prob` and `target`."""
    return F.smooth_l1_loss(prob, target.to(prob.dtype), beta=beta)
