"""Generic training losses shared by methods.

- `ssim`: the structural similarity index (Wang et al., 2004) with an 11x11 Gaussian window (sigma 1.5),
  zero padding and C1 = 0.01², C2 = 0.03² (data range 1), averaged over all pixels and channels: the
  pytorch-ssim function that ISSTAD's official code uses (`step2_pixel_ss_learning/util/simm.SSIM`,
  github.com/xjspin/ISSTAD); ours agrees with it to within 1e-7 (tests/test_isstad.py). ISSTAD's stage-2 loss
  uses 1 - SSIM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_kernel_1d(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two image batches [N,C,H,W] (Gaussian window, zero padding, C1 = 0.01^2, C2 = 0.03^2).

    The 2-D Gaussian window is applied as two 1-D convolutions (the same filter, separated).
    """
    channels = a.shape[1]
    g = _gaussian_kernel_1d(window, sigma).to(a.device, a.dtype)
    kx = g.view(1, 1, 1, window).expand(channels, 1, 1, window)
    ky = g.view(1, 1, window, 1).expand(channels, 1, window, 1)
    pad = window // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, kx, padding=(0, pad), groups=channels)
        return F.conv2d(x, ky, padding=(pad, 0), groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.mean()
