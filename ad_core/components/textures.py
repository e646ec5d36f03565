"""Foreign textures for synthetic anomalies (DRAEM-style "simulated" anomalies need an anomaly source image).

DRAEM and PRN's unofficial code draw from the Describable Textures Dataset (DTD, 5,640 photos), which needs a
download. `TextureSource("skimage")` uses photos that ship inside the scikit-image wheel instead (works offline):
`SKIMAGE_TEXTURES`, i.e. the bundled photos that are not demo-dataset classes: brick, grass and gravel (the
default demo classes, whose photos also make its "patch" defects) and moon, coins, camera, coffee, chelsea,
immunohistochemistry and hubble_deep_field (the multi-class demo) are left out, so the generator never paints a
demo class's own appearance or a demo defect texture as an anomaly. `TextureSource(PATH)` uses every image file under a folder (recursively, sorted), e.g. DTD's
`images/` folder, read on demand.

`sample(size, rng)` draws one image, a random square crop covering a fraction U(min_crop, 1) of its shorter
side squared (variety from few photos; DTD users can set min_crop = 1 for the reference's whole image) and
resizes it to size x size: uint8 RGB [size, size, 3].
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SKIMAGE_TEXTURES", "TextureSource"]

SKIMAGE_TEXTURES: tuple[str, ...] = (
    "astronaut", "cell", "clock", "colorwheel", "logo", "microaneurysms", "page", "retina", "rocket", "text",
)  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@cache
def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data as skimage_data

    image = np.asarray(getattr(skimage_data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.ascontiguousarray(image[..., :3].astype(np.uint8))
    image.setflags(write=False)  # shared by the cache
    return image


class TextureSource:
    """Anomaly source images: "skimage" (bundled photos, offline) or a folder of images."""

    def __init__(self, source: str = "skimage"):
        self.source = source
        if source == "skimage":
            self.names: list[str] = list(SKIMAGE_TEXTURES)
        else:
            folder = Path(source).expanduser()
            if not folder.is_dir():
                raise ValueError(f"texture source {source!r} is neither 'skimage' nor a folder")
            self.names = sorted(
                str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not self.names:
                raise ValueError(f"texture source folder {folder} holds no image files")

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        if self.source == "skimage":
            return f"scikit-image bundled photos ({', '.join(self.names)})"
        return f"folder {self.source} ({len(self.names)} images)"

    def image(self, index: int) -> np.ndarray:
        """uint8 RGB [H, W, 3] of image `index`."""
        if self.source == "skimage":
            return _skimage_photo(self.names[index])
        with Image.open(self.names[index]) as img:
            return np.asarray(img.convert("RGB"))

    def sample(self, size: int, rng: np.random.Generator, min_crop: float = 0.25) -> np.ndarray:
        """A random crop of a random image, resized to size x size (uint8 RGB)."""
        image = self.image(int(rng.integers(len(self.names))))
        h, w = image.shape[:2]
        side = max(1, round(min(h, w) * np.sqrt(rng.uniform(min_crop, 1.0))))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(image[top : top + side, left : left + side])
        return np.asarray(crop.resize((size, size), Image.BILINEAR))
