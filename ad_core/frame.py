"""The evaluation frame: on which pixels, at which resolution, every method's anomaly maps are scored.

Methods see different geometries: PatchCore and ReConPatch score a 224 px centre crop of a 256 px resize,
ISSTAD the whole image at 224 px, PRN the whole image at 256 px. Pixel metrics computed in each method's own
geometry are computed on different pixels (a defect in the cropped border is not even in the cropped mask),
so they cannot share a table. The frame is therefore part of the protocol, recorded with every result and
part of every comparability key:

- `full:256` (the default, `DEFAULT_FRAME`): the full image resized to 256 x 256 px, for every method. A
  method's map (in its input geometry: resize R, centre crop C) is put back where its crop came from: the
  map is brought to the crop's C x C pixels of the R-resized image (bilinear, only when the method's map
  has another size), pasted into a canvas of the whole R-resized image filled with *that map's minimum*
  (what the method cut away gets its lowest score: it saw nothing there), and the canvas is resized to
  F x F (bilinear, align_corners=False, as the methods upsample their own maps). Ground-truth masks go from
  full resolution to F x F with nearest neighbour (the rule the native geometry uses, so that native and
  full frames differ only in the frame; area + threshold 0.5 would erase scratches thinner than half a
  frame pixel, i.e. whole defects at 256 px of a 1024 px image). `full:N` is the same frame at N px.
- `native`: each method's own input geometry (the papers' official evaluation: masks resized and cropped
  like the image). Results stored before frames were recorded were evaluated this way and are labelled so.

Why 256 px: the resize of PatchCore/ReConPatch's default geometry (Resize 256 + CenterCrop 224), so their
crop goes back 1:1 (no resampling of the map, only the paste) and the frame holds every pixel they saw at
their own scale; PRN's native geometry (whole image at 256) is the frame itself, so its numbers do not
change; ISSTAD's 224 px map is upsampled by 8/7. 256 x 256 is also the resolution the AUPRO cost was
sized for (`benchmarks/bench_aupro.py`).

Non-square images: the frame is the full image resized to F x F (anisotropically), whatever its aspect
ratio. A method's geometry resizes the shorter side to R and crops C x C in the centre, so its canvas is
R x R' (the longer side scaled alike); the canvas is resized to F x F like the image.

Image scores are the method's own (a method that crops never saw the border; its image score says so);
the frame changes which pixels the pixel metrics (pixel AUROC, AUPRO, pixel F1-max and AP) see.

Pure numpy/torch/PIL; no ad_core imports, so `ad_core.data` can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ad_core.catalog import DEFAULT_FRAME
from ad_core.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

NATIVE = "native"
FULL = "full"
DEFAULT_SIZE = int(DEFAULT_FRAME.partition(":")[2])
# Results stored before the frame was recorded were evaluated in each method's own geometry.
LEGACY_FRAME = NATIVE
MIN_SIZE, MAX_SIZE = 32, 4096


@dataclass(frozen=True)
class EvalFrame:
    """A parsed frame: `full` at `size` px, or `native` (size 0)."""

    kind: str = FULL
    size: int = DEFAULT_SIZE

    @classmethod
    def parse(cls, text: str | None) -> EvalFrame:
        """'full' (= 'full:256'), 'full:N' or 'native'; None = the default. Raises ConfigError otherwise."""
        if text is None:
            return cls()
        value = str(text).strip().lower()
        if value == NATIVE:
            return cls(NATIVE, 0)
        kind, _, size = value.partition(":")
        if kind == FULL:
            try:
                n = int(size) if size else DEFAULT_SIZE
            except ValueError:
                n = -1
            if MIN_SIZE <= n <= MAX_SIZE:
                return cls(FULL, n)
            raise ConfigError(f"frame size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {text!r}")
        raise ConfigError(f"unknown evaluation frame {text!r}; use 'full' (= {DEFAULT_FRAME}), 'full:N' or 'native'")

    @property
    def is_full(self) -> bool:
        return self.kind == FULL

    @property
    def key(self) -> str:
        """What is stored and compared: 'full:256' or 'native'."""
        return f"{FULL}:{self.size}" if self.is_full else NATIVE

    @property
    def label(self) -> str:
        """Short text for selectors and table captions (plain ASCII: LaTeX typesets it unchanged)."""
        return f"full image {self.size}x{self.size}" if self.is_full else "native geometry"

    def describe(self) -> str:
        if self.is_full:
            return (f"every method scored on the full image at {self.size}x{self.size} px; a cropping method's "
                    "map is mapped back and what it cut away gets that image's lowest score")
        return ("each method scored in its own input geometry (resize + centre crop): methods may be scored "
                "on different pixels")


def frame_identity(value: str | None) -> tuple[str, str, str]:
    """(key, label, description) of a stored frame; None (stored before frames existed) = native."""
    try:
        frame = EvalFrame.parse(LEGACY_FRAME if value is None else value)
    except ConfigError:
        return str(value), str(value), f"unknown evaluation frame {value}"
    return frame.key, frame.label, frame.describe()


# --- geometry -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a method's C x C input sits in its resized image: the resized image is `width` x `height`
    pixels and the crop's top-left corner is at (`left`, `top`)."""

    width: int
    height: int
    left: int
    top: int
    crop: int


