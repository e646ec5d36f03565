"""Anomaly-map rendering with colours anchored to normal images (numpy + PIL only).

Per-image min-max scaling makes every good image look anomalous (its own noise fills the colour range).
Instead the colour scale of a job x category is fixed by its *good* test images: `lo` is their median map
value and `threshold` their maximum (or 99th percentile). A pixel at `lo` is transparent and dark blue,
at `threshold` it is orange (0.75 of the colour map), a third beyond it saturates red; so the same colour
means the same evidence on every image, and a good image stays calm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

# Turbo-like colour map stops (position, R, G, B): dark blue -> cyan -> green -> yellow -> orange -> red.
_STOPS = np.array([
    (0.00, 48, 18, 59), (0.15, 65, 105, 225), (0.30, 40, 190, 220), (0.45, 60, 230, 120),
    (0.60, 200, 235, 50), (0.75, 255, 160, 20), (0.90, 230, 60, 10), (1.00, 150, 10, 5),
], dtype=np.float32)
THRESHOLD_POSITION = 0.75
ANCHORS = ("max", "p99")


@dataclass(frozen=True)
class Scale:
    """Colour scale of one job x category, from the maps of its good test images."""

    lo: float
    threshold: float
    anchor: str
    from_normals: bool  # False when the category has no good test image (fallback: all images)

    def normalise(self, amap: np.ndarray) -> np.ndarray:
        """0 at `lo`, THRESHOLD_POSITION at the threshold, clipped to [0, 1]."""
        span = max(self.threshold - self.lo, 1e-12)
        return np.clip((amap - self.lo) / span * THRESHOLD_POSITION, 0.0, 1.0)


def normal_scale(maps: np.ndarray, labels: np.ndarray, anchor: str = "max") -> Scale:
    """Scale anchored at the max (or 99th percentile) of the anomaly maps of the good images."""
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
    labels = np.asarray(labels)
    normals = labels == 0
    pool = maps[normals] if normals.any() else maps
    values = np.asarray(pool, dtype=np.float32).ravel()
    lo = float(np.median(values))
    threshold = float(values.max() if anchor == "max" else np.percentile(values, 99))
    return Scale(lo, max(threshold, lo + 1e-6), anchor, bool(normals.any()))


def colorize(values01: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] uint8."""
    channels = [np.interp(values01, _STOPS[:, 0], _STOPS[:, c]) for c in (1, 2, 3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def _fit(amap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a map to the image's (H, W) when a method outputs another resolution."""
    if amap.shape == shape:
        return amap
    resized = Image.fromarray(np.asarray(amap, dtype=np.float32)).resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def overlay(image: np.ndarray, amap: np.ndarray, scale: Scale, opacity: float = 0.5) -> np.ndarray:
    """Blend the coloured map over the image; below-normal pixels fade out so the image stays readable."""
    t = scale.normalise(_fit(np.asarray(amap, dtype=np.float32), image.shape[:2]))
    alpha = (opacity * np.clip(t / THRESHOLD_POSITION, 0.0, 1.0))[..., None]
    blended = image.astype(np.float32) * (1 - alpha) + colorize(t).astype(np.float32) * alpha
    return blended.round().astype(np.uint8)


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Boolean outline of a binary mask (inner border, `thickness` pixels)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    eroded = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~eroded


def draw(image: np.ndarray, line: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    out = image.copy()
    out[line] = color
    return out


def above_threshold(amap: np.ndarray, scale: Scale, shape: tuple[int, int]) -> np.ndarray:
    """Pixels scoring above the normal-image threshold (the predicted defect region)."""
    return _fit(np.asarray(amap, dtype=np.float32), shape) > scale.threshold


def colorbar(width: int = 256, height: int = 14) -> np.ndarray:
    """A horizontal legend of the colour map (threshold at THRESHOLD_POSITION)."""
    row = colorize(np.linspace(0.0, 1.0, width))
    bar = np.repeat(row[None], height, axis=0)
    bar[:, int(THRESHOLD_POSITION * (width - 1))] = 255
    return bar
