"""Perlin noise and thresholded Perlin masks for synthetic anomalies, as popularised by DRAEM (Zavrtanik et al.,
ICCV 2021; `rand_perlin_2d_np` in its code) and reused by PRN's unofficial code (xcyao00/PRNet).

- `perlin_noise`: gradient noise on a `res` lattice (random unit gradients at the lattice points, quintic fade
  6t^5 - 15t^4 + 10t^3, bilinear blend of the four corner dot products), scaled by sqrt(2) so that it spans
  about [-1, 1]. Any image size works (DRAEM needs the size divisible by `res`; here pixel i sits at lattice
  position i * res / size);
- `perlin_mask`: DRAEM's recipe: lattice resolution 2**a x 2**b with a, b drawn uniformly from
  [min_exponent, max_exponent), noise rotated by an angle drawn from [-max_rotation, max_rotation] (bilinear,
  zero outside, as imgaug's Affine(rotate=(-90, 90))), thresholded at `threshold` (0.5).

Every random number comes from an explicit `numpy.random.Generator`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["perlin_mask", "perlin_noise"]


def _fade(t: np.ndarray) -> np.ndarray:
    return ((6 * t - 15) * t + 10) * t**3


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin noise [H, W] (float32, roughly in [-1, 1]) with `res` lattice cells along each axis."""
    h, w = shape
    ry, rx = res
    angles = 2 * np.pi * rng.random((ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # [ry+1, rx+1, 2]
    y = np.arange(h) * (ry / h)
    x = np.arange(w) * (rx / w)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[(y0 + dy)[:, None], (x0 + dx)[None, :]]  # [H, W, 2]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1 - tx) + corner(0, 1) * tx
    bottom = corner(1, 0) * (1 - tx) + corner(1, 1) * tx
    return (np.sqrt(2) * (top * (1 - ty) + bottom * ty)).astype(np.float32)


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    min_exponent: int = 0,
    max_exponent: int = 6,
    threshold: float = 0.5,
    max_rotation: float = 90.0,
) -> np.ndarray:
    """Boolean [H, W] mask: rotated Perlin noise (lattice 2**a x 2**b, a, b in [min, max)) > threshold."""
    ay, ax = (int(v) for v in rng.integers(min_exponent, max_exponent, size=2))
    noise = perlin_noise(shape, (2**ay, 2**ax), rng)
    angle = float(rng.uniform(-max_rotation, max_rotation))
    if max_rotation > 0:
        noise = ndimage.rotate(noise, angle, reshape=False, order=1, mode="constant", cval=0.0)
    return noise > threshold
