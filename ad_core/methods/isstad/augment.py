"""ISSTAD data augmentation: stage-1 random resized crops and stage-2 pixel-level corruption.

All functions work on float RGB tensors in [0, 1] ([3,H,W] or [N,3,H,W]) at the model's resolution and draw
every random number from an explicit `numpy.random.Generator`, so a seed fixes the result on every device.

Pixel-level corruption (restated from the official `mvtecad_aug.py`, adapted to tensors):

1. region: the bounding box of the largest Otsu foreground component, padded by 10% of its width and 20% of
   its height on each side (`area_limit=True`), else the whole image;
2. mask: 1..`max_shapes` shapes, each uniformly a rectangle, an ellipse or a polygon (3-8 vertices), anchored
   in [x0, x1 - margin] x [y0, y1 - margin] with extents in [min_extent, remaining box extent]. The official
   code works in original-resolution pixels (margin 50 px, min extent 10 px, blur radius 15-20 px for
   ~1024 px images); here these are fractions of the image side (50/1024, 10/1024, 15/1024-20/1024);
3. fill: a transformed copy of the SAME image, transform uniformly one of
   - colour: one of ColorJitter(0.8, 0.8, 0.8, 0.4) / grayscale / Gaussian blur / the three pairs,
   - flip: horizontal, vertical or both,
   - noise: 50% alpha blend with uniform random RGB noise;
4. label: exact pixel labels. Deviation from the official code (whose label is the drawn shape): pixels
   inside a shape whose colour changes by at most `min_change` (max over channels, e.g. a blurred flat
   background, a flip of a symmetric region) keep their clean value and are labelled normal, so the label is
   exactly the set of pixels that differ from the clean image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = [
    "OFFICIAL_CATEGORY_SETTINGS",
    "CorruptionSettings",
    "corrupt",
    "foreground_box",
    "random_resized_crop_flip",
    "remove_black",
    "shape_mask",
    "transformed_copy",
]

# Fractions of the image side that stand for the official code's pixel constants at ~1024 px.
MARGIN_FRACTION = 50 / 1024
MIN_EXTENT_FRACTION = 10 / 1024
BLUR_RADIUS_FRACTION = (15 / 1024, 20 / 1024)


@dataclass(frozen=True)
class CorruptionSettings:
    probability: float = 2 / 3
    max_shapes: int = 3
    area_limit: bool = True
    remove_black: bool = False
    min_change: float = 2 / 255


# Official per-category settings (mvtecad_aug.py); every other MVTec AD category: 3 shapes, area limit on.
OFFICIAL_CATEGORY_SETTINGS: dict[str, dict[str, object]] = {
    "capsule": {"max_shapes": 1, "area_limit": False, "remove_black": False},
    "carpet": {"max_shapes": 1, "area_limit": False, "remove_black": True},
    "zipper": {"max_shapes": 3, "area_limit": False, "remove_black": True},
}


# --- stage 1 ------------------------------------------------------------------------------------------
def random_resized_crop_flip(
    images: torch.Tensor,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """torchvision's RandomResizedCrop (bicubic, back to the input size) + horizontal flip p=0.5, per image."""
    n, _, h, w = images.shape
    out = torch.empty_like(images)
    area = h * w
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for i in range(n):
        for _ in range(10):
            target = area * rng.uniform(*scale)
            aspect = float(np.exp(rng.uniform(*log_ratio)))
            cw, ch = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
            if 0 < cw <= w and 0 < ch <= h:
                top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                break
        else:  # fallback: whole image (torchvision's central crop within the ratio limits)
            ch, cw, top, left = h, w, 0, 0
        crop = images[i : i + 1, :, top : top + ch, left : left + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        out[i] = crop[0].clamp(0, 1)
    return out


# --- stage 2: region ------------------------------------------------------------------------------------
def _otsu_threshold(gray: np.ndarray) -> float:
    """Otsu's threshold on 256 bins of a [0,1] image (as cv2's THRESH_OTSU on 8-bit images)."""
    values = np.clip(np.round(gray * 255), 0, 255).astype(np.int64)
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    prob = hist / hist.sum()
    omega = np.cumsum(prob)
    mu = np.cumsum(prob * np.arange(256))
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    between[(omega <= 0) | (omega >= 1)] = -1
    return float(np.argmax(between)) / 255.0


def foreground_box(image: torch.Tensor) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the largest Otsu foreground component, padded 10% (x) / 20% (y) per side."""
    rgb = image.detach().cpu().numpy()
    gray = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    h, w = gray.shape
    binary = gray > _otsu_threshold(gray)
    # Largest component by enclosed area (holes filled), like cv2's largest external contour: filling the
    # holes of the whole mask first makes every component's area the area inside its outer boundary.
    labels, count = ndimage.label(ndimage.binary_fill_holes(binary), structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return 0, 0, w, h
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    ys, xs = ndimage.find_objects(labels)[largest - 1]
    x, y, bw, bh = xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start
    pad_x, pad_y = bw // 10, bh // 5
    x, y = max(0, x - pad_x), max(0, y - pad_y)
    bw, bh = min(w - x, bw + 2 * pad_x), min(h - y, bh + 2 * pad_y)
    return x, y, x + bw, y + bh


def remove_black(image: torch.Tensor) -> torch.Tensor:
    """Pixels not brighter than the mean grey level become the mean colour of the brighter pixels."""
    gray = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    keep = gray > gray.mean()
    if not bool(keep.any()):
        return image.clone()
    mean_colour = image[:, keep].mean(dim=1)
    return torch.where(keep[None], image, mean_colour[:, None, None])


# --- stage 2: mask ------------------------------------------------------------------------------------
def shape_mask(
    size: tuple[int, int], box: tuple[int, int, int, int], max_shapes: int, rng: np.random.Generator
) -> np.ndarray:
    """Boolean [H, W] union of 1..max_shapes random rectangles / ellipses / polygons anchored in `box`."""
    h, w = size
    side = max(h, w)
    margin = max(1, round(MARGIN_FRACTION * side))
    min_extent = max(1, round(MIN_EXTENT_FRACTION * side))
    x0, y0, x1, y1 = box
    hi_x, hi_y = max(x0, x1 - margin), max(y0, y1 - margin)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        kind = int(rng.integers(0, 3))
        if kind in (0, 1):
            ax, ay = int(rng.integers(x0, hi_x + 1)), int(rng.integers(y0, hi_y + 1))
            ew = int(rng.integers(min_extent, max(min_extent, x1 - ax) + 1))
            eh = int(rng.integers(min_extent, max(min_extent, y1 - ay) + 1))
            shape = (ax, ay, ax + ew, ay + eh)
            (draw.rectangle if kind == 0 else draw.ellipse)(shape, fill=255)
        else:
            points = [
                (int(rng.integers(x0, hi_x + 1)), int(rng.integers(y0, hi_y + 1)))
                for _ in range(int(rng.integers(3, 9)))
            ]
            draw.polygon(points, fill=255)
    return np.asarray(canvas) > 0


# --- stage 2: fill ------------------------------------------------------------------------------------
def _color_jitter(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """ColorJitter(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.4), factors and order from rng."""
    b, c, s = (float(rng.uniform(0.2, 1.8)) for _ in range(3))
    hue = float(rng.uniform(-0.4, 0.4))
    ops = [
        lambda x: TF.adjust_brightness(x, b),
        lambda x: TF.adjust_contrast(x, c),
        lambda x: TF.adjust_saturation(x, s),
        lambda x: TF.adjust_hue(x, hue),
    ]
    for index in rng.permutation(4):
        image = ops[int(index)](image)
    return image.clamp(0, 1)


def _gray(image: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(image, num_output_channels=3)


def _blur(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    side = max(image.shape[-2:])
    sigma = max(0.5, float(rng.uniform(*BLUR_RADIUS_FRACTION)) * side)
    kernel = min(2 * int(np.ceil(3 * sigma)) + 1, 2 * (min(image.shape[-2:]) - 1) + 1)
    kernel = max(3, kernel if kernel % 2 else kernel - 1)
    return TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def transformed_copy(image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, str]:
    """The source of the corrupted pixels: (transformed image, name of the transform)."""
    kind = ("color", "flip", "noise")[int(rng.integers(0, 3))]
    if kind == "color":
        variant = int(rng.integers(0, 6))
        if variant == 0:
            return _color_jitter(image, rng), "color:jitter"
        if variant == 1:
            return _gray(image), "color:gray"
        if variant == 2:
            return _blur(image, rng), "color:blur"
        if variant == 3:
            return _gray(_color_jitter(image, rng)), "color:jitter+gray"
        if variant == 4:
            return _blur(_color_jitter(image, rng), rng), "color:jitter+blur"
        return _blur(_gray(image), rng), "color:gray+blur"
    if kind == "flip":
        variant = int(rng.integers(0, 3))
        dims = {0: [-1], 1: [-2], 2: [-2, -1]}[variant]
        return image.flip(dims), "flip:" + ("h", "v", "hv")[variant]
    noise = torch.from_numpy(rng.integers(0, 256, size=image.shape).astype(np.float32) / 255.0)
    return 0.5 * image + 0.5 * noise.to(image.device, image.dtype), "noise"


def corrupt(
    image: torch.Tensor,
    rng: np.random.Generator,
    settings: CorruptionSettings = CorruptionSettings(),  # noqa: B008 (frozen dataclass)
    box: tuple[int, int, int, int] | None = None,
    force: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted image [3,H,W], label [H,W] long, 1 = changed pixel) for a clean [0,1] image [3,H,W].

    With probability 1 - settings.probability (unless `force`) the image comes back unchanged with an
    all-zero label. Otherwise `label` is exactly `(corrupted != image).any(0)`.
    """
    _, h, w = image.shape
    if not force and rng.random() >= settings.probability:
        return image.clone(), torch.zeros(h, w, dtype=torch.long)
    if box is None:
        box = foreground_box(image) if settings.area_limit else (0, 0, w, h)
    source = remove_black(image) if settings.remove_black else image
    fill, _ = transformed_copy(source, rng)
    shapes = torch.from_numpy(shape_mask((h, w), box, settings.max_shapes, rng))
    changed = (fill - image).abs().amax(dim=0) > settings.min_change
    label = shapes & changed
    corrupted = torch.where(label[None], fill, image)
    return corrupted, label.long()
