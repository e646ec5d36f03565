"""A small demo dataset with synthetic defects on real texture photos, generated offline in seconds.

Normal images are random crops of scikit-image's bundled photos (no download needed): the default demo
has three textures (brick, grass, gravel); the multi-class demo (`MULTICLASS_DEMO_CATEGORIES`, for
long-tailed and unified runs) adds seven classes, each its own photo (moon surface, coins, camera,
coffee, chelsea the cat, immunohistochemistry, Hubble deep field); five more photos (`DEMO_PHOTO_CATEGORIES`:
astronaut, rocket, retina, cell, clock) make 15 classes for a benchmark the size of MVTec AD
(`benchmarks/bench_mvtec_sized.py`, with per-class image counts). Test images carry one of four synthetic defects, and every ground-truth mask is exactly
the set of pixels the defect changed, so pixel metrics on this dataset are exact. Written in the MVTec AD
layout and loaded with the generic folder loader (dataset kind "demo").
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .base import CategorySplit, DatasetError
from .folder import FolderLayout, list_layout_categories, load_layout_split

DEMO_CATEGORIES = ("brick", "grass", "gravel")
# The multi-class demo: the default classes first, so every class keeps its random streams (and images).
MULTICLASS_DEMO_CATEGORIES = (*DEMO_CATEGORIES, "moon", "coins", "camera", "coffee", "chelsea",
                              "immunohistochemistry", "hubble_deep_field")
# Every photo the generator knows: the multi-class demo's ten, then five more (15 classes, as MVTec AD has).
DEMO_PHOTO_CATEGORIES = (*MULTICLASS_DEMO_CATEGORIES, "astronaut", "rocket", "retina", "cell", "clock")
DEMO_DEFECT_TYPES = ("scratch", "patch", "stain", "hole")
# Bump whenever the images a given seed produces change, so that existing roots get regenerated.
GENERATOR_VERSION = 1
DATASET_JSON = "dataset.json"

# Fraction of the image a defect may cover: visible, but not trivially huge.
MIN_DEFECT_AREA, MAX_DEFECT_AREA = 0.005, 0.05
# Each changed pixel moves by at least this much (uint8) in some channel, so mask == changed pixels exactly.
_MIN_CHANGE = 20
# The textures are grayscale; a mild per-category tint makes colour matter a little (see the stain defect).
_TINTS = {"brick": (1.0, 0.84, 0.72), "grass": (0.80, 1.0, 0.68), "gravel": (0.90, 0.94, 1.0),
          "moon": (0.95, 0.95, 0.90), "coins": (1.0, 0.92, 0.78), "camera": (0.88, 0.92, 1.0),
          "cell": (0.86, 0.94, 0.96), "clock": (1.0, 0.96, 0.86)}
# Colour photos are used as they are; a foreign-texture patch on them is tinted neutrally.
_NEUTRAL_TINT = (1.0, 1.0, 1.0)
_STAIN_COLOURS = ((0.80, 0.36, 0.08), (0.12, 0.26, 0.85), (0.55, 0.10, 0.55), (0.10, 0.60, 0.20))

# From the docstrings of skimage.data.brick/grass/gravel (scikit-image itself is BSD-3-Clause).
TEXTURE_SOURCES = {
    "brick": "skimage.data.brick(): 'Bricks25' from CC0Textures (https://cc0textures.com/view.php?tex=Bricks25), "
    "Creative Commons CC0 licence",
    "grass": "skimage.data.grass(): 'Grass 01' by linolafett on DeviantArt "
    "(https://www.deviantart.com/linolafett/art/Grass-01-434853879), Creative Commons CC0 licence",
    "gravel": "skimage.data.gravel(): 'Gravel04' from CC0Textures (https://cc0textures.com/view.php?tex=Gravel04), "
    "Creative Commons CC0 licence",
    "moon": "skimage.data.moon(): surface of the moon, distributed with scikit-image (BSD-3-Clause data)",
    "coins": "skimage.data.coins(): Greek coins from Pompeii, Brooklyn Museum Collection, no known copyright "
    "restrictions",
    "camera": "skimage.data.camera(): gray-level camera image, CC0 by the photographer (Lav Varshney)",
    "coffee": "skimage.data.coffee(): coffee cup, courtesy of Pikolo Espresso Bar, CC0 by the photographer "
    "(Rachel Michetti)",
    "chelsea": "skimage.data.chelsea(): Chelsea the cat, CC0 by the photographer (Stefan van der Walt)",
    "immunohistochemistry": "skimage.data.immunohistochemistry(): IHC staining of colonic glands, Center for "
    "Microscopy And Molecular Imaging (CMMI), no known copyright restrictions",
    "hubble_deep_field": "skimage.data.hubble_deep_field(): Hubble eXtreme Deep Field, NASA, public domain",
    "astronaut": "skimage.data.astronaut(): Eileen Collins, NASA Great Images database, no known copyright "
    "restrictions",
    "rocket": "skimage.data.rocket(): DSCOVR launch on Falcon 9, SpaceX Photos, released into the public domain",
    "retina": "skimage.data.retina(): fundus photograph of a normal left eye, Mikael Häggström (Wikimedia), CC0",
    "cell": "skimage.data.cell(): quantitative phase image of a cell in saline (Müller et al. 2018), CC0",
    "clock": "skimage.data.clock(): motion-blurred wall clock, public domain by the photographer (Stefan van der Walt)",
}
LICENSE_NOTE = (
    "The source photos are distributed with scikit-image (BSD-3-Clause) and are CC0, public domain or without "
    "known copyright restrictions (see Sources). The generated images and masks are derived from them and may be used without restriction."
)

DEMO_LAYOUT = FolderLayout(setup_hint="Create it with ad_core.data.make_demo_dataset(root).")

ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class DemoSample:
    """One generated image: `image` equals `clean` except exactly where `mask` is True."""

    clean: np.ndarray  # HxWx3 uint8, the normal image before the defect
    image: np.ndarray  # HxWx3 uint8, what is written to disk
    mask: np.ndarray  # HxW bool


@cache
def _texture(name: str) -> np.ndarray:
    # Imported lazily: skimage is slow to import and only the generator needs it.
    from skimage import data as skimage_data

    texture = np.asarray(getattr(skimage_data, name)(), dtype=np.uint8)
    texture.setflags(write=False)  # shared by the cache
    return texture


def _render_texture(name: str, tint: Sequence[float], size: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a photo (random rotation/flip, mild brightness jitter) as RGB float in [0, 1].

    Grayscale photos are tinted with `tint`; colour photos keep their colours (`tint` is ignored)."""
    texture = _texture(name)
    side = round(min(texture.shape[:2]) * rng.uniform(0.55, 0.75))
    top, left = rng.integers(0, min(texture.shape[:2]) - side + 1, size=2)
    crop = np.rot90(texture[top : top + side, left : left + side], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0
    pixels = pixels * rng.uniform(0.9, 1.1) + rng.uniform(-0.04, 0.04)
    if pixels.ndim == 3:
        return np.clip(pixels[..., :3], 0.0, 1.0)
    return np.clip(pixels[..., None] * np.asarray(tint, dtype=np.float32), 0.0, 1.0)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _draw_mask(size: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _sample_area_checked(make_mask: Callable[[], np.ndarray]) -> np.ndarray:
    """Draw masks until one covers MIN..MAX_DEFECT_AREA of the image (shapes may fall partly outside)."""
    for _ in range(100):
        mask = make_mask()
        if MIN_DEFECT_AREA <= mask.mean() <= MAX_DEFECT_AREA:
            return mask
    raise RuntimeError("could not draw a defect of acceptable size; image_size is probably too small")


def _blob_mask(size: int, rng: np.random.Generator, irregularity: float, n_vertices: int = 64) -> np.ndarray:
    """A rotated ellipse whose radius is perturbed by a few random harmonics (irregularity 0 = ellipse)."""
    radius = size * math.sqrt(rng.uniform(0.008, 0.035) / math.pi)
    aspect = math.sqrt(rng.uniform(1.0, 2.2))
    angle = rng.uniform(0.0, math.pi)
    theta = np.linspace(0.0, 2.0 * math.pi, n_vertices, endpoint=False) + rng.uniform(0.0, 2.0 * math.pi)
    r = np.ones_like(theta)
    for k in (2, 3, 4, 5):
        r += irregularity * rng.uniform(-1.0, 1.0) / k * np.cos(k * theta + rng.uniform(0.0, 2.0 * math.pi))
    r = np.clip(r, 0.3, None)
    x, y = radius * aspect * r * np.cos(theta), radius / aspect * r * np.sin(theta)
    cx, cy = rng.uniform(0.2 * size, 0.8 * size, size=2)
    xs = cx + x * math.cos(angle) - y * math.sin(angle)
    ys = cy + x * math.sin(angle) + y * math.cos(angle)
    return _draw_mask(size, lambda d: d.polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=255))


def _scratch_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A thin polyline of 1-3 segments that bends a little at each joint."""
    width = max(1, round(size / 110)) + int(rng.integers(0, 2))
    length = rng.uniform(0.006, 0.02) * size * size / width
    n_segments = int(rng.integers(1, 4))
    point = rng.uniform(0.15 * size, 0.85 * size, size=2)
    direction = rng.uniform(0.0, 2.0 * math.pi)
    points = [tuple(point.tolist())]
    for _ in range(n_segments):
        direction += rng.uniform(-0.8, 0.8)
        point = point + length / n_segments * np.array([math.cos(direction), math.sin(direction)])
        points.append(tuple(point.tolist()))
    return _draw_mask(size, lambda d: d.line(points, fill=255, width=width, joint="curve"))


def _scratch(clean: np.ndarray, category: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = _sample_area_checked(lambda: _scratch_mask(clean.shape[0], rng))
    value = rng.uniform(0.85, 1.0) if rng.random() < 0.5 else rng.uniform(0.0, 0.12)
    return mask, np.full_like(clean, value)


def _patch(clean: np.ndarray, category: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = _sample_area_checked(lambda: _blob_mask(clean.shape[0], rng, irregularity=0.5))
    # Same tint as the category, so the anomaly is the foreign texture, not its colour.
    foreign = str(rng.choice([c for c in DEMO_CATEGORIES if c != category]))  # one of the three textures
    return mask, _render_texture(foreign, _TINTS.get(category, _NEUTRAL_TINT), clean.shape[0], rng)


def _stain(clean: np.ndarray, category: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import gaussian_filter

    size = clean.shape[0]
    opacity = np.zeros(clean.shape[:2], dtype=np.float32)

    def stain_region() -> np.ndarray:
        nonlocal opacity
        blob = _blob_mask(size, rng, irregularity=0.6).astype(np.float32)
        sigma = max(1.0, 0.25 * math.sqrt(blob.sum() / math.pi))
        opacity = gaussian_filter(blob, sigma=sigma)
        opacity /= max(float(opacity.max()), 1e-6)
        # The stain fades out softly; only where it is strong enough to see does it count as the defect.
        return opacity > 0.3

    mask = _sample_area_checked(stain_region)
    colour = np.asarray(_STAIN_COLOURS[int(rng.integers(len(_STAIN_COLOURS)))], dtype=np.float32)
    alpha = (rng.uniform(0.55, 0.8) * opacity)[..., None]
    luminance = clean.mean(axis=-1, keepdims=True)
    return mask, clean * (1.0 - alpha) + colour * (0.5 + 0.7 * luminance) * alpha


def _hole(clean: np.ndarray, category: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Either a smooth ellipse or a polygon with few corners.
    n_vertices = 64 if rng.random() < 0.5 else int(rng.integers(5, 9))
    irregularity = 0.0 if n_vertices == 64 else 0.25
    mask = _sample_area_checked(lambda: _blob_mask(clean.shape[0], rng, irregularity, n_vertices))
    return mask, 0.03 + 0.15 * clean  # dark, with a faint trace of the texture


_DEFECTS = {"scratch": _scratch, "patch": _patch, "stain": _stain, "hole": _hole}


def _apply_defect(clean: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Copy `target` into `clean` inside `mask` only, making sure every masked pixel really changes."""
    target_u8 = _to_uint8(target)
    change = np.abs(target_u8.astype(np.int16) - clean.astype(np.int16)).max(axis=-1)
    weak = mask & (change < _MIN_CHANGE)
    # Push too-similar pixels away from the nearer end of the range: a channel on the far side always moves.
    push = np.where(clean.mean(axis=-1) > 127, -_MIN_CHANGE, _MIN_CHANGE)[..., None]
    pushed = np.clip(clean.astype(np.int16) + push, 0, 255).astype(np.uint8)
    target_u8[weak] = pushed[weak]
    image = clean.copy()
    image[mask] = target_u8[mask]
    return image


def render_demo_sample(
    category: str, folder: str, index: int, *, seed: int = 0, image_size: int = 256
) -> DemoSample:
    """The `index`-th image of `folder` ("train", "good" for test/good, or a defect type) for this seed.

    Each image has its own random stream keyed by (seed, category, folder, index), so an image does not
    depend on which other categories or how many images were generated.
    """
    folders = ("train", "good", *DEMO_DEFECT_TYPES)
    if category not in DEMO_PHOTO_CATEGORIES:
        raise DatasetError(
            f"unknown demo category {category!r}; valid names: {', '.join(DEMO_PHOTO_CATEGORIES)}")
    if folder not in folders:
        raise ValueError(f"unknown demo folder {folder!r}; expected one of {', '.join(folders)}")
    rng = np.random.default_rng([seed, DEMO_PHOTO_CATEGORIES.index(category), folders.index(folder), index])
    clean = _to_uint8(_render_texture(category, _TINTS.get(category, _NEUTRAL_TINT), image_size, rng))
    if folder in ("train", "good"):
        return DemoSample(clean, clean, np.zeros(clean.shape[:2], dtype=bool))
    mask, target = _DEFECTS[folder](clean.astype(np.float32) / 255.0, category, rng)
    return DemoSample(clean, _apply_defect(clean, target, mask), mask)


def _defect_counts(n_test_defect: int) -> dict[str, int]:
    """Spread the defective test images over the defect types round-robin."""
    n_types = len(DEMO_DEFECT_TYPES)
    return {
        d: n_test_defect // n_types + (k < n_test_defect % n_types) for k, d in enumerate(DEMO_DEFECT_TYPES)
    }


def _read_parameters(root: Path) -> dict | None:
    try:
        return json.loads((root / DATASET_JSON).read_text())["parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _readme(parameters: dict) -> str:
    sources = "\n".join(f"  - {TEXTURE_SOURCES[c]}" for c in parameters["categories"])
    return (
        "IAD Workbench demo dataset\n"
        "==========================\n\n"
        "Synthetic defects on real texture photos, in the MVTec AD layout:\n"
        "  <category>/train/good/NNN.png, <category>/test/good/NNN.png,\n"
        "  <category>/test/<defect>/NNN.png, <category>/ground_truth/<defect>/NNN_mask.png\n\n"
        f"Defect types: {', '.join(DEMO_DEFECT_TYPES)}. Each mask is exactly the set of changed pixels.\n"
        f"Generated by ad_core.data.demo.make_demo_dataset (generator version {GENERATOR_VERSION}) with\n"
        f"{json.dumps(parameters, sort_keys=True)}\n"
        "The same parameters and library versions reproduce byte-identical files.\n\n"
        f"Sources:\n{sources}\n\n"
        f"Licence: {LICENSE_NOTE}\n"
    )


def _count(parameters: dict, key: str, category: str) -> int:
    """An image count of the parameters: one number for every class, or a number per class."""
    value = parameters[key]
    return int(value[category]) if isinstance(value, dict) else int(value)


def _write_dataset(out: Path, parameters: dict, progress: ProgressCallback | None) -> None:
    seed, size = parameters["seed"], parameters["image_size"]
    counts_of = {c: (_count(parameters, "n_train", c), _count(parameters, "n_test_good", c),
                     _defect_counts(_count(parameters, "n_test_defect", c))) for c in parameters["categories"]}
    total = sum(n_train + n_good + sum(d.values()) for n_train, n_good, d in counts_of.values())
    digits = max(3, len(str(max(n_train + n_good + sum(d.values()) for n_train, n_good, d in counts_of.values()))))
    written = 0
    for category in parameters["categories"]:
        n_train, n_good, defect_counts = counts_of[category]
        jobs = [("train", i, Path("train/good")) for i in range(n_train)]
        jobs += [("good", i, Path("test/good")) for i in range(n_good)]
        jobs += [(d, i, Path("test") / d) for d, n in defect_counts.items() for i in range(n)]
        for folder, index, subdir in jobs:
            sample = render_demo_sample(category, folder, index, seed=seed, image_size=size)
            image_path = out / category / subdir / f"{index:0{digits}d}.png"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(sample.image).save(image_path, format="PNG")
            if folder in DEMO_DEFECT_TYPES:
                mask_path = out / category / "ground_truth" / folder / f"{index:0{digits}d}_mask.png"
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(sample.mask.astype(np.uint8) * 255).save(mask_path, format="PNG")
            written += 1
            if progress is not None:
                progress(written / total, f"demo {category}: {subdir / image_path.name}")
    per_class = {c: {"train": n_train, "test/good": n_good} | {f"test/{d}": n for d, n in defects.items()}
                 for c, (n_train, n_good, defects) in counts_of.items()}
    counts = next(iter(per_class.values())) if len({json.dumps(v) for v in per_class.values()}) == 1 else per_class
    (out / "README.txt").write_text(_readme(parameters))
    description = {
        "name": "IAD Workbench demo dataset",
        "layout": "MVTec AD",
        "parameters": parameters,
        "images_per_category": counts,
        "sources": {c: TEXTURE_SOURCES[c] for c in parameters["categories"]},
        "license": LICENSE_NOTE,
    }
    # Written last: its presence marks a complete dataset.
    (out / DATASET_JSON).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")


def _move_into_place(tmp: Path, root: Path, parameters: dict) -> None:
    old = None
    if root.exists():
        old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        root.rename(old)
    try:
        tmp.rename(root)
    except OSError:
        # Another process finished the same dataset first: theirs is as good as ours.
        if _read_parameters(root) != parameters:
            if old is not None and not root.exists():
                old.rename(root)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def make_demo_dataset(
    root: str | Path,
    categories: Sequence[str] = DEMO_CATEGORIES,
    seed: int = 0,
    n_train: int | Mapping[str, int] = 40,
    n_test_good: int | Mapping[str, int] = 10,
    n_test_defect: int | Mapping[str, int] = 20,
    image_size: int = 256,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Generate the demo dataset at `root` (MVTec layout) and return its absolute path.

    `n_test_defect` defective test images per category are spread round-robin over the defect types. Each
    count is one number for every class or a mapping class -> number (e.g. MVTec AD's own sizes).
    Idempotent: a root already generated with the same parameters is left alone; `overwrite=True`
    regenerates it. Files are written to a temporary folder next to `root` and renamed into place, so an
    interrupted run leaves no half-written dataset. `progress(fraction, message)` is called per image;
    for a console bar pass e.g. ``lambda f, m: bar.update(round(f * 100) - bar.n)`` with ``bar = tqdm(total=100)``.
    """
    categories = tuple(dict.fromkeys(categories))
    unknown = [c for c in categories if c not in DEMO_PHOTO_CATEGORIES]
    if unknown or not categories:
        raise DatasetError(
            f"unknown demo categories {unknown}; valid names: {', '.join(DEMO_PHOTO_CATEGORIES)}")
    counts = {}
    for name, value in (("n_train", n_train), ("n_test_good", n_test_good), ("n_test_defect", n_test_defect)):
        if isinstance(value, Mapping):
            missing = [c for c in categories if c not in value]
            if missing:
                raise ValueError(f"{name} gives no count for {', '.join(missing)}")
            counts[name] = {c: int(value[c]) for c in categories}
        else:
            counts[name] = int(value)
    for c in categories:
        n = {k: _count(counts, k, c) for k in counts}
        if seed < 0 or n["n_train"] < 1 or n["n_test_good"] < 0 or n["n_test_defect"] < 0 \
                or n["n_test_good"] + n["n_test_defect"] < 1:
            raise ValueError(
                f"{c}: need seed >= 0, n_train >= 1, n_test_good >= 0, n_test_defect >= 0 and some test images"
            )
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 so that defects can be drawn, got {image_size}")
    parameters = {
        "generator": "ad_core.data.demo",
        "generator_version": GENERATOR_VERSION,
        "categories": list(categories),
        "defect_types": list(DEMO_DEFECT_TYPES),
        "seed": int(seed),
        **counts,
        "image_size": int(image_size),
    }
    root = Path(root).expanduser().absolute()
    if root.exists():
        existing = _read_parameters(root)
        if existing == parameters and not overwrite:
            return root
        if not root.is_dir() or (existing is None and any(root.iterdir())):
            # Never delete a folder we did not generate, even with overwrite=True.
            raise DatasetError(
                f"{root} exists and is not a demo dataset (no readable {DATASET_JSON}); refusing to replace it. "
                "Choose another root or remove it yourself."
            )
        if existing is not None and not overwrite:
            changed = sorted(k for k in parameters if existing.get(k) != parameters[k])
            raise DatasetError(
                f"demo dataset at {root} was generated with different parameters ({', '.join(changed)}); "
                "pass overwrite=True to regenerate it"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_dataset(tmp, parameters, progress)
        _move_into_place(tmp, root, parameters)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def load_demo_split(root: str | Path, category: str) -> CategorySplit:
    return load_layout_split("demo", root, category, DEMO_LAYOUT)


def list_demo_categories(root: str | Path) -> list[str]:
    return list_layout_categories(root, "demo", DEMO_LAYOUT)
