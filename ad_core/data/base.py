"""Dataset records, image/mask reading with clear errors, and the torch dataset used by every method."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ad_core.errors import DatasetError
from ad_core.frame import Placement, mask_pixels, mask_to_frame, placement

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One image of a split. `label` is 0 for normal, 1 for anomalous; `defect_type` is "good" for normal.

    `category` is the class the image belongs to, so that a batch mixing classes (multi-class methods)
    knows what it holds. `annotated`: its label, defect type and mask come from an annotation set
    (`ad_core.annotations.apply_overrides`), not from the dataset's files.
    """

    path: str
    label: int
    defect_type: str
    mask_path: str | None = None
    category: str = ""
    annotated: bool = False


@dataclass
class CategorySplit:
    """Train and test samples of one category of one dataset, as a split recipe made them.

    The loaders return the dataset as downloaded (train = normal images only). A recipe may move labelled
    anomalies into `train` (few-shot) or drop training images (long-tailed); `recipe` records which
    recipe produced the lists (`ad_core.splits.SplitSpec.to_dict()`, seed resolved).
    """

    dataset: str
    category: str
    root: str
    train: list[Sample]
    test: list[Sample]
    # False when the category has no ground-truth masks at all: pixel metrics are then reported as null.
    has_masks: bool = True
    notes: list[str] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=lambda: {"kind": "standard", "seed": None})

    @property
    def train_normal(self) -> list[Sample]:
        return [s for s in self.train if s.label == 0]

    def counts(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "train_anomalous": sum(1 for s in self.train if s.label == 1),
            "test": len(self.test),
            "test_good": sum(1 for s in self.test if s.label == 0),
            "test_anomalous": sum(1 for s in self.test if s.label == 1),
        }

    def relative_paths(self, samples: Iterable[Sample]) -> list[str]:
        """Sorted image paths relative to the dataset root (absolute when outside it)."""
        base = Path(self.root)
        return sorted(
            (Path(s.path).relative_to(base) if Path(s.path).is_relative_to(base) else Path(s.path)).as_posix()
            for s in samples
        )

    def content_hash(self) -> str:
        """SHA-256 over the concrete lists: per part, every image's path relative to the root, size in bytes,
        label, defect type and mask (path + size). Equal hashes = the same files in the same roles.

        Computed from the lists a run actually uses (never from a second reading of the folder). For the
        standard split it equals the hash earlier versions stored, so old and new results stay comparable.
        It is the SHA-256 of `content_lines()` joined (the file list a reproducibility bundle carries).
        """
        return hashlib.sha256("".join(self.content_lines()).encode()).hexdigest()

    def content_lines(self) -> list[str]:
        """The hashed file list, one line per image: `part|path:size|label|defect_type|mask_path:size` (paths
        relative to the root, `-` for no mask), parts train then test, images sorted by path."""
        base = Path(self.root)

        def entry(path: str | None) -> str:
            if path is None:
                return "-"
            p = Path(path)
            rel = p.relative_to(base) if p.is_relative_to(base) else p
            try:
                size = p.stat().st_size
            except OSError as exc:
                raise DatasetError(f"cannot read {p}: {exc}") from exc
            return f"{rel.as_posix()}:{size}"

        return [f"{part}|{entry(s.path)}|{s.label}|{s.defect_type}|{entry(s.mask_path)}\n"
                for part, samples in (("train", self.train), ("test", self.test))
                for s in sorted(samples, key=lambda s: s.path)]


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted by name (hidden files and non-images ignored)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


# 16-bit greyscale PNG/TIFF opens as one of these; Pillow's convert("RGB") clips them to 255 instead of
# scaling, which turns a normal 16-bit image almost white, so they are scaled to 8 bits here first.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _open_decoded(path: str | Path, what: str) -> Image.Image:
    """Open and fully decode an image or mask file; every way it can fail becomes a DatasetError naming it.

    Pillow's own decompression-bomb guard applies (`PIL.Image.MAX_IMAGE_PIXELS`, about 89 million pixels:
    above it Pillow warns, above twice it raises). It raises on the header alone, before any pixel is
    allocated, so a 20,000 x 20,000 file costs nothing but this error.
    """
    try:
        with Image.open(path) as img:
            img.load()  # forces a full decode so that truncated files fail here, not inside a worker later
            return img.copy()
    except FileNotFoundError as exc:
        raise DatasetError(f"{what} file not found: {path}") from exc
    except Image.DecompressionBombError as exc:  # an Exception, not an OSError: caught on its own
        raise DatasetError(
            f"{what} {path} is too large to read safely: {exc} Images this large are refused by Pillow's "
            "decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS); downscale the file or remove it from the split."
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"cannot read {what} {path}: {exc}. The file is corrupt or truncated; replace it or remove it from the split."
        ) from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, the same way for every image of a split.

    Greyscale ('L', '1', 16-bit) is repeated into three channels; 16-bit values are scaled by 1/257 so that
    a 16-bit copy of an 8-bit image (v * 257) reads back exactly as the 8-bit one. Alpha ('RGBA', 'LA', 'P'
    with transparency) is dropped, not composited: the stored colour is the image, as torchvision and the
    MVTec AD tooling read it (`Image.convert("RGB")`). 16-bit RGB PNGs are already reduced to 8 bits by Pillow.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))  # uint8 2-D: 'L'
    return img.convert("RGB")


