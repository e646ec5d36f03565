"""PRN's training anomalies: the k real ones, copy-paste of augmented real anomaly regions into normal images
(inside the object's foreground), and Perlin-shaped regions filled with a foreign texture.

All work happens at the model resolution on RGB images in [0, 1] (numpy [H, W, 3] float32); every random number
comes from one `numpy.random.Generator`, so a seed fixes every generated image.

Epoch composition (`plan_epoch`, as the unofficial xcyao00/PRNet `datasets/mvtec.py`): every normal training
image once; int(`real_slots` x N) "real-derived" slots, the first k x `real_reuse` of them the k real anomalies
in turn (kind "real"), the rest copy-paste anomalies made from them in turn (kind "copy_paste"); and
int(`perlin_slots` x N) texture anomalies on random normal images (kind "perlin"). Shuffled with the generator.

Kinds:
- "real": a labelled anomaly with its ground-truth mask; with `real_jitter` > 0 a mild brightness/contrast
  change (factors U(1 - j, 1 + j)) of the whole image, so that repeated copies are not identical (the reference
  loads them as they are: `real_jitter = 0`). No geometric change: flipping a whole image could itself be an
  anomaly (e.g. a misplaced transistor) while its mask would say "normal".
- "copy_paste": `paste_ops` operations drawn without replacement from {rot90, flip, transpose,
  shift-scale-rotate, Gaussian noise, blur, brightness-contrast, hue-saturation} (the reference draws 3 from a
  similar albumentations list) are applied to a real anomaly and its mask together; the masked pixels are pasted
  onto a random normal image. If at least `paste_inside` (2/3) of the region falls inside that image's
  foreground, it is pasted in place; otherwise every connected component (8-connectivity) is moved so that its
  centroid lands on a random foreground pixel (kept at least half the largest component's extent from the
  border when possible), pixels leaving the image are dropped (reference rule).
- "perlin": DRAEM's recipe (`ad_core.components.perlin_mask`: lattice 2^a x 2^b, a, b in
  [`perlin_min_exponent`, `perlin_max_exponent`), rotation +-90 degrees, threshold 0.5) filled with a texture
  from `ad_core.components.TextureSource` after `texture_ops` (3) operations drawn without replacement from
  {gamma, brightness, sharpness, hue-saturation, solarize, posterize, invert, autocontrast, equalize, rotate}
  (the reference's imgaug list), blended as x' = x (1 - M) + (1 - b) T M + b x M with b ~ U(0, `beta_max`).
  An empty mask is redrawn (up to 10 times; the reference keeps it as a normal sample).

Foreground (`foreground_mask`, replaces the reference's hand-made `fg_mask/` files): Otsu threshold of the grey
image; the side holding at least `border_purity` (90%) of the border pixels is the background; the foreground is
the rest, holes filled, largest 8-connected component. When neither side dominates the border (textures,
objects filling the frame) or the foreground covers under 1% of the image, the whole image is foreground.

Exact labels: for generated kinds the mask is exactly the set of pixels that changed. Pixels inside a pasted or
blended region whose colour moves by at most `min_change` (max over channels) are reset to the clean value and
labelled normal; every other pixel keeps its exact clean value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage

from ad_core.components import TextureSource, perlin_mask

__all__ = [
    "COPY_PASTE_OPS",
    "TEXTURE_OPS",
    "AnomalyGenerator",
    "GenerationSettings",
    "copy_paste",
    "foreground_mask",
    "plan_epoch",
    "texture_anomaly",
]

COPY_PASTE_OPS = (
    "rot90", "flip", "transpose", "shift_scale_rotate", "noise", "blur", "brightness_contrast", "hue_saturation",
)  # fmt: skip
TEXTURE_OPS = (
    "gamma", "brightness", "sharpness", "hue_saturation", "solarize", "posterize", "invert", "autocontrast",
    "equalize", "rotate",
)  # fmt: skip
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class GenerationSettings:
    real_reuse: int = 5
    real_slots: float = 0.5
    perlin_slots: float = 0.5
    real_jitter: float = 0.1
    paste_ops: int = 3
    paste_inside: float = 2 / 3
    foreground: str = "otsu"  # "otsu" | "none"
    border_purity: float = 0.9
    texture_ops: int = 3
    texture_min_crop: float = 0.25
    perlin_min_exponent: int = 0
    perlin_max_exponent: int = 6
    perlin_threshold: float = 0.5
    beta_max: float = 0.8
    min_change: float = 2 / 255


# --- epoch plan -------------------------------------------------------------------------------------------
def plan_epoch(
    n_normal: int, n_anomalies: int, settings: GenerationSettings, rng: np.random.Generator
) -> list[tuple[str, int]]:
    """Shuffled (kind, index) entries of one epoch; index = normal image or real anomaly (-1 for "perlin")."""
    entries = [("normal", i) for i in range(n_normal)]
    if n_anomalies:
        for slot in range(int(settings.real_slots * n_normal)):
            kind = "real" if slot < n_anomalies * settings.real_reuse else "copy_paste"
            entries.append((kind, slot % n_anomalies))
    entries += [("perlin", -1)] * int(settings.perlin_slots * n_normal)
    return [entries[i] for i in rng.permutation(len(entries))]


# --- foreground ---------------------------------------------------------------------------------------------
def foreground_mask(image: np.ndarray, border_purity: float = 0.9) -> np.ndarray:
    """Boolean [H, W] object foreground of an RGB [H, W, 3] image in [0, 1] (see the module docstring)."""
    from skimage.filters import threshold_otsu

    h, w = image.shape[:2]
    everything = np.ones((h, w), dtype=bool)
    gray = image[..., :3] @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    if float(gray.max() - gray.min()) < 1e-6:
        return everything
    bright = gray > threshold_otsu(gray)
    border = np.concatenate([bright[0], bright[-1], bright[1:-1, 0], bright[1:-1, -1]])
    share = float(border.mean())
    if share >= border_purity:
        foreground = ~bright
    elif 1 - share >= border_purity:
        foreground = bright
    else:
        return everything
    foreground = ndimage.binary_fill_holes(foreground)
    labels, count = ndimage.label(foreground, structure=_EIGHT)
    if count == 0:
        return everything
    sizes = np.bincount(labels.ravel())[1:]
    foreground = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    return foreground if foreground.mean() >= 0.01 else everything


# --- exact labels ------------------------------------------------------------------------------------------
def _finish(clean: np.ndarray, changed: np.ndarray, region: np.ndarray, min_change: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep `changed` only inside `region` where it moves by more than min_change; clean pixels elsewhere."""
    moved = np.abs(changed - clean).max(axis=-1) > min_change
    mask = region & moved
    out = clean.copy()
    out[mask] = changed[mask]
    return out, mask