def placement(image_size: tuple[int, int], resize: int, crop: int) -> Placement:
    """The geometry `ad_core.data.Preprocess` applies to a (W, H) image: shorter side to `resize` (at least
    `crop` px each way), then a centre crop of `crop` x `crop`."""
    w, h = image_size
    scale = resize / min(w, h)
    nw, nh = max(crop, round(w * scale)), max(crop, round(h * scale))
    return Placement(nw, nh, (nw - crop) // 2, (nh - crop) // 2, crop)


def _resize_bilinear(array: Any, height: int, width: int) -> Any:
    import torch.nn.functional as F

    return F.interpolate(array[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]


def map_to_frame(amap: np.ndarray, where: Placement, size: int) -> np.ndarray:
    """One method map ([h, w], the method's input geometry) -> the frame's [size, size] float32 map.

    The map is brought to the crop's C x C pixels (bilinear; nothing happens when it already is C x C),
    pasted at its place into the resized image's canvas filled with the map's minimum, and the canvas is
    resized to size x size (bilinear, align_corners=False; nothing happens when it already is)."""
    import torch

    m = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))
    c = where.crop
    if tuple(m.shape) != (c, c):
        m = _resize_bilinear(m, c, c)
    canvas = torch.full((where.height, where.width), float(m.min()), dtype=torch.float32)
    canvas[where.top : where.top + c, where.left : where.left + c] = m
    if tuple(canvas.shape) != (size, size):
        canvas = _resize_bilinear(canvas, size, size)
    return canvas.numpy().astype(np.float32, copy=False)


def maps_to_frame(maps: np.ndarray, placements: list[Placement], size: int) -> np.ndarray:
    """A batch [N, h, w] with one placement per map -> [N, size, size] float32."""
    if len(maps) != len(placements):
        raise ValueError(f"{len(maps)} maps but {len(placements)} placements")
    if not len(maps):
        return np.zeros((0, size, size), dtype=np.float32)
    return np.stack([map_to_frame(m, p, size) for m, p in zip(maps, placements, strict=True)])


def mask_pixels(mask: Image.Image) -> np.ndarray:
    """A ground-truth mask image of any mode as bool [H, W]: a pixel is anomalous when its value is more than
    half of the largest value in that mask (an all-zero mask is all normal).

    The one reading rule for dataset masks (`ad_core.data.read_mask`) and annotation masks
    (`ad_core.annotations.read_mask_file`). 0/255, 0/254 and 0/1 masks mean the same ground truth (a fixed
    mid-grey threshold read 0/1 masks, which several datasets use, as all-normal without a word). For every
    mask that reaches 255 it is exactly the earlier `> 127` rule, so results stored before it are unchanged,
    anti-aliased or lossy edges included. Colour masks count through their luminance ('L'), so an alpha
    channel never marks pixels; 16-bit masks are clipped to 255 by that conversion, which keeps 0/1 at 0/1.
    """
    values = np.asarray(mask.convert("L"), dtype=np.uint8)
    peak = int(values.max()) if values.size else 0
    return values > peak / 2 if peak else np.zeros(values.shape, dtype=bool)


def mask_to_frame(mask: Image.Image, size: int) -> np.ndarray:
    """A full-resolution binary mask ('L', 0/255) -> bool [size, size] (nearest neighbour)."""
    from PIL import Image

    return np.asarray(mask.resize((size, size), resample=Image.NEAREST), dtype=np.uint8) > 127


def image_to_frame(image: Image.Image, size: int) -> np.ndarray:
    """The full image as the frame shows it: [size, size, 3] uint8 (bilinear), for heatmap overlays."""
    from PIL import Image

    return np.asarray(image.convert("RGB").resize((size, size), resample=Image.BILINEAR), dtype=np.uint8)


__all__ = [
    "DEFAULT_FRAME", "DEFAULT_SIZE", "FULL", "LEGACY_FRAME", "NATIVE", "EvalFrame", "Placement", "frame_identity",
    "image_to_frame", "map_to_frame", "maps_to_frame", "mask_to_frame", "placement",
]