def read_image(path: str | Path) -> Image.Image:
    """Read an image as 8-bit RGB (`_to_rgb`). Corrupt, truncated or oversized files raise DatasetError."""
    return _to_rgb(_open_decoded(path, "image"))


def read_mask(path: str | Path, expected_size: tuple[int, int]) -> Image.Image:
    """Read a ground-truth mask as a binary 'L' image (0/255) and check it matches its image's size (W, H).

    Pixels above half the mask's own maximum are anomalous (`ad_core.frame.mask_pixels`): masks stored as
    0/255, 0/254 or 0/1 (several datasets use 0/1, which a fixed mid-grey threshold read as all-normal
    without a word) all mean the same ground truth, and 0/255 masks read exactly as before. A mask of another size than its image is an error, never resized: it
    means the ground truth does not line up with the image.
    """
    mask = _open_decoded(path, "mask")
    if mask.size != tuple(expected_size):
        raise DatasetError(
            f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image is {expected_size[0]}x{expected_size[1]}; "
            "masks must have the same size as their image (a wrong-size mask is misaligned ground truth: "
            "fix or replace the mask, or check that it is paired with the right image)"
        )
    return Image.fromarray(mask_pixels(mask).astype(np.uint8) * 255)  # uint8 2-D: mode 'L'


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side, or exact square when `resize_square`) then centre crop to `crop`.

    PatchCore's official protocol is Resize(256) + CenterCrop(224). Masks follow the same geometry with
    nearest-neighbour interpolation so they stay binary (the official code uses bilinear and then keeps
    only pixels that are exactly 1.0, which shrinks masks slightly; we document and avoid that).
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def eval_size(self) -> int:
        return self.crop

    def placement(self, width: int, height: int) -> Placement:
        """Where the crop of a `width` x `height` image sits in its resized image (`ad_core.frame`)."""
        return placement((width, height), self.resize, self.crop)

    def _geometry(self, img: Image.Image, resample: int) -> Image.Image:
        where = self.placement(*img.size)
        img = img.resize((where.width, where.height), resample=resample)
        return img.crop((where.left, where.top, where.left + self.crop, where.top + self.crop))

    def image(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(self._geometry(img, Image.BILINEAR), dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())

    def mask(self, mask: Image.Image) -> torch.Tensor:
        arr = np.asarray(self._geometry(mask, Image.NEAREST), dtype=np.uint8) > 127
        return torch.from_numpy(arr.astype(np.float32))[None]

    def unnormalize(self, image: torch.Tensor) -> np.ndarray:
        """CHW normalised tensor -> HWC uint8 array (for display and artifacts)."""
        arr = image.detach().cpu().numpy().transpose(1, 2, 0) * np.asarray(self.std) + np.asarray(self.mean)
        return (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)


class ImageDataset(torch.utils.data.Dataset):
    """Samples -> dict(image [3,S,S] float, mask [1,S,S] float in {0,1}, label, defect_type, category, path,
    index).

    With `frame_size` (evaluation in a full-image frame, `ad_core.frame`) each item also holds
    `frame_mask` [1,F,F] (the full-resolution mask resized to F x F, nearest neighbour) and `image_size`
    (W, H) of the image as read, from which the runner places the method's map back into the frame."""

    def __init__(self, samples: Sequence[Sample], preprocess: Preprocess, frame_size: int | None = None):
        self.samples = list(samples)
        self.preprocess = preprocess
        self.frame_size = frame_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        img = read_image(sample.path)
        full_mask = None
        if sample.mask_path is not None:
            full_mask = read_mask(sample.mask_path, img.size)
            mask = self.preprocess.mask(full_mask)
        else:
            if sample.label == 1:
                warnings.warn(f"anomalous image {sample.path} has no mask; treating it as all-normal pixels", stacklevel=2)
            size = self.preprocess.eval_size
            mask = torch.zeros(1, size, size)
        item = {
            "image": self.preprocess.image(img),
            "mask": mask,
            "label": sample.label,
            "defect_type": sample.defect_type,
            "category": sample.category,
            "path": sample.path,
            "index": index,
        }
        if self.frame_size is not None:
            f = self.frame_size
            frame_mask = mask_to_frame(full_mask, f) if full_mask is not None else np.zeros((f, f), dtype=bool)
            item["frame_mask"] = torch.from_numpy(frame_mask.astype(np.float32))[None]
            item["image_size"] = torch.tensor(img.size, dtype=torch.int64)
        return item