# --- copy-paste ----------------------------------------------------------------------------------------------
def _affine(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shift (+-6.25%), scale (+-20%) and rotate (+-45 degrees) about the centre; zero outside."""
    h, w = mask.shape
    angle = np.deg2rad(rng.uniform(-45, 45))
    scale = rng.uniform(0.8, 1.2)
    shift = rng.uniform(-0.0625, 0.0625, size=2) * (h, w)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - rot @ (centre + shift)
    channels = [ndimage.affine_transform(image[..., c], rot, offset, order=1, mode="constant") for c in range(3)]
    moved = ndimage.affine_transform(mask.astype(np.float32), rot, offset, order=0, mode="constant") > 0.5
    return np.stack(channels, axis=-1).astype(np.float32), moved


def _hsv_shift(image: np.ndarray, hue: float, saturation: float, value: float) -> np.ndarray:
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(np.clip(image, 0, 1))
    hsv[..., 0] = (hsv[..., 0] + hue) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] + saturation, 0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] + value, 0, 1)
    return hsv2rgb(hsv).astype(np.float32)


def augment_anomaly(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, n_ops: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """`n_ops` operations of COPY_PASTE_OPS (drawn without replacement) on an anomaly and its mask together."""
    image, mask = image.astype(np.float32), mask.astype(bool)
    for op in (COPY_PASTE_OPS[i] for i in rng.choice(len(COPY_PASTE_OPS), size=n_ops, replace=False)):
        if op == "rot90":
            k = int(rng.integers(1, 4))
            image, mask = np.rot90(image, k), np.rot90(mask, k)
        elif op == "flip":
            axes = [(0,), (1,), (0, 1)][int(rng.integers(3))]
            image, mask = np.flip(image, axes), np.flip(mask, axes)
        elif op == "transpose":
            image, mask = image.transpose(1, 0, 2), mask.T
        elif op == "shift_scale_rotate":
            image, mask = _affine(image, mask, rng)
        elif op == "noise":
            image = image + rng.normal(0, rng.uniform(10, 50) ** 0.5 / 255, size=image.shape).astype(np.float32)
        elif op == "blur":
            sigma = rng.uniform(0.5, 1.5)
            image = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))
        elif op == "brightness_contrast":
            alpha, beta = 1 + rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2)
            image = image * alpha + beta
        elif op == "hue_saturation":
            image = _hsv_shift(image, rng.uniform(-20, 20) / 360, rng.uniform(-30, 30) / 255, rng.uniform(-20, 20) / 255)
        image = np.clip(np.ascontiguousarray(image), 0, 1).astype(np.float32)
        mask = np.ascontiguousarray(mask)
    return image, mask


def copy_paste(
    anomaly: np.ndarray,
    anomaly_mask: np.ndarray,
    target: np.ndarray,
    target_foreground: np.ndarray,
    rng: np.random.Generator,
    settings: GenerationSettings = GenerationSettings(),
) -> tuple[np.ndarray, np.ndarray] | None:
    """Paste an augmented real anomaly region onto `target` (module docstring); None when nothing changes."""
    image, mask = augment_anomaly(anomaly, anomaly_mask, rng, settings.paste_ops)
    if not mask.any():
        return None
    h, w = mask.shape
    region = np.zeros((h, w), dtype=bool)
    pasted = target.copy()
    if (mask & target_foreground).sum() >= settings.paste_inside * mask.sum():
        pasted[mask] = image[mask]
        region = mask
    else:
        labels, count = ndimage.label(mask, structure=_EIGHT)
        boxes = ndimage.find_objects(labels)
        max_h = max(b[0].stop - b[0].start for b in boxes)
        max_w = max(b[1].stop - b[1].start for b in boxes)
        allowed = target_foreground.copy()
        inner = np.zeros_like(allowed)
        inner[max_h // 2 : h - max_h // 2, max_w // 2 : w - max_w // 2] = True
        if (allowed & inner).any():
            allowed &= inner
        ys, xs = np.nonzero(allowed)
        for index in range(1, count + 1):
            cy, cx = np.nonzero(labels == index)
            pick = int(rng.integers(len(ys)))
            dy, dx = ys[pick] - int(round(cy.mean())), xs[pick] - int(round(cx.mean()))
            ty, tx = cy + dy, cx + dx
            keep = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
            pasted[ty[keep], tx[keep]] = image[cy[keep], cx[keep]]
            region[ty[keep], tx[keep]] = True
    out, label = _finish(target, pasted, region, settings.min_change)
    return (out, label) if label.any() else None


# --- texture (Perlin) anomalies ---------------------------------------------------------------------------------
def augment_texture(texture: np.ndarray, rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
    """`n_ops` operations of TEXTURE_OPS (drawn without replacement) on a uint8 RGB texture -> float [0, 1]."""
    img = Image.fromarray(texture)
    for op in (TEXTURE_OPS[i] for i in rng.choice(len(TEXTURE_OPS), size=n_ops, replace=False)):
        if op == "gamma":  # per channel, gamma in [0.5, 2]
            bands = [
                band.point([round(255 * (v / 255) ** g) for v in range(256)])
                for band, g in zip(img.split(), rng.uniform(0.5, 2.0, size=3), strict=True)
            ]
            img = Image.merge("RGB", bands)
        elif op == "brightness":  # multiply [0.8, 1.2], add [-30, 30]
            arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30)
            img = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
        elif op == "sharpness":
            img = ImageEnhance.Sharpness(img).enhance(rng.uniform(0.0, 2.0))
        elif op == "hue_saturation":  # add [-50, 50] to hue and saturation (uint8 HSV)
            h, s, v = (np.asarray(b, dtype=np.int16) for b in img.convert("HSV").split())
            h = (h + int(rng.integers(-50, 51))) % 256
            s = np.clip(s + int(rng.integers(-50, 51)), 0, 255)
            hsv = np.stack([h, s, v], axis=-1).astype(np.uint8)
            img = Image.fromarray(hsv, mode="HSV").convert("RGB")
        elif op == "solarize":
            img = ImageOps.solarize(img, threshold=int(rng.integers(32, 129)))
        elif op == "posterize":
            img = ImageOps.posterize(img, bits=int(rng.integers(1, 9)))
        elif op == "invert":
            img = ImageOps.invert(img)
        elif op == "autocontrast":
            img = ImageOps.autocontrast(img)
        elif op == "equalize":
            img = ImageOps.equalize(img)
        elif op == "rotate":
            img = img.rotate(float(rng.uniform(-45, 45)), resample=Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def texture_anomaly(
    target: np.ndarray,
    texture: np.ndarray,
    rng: np.random.Generator,
    settings: GenerationSettings = GenerationSettings(),
) -> tuple[np.ndarray, np.ndarray] | None:
    """Blend a float texture [H, W, 3] into `target` inside a Perlin mask; None when nothing changes."""
    h, w = target.shape[:2]
    for _ in range(10):
        region = perlin_mask(
            (h, w), rng, settings.perlin_min_exponent, settings.perlin_max_exponent, settings.perlin_threshold
        )
        if region.any():
            break
    else:
        return None
    beta = float(rng.uniform(0, settings.beta_max))
    blended = (1 - beta) * texture + beta * target
    out, label = _finish(target, blended.astype(np.float32), region, settings.min_change)
    return (out, label) if label.any() else None


# --- the generator over one class's training data ---------------------------------------------------------------
@dataclass
class Generated:
    image: np.ndarray  # [H, W, 3] float in [0, 1]
    mask: np.ndarray  # [H, W] bool
    kind: str  # "normal" | "real" | "copy_paste" | "perlin"
    base: int  # index of the normal image it was made from (-1 for real anomalies)


class AnomalyGenerator:
    """Makes the training samples of one class: its normal images, real anomalies and generated anomalies."""

    def __init__(
        self,
        normals: np.ndarray,
        anomalies: np.ndarray,
        anomaly_masks: np.ndarray,
        settings: GenerationSettings,
        textures: TextureSource,
    ):
        self.normals = normals.astype(np.float32)  # [N, H, W, 3]
        self.anomalies = anomalies.astype(np.float32)  # [k, H, W, 3]
        self.anomaly_masks = anomaly_masks.astype(bool)  # [k, H, W]
        self.settings = settings
        self.textures = textures
        if settings.foreground == "otsu":
            self.foregrounds = np.stack([foreground_mask(x, settings.border_purity) for x in self.normals])
        else:
            self.foregrounds = np.ones(self.normals.shape[:3], dtype=bool)
        self.counts: dict[str, int] = {"normal": 0, "real": 0, "copy_paste": 0, "perlin": 0, "fallback_perlin": 0,
                                       "left_normal": 0}  # fmt: skip

    def foreground_share(self) -> float:
        """Mean fraction of a normal image that counts as foreground (1.0 = whole image)."""
        return float(self.foregrounds.mean())

    def plan(self, rng: np.random.Generator) -> list[tuple[str, int]]:
        return plan_epoch(len(self.normals), len(self.anomalies), self.settings, rng)

    def make(self, kind: str, index: int, rng: np.random.Generator) -> Generated:
        s = self.settings
        size = self.normals.shape[1]
        if kind == "normal":
            self.counts["normal"] += 1
            return Generated(self.normals[index], np.zeros(self.normals.shape[1:3], bool), "normal", index)
        if kind == "real":
            self.counts["real"] += 1
            image = self.anomalies[index]
            if s.real_jitter > 0:
                contrast, brightness = rng.uniform(1 - s.real_jitter, 1 + s.real_jitter, size=2)
                mean = image.mean(axis=(0, 1), keepdims=True)
                image = np.clip((image - mean) * contrast + mean * brightness, 0, 1).astype(np.float32)
            return Generated(image, self.anomaly_masks[index], "real", -1)
        base = int(rng.integers(len(self.normals)))
        if kind == "copy_paste":
            made = copy_paste(
                self.anomalies[index], self.anomaly_masks[index], self.normals[base], self.foregrounds[base], rng, s
            )
            if made is not None:
                self.counts["copy_paste"] += 1
                return Generated(made[0], made[1], "copy_paste", base)
            self.counts["fallback_perlin"] += 1
        texture = augment_texture(self.textures.sample(size, rng, s.texture_min_crop), rng, s.texture_ops)
        made = texture_anomaly(self.normals[base], texture, rng, s)
        if made is None:
            self.counts["left_normal"] += 1
            return Generated(self.normals[base], np.zeros(self.normals.shape[1:3], bool), "normal", base)
        self.counts["perlin"] += 1
        return Generated(made[0], made[1], "perlin", base)
