"""Annotation: the pure parts (no database, no files outside what the caller names).

- **Masks from a drawing** (`compose_mask`): the canvas of the Annotate page returns its drawing layer as RGBA
  at display size; paint strokes (red, `PAINT_RGB`) add to the mask, eraser strokes (cyan, `ERASE_RGB`) remove
  from it, and what was not touched keeps the mask the drawing started from (the current ground truth or a
  model pre-fill). The top-most stroke wins where strokes overlap (the browser composited them).
- **Pre-fill** (`map_on_image`, `prefill_mask`, `f1_optimal_threshold`): a run's stored anomaly map brought
  back onto the full image and thresholded.
- **Ground truth of an image** (`GroundTruth`) and of a set of images (`gt_version_key`, a content hash;
  `DEFAULT_GT_VERSION` is the dataset as downloaded), applied to a split (`apply_overrides`).
- **MVTec AD layout export / import** (`export_mvtec`, `read_mvtec_export`): `<category>/test/<defect>/<image>`,
  `<category>/ground_truth/<defect>/<stem>_mask.png`, optionally `<category>/train/good/`, and a manifest
  (`annotation_set.json`) that maps every exported image back to its path in the dataset.
- **Queue helpers** (`disagreement`): which images the methods of several runs rank most differently.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ad_core.errors import AnnotationError

if TYPE_CHECKING:  # ad_core.data imports torch; this module stays light (db.models imports it)
    from ad_core.data.base import CategorySplit, Sample

# = ad_core.data.base.IMAGE_SUFFIXES (a test keeps them equal)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# The ground truth of results that never saw an annotation set: the dataset's own files. Metric rows carry it
# as their `gt_version`, so results stored before annotation existed need no change.
DEFAULT_GT_VERSION = "dataset"
DEFAULT_GT_LABEL = "dataset as downloaded"
GT_PREFIX = "ann-"
MANIFEST = "annotation_set.json"
EXPORT_FORMAT = "iad-annotation-set-1"

# Drawing colours of the Annotate page's canvas (RGB); `compose_mask` tells them apart by R > B.
PAINT_RGB = (255, 40, 40)
ERASE_RGB = (30, 210, 255)
# Below this stroke alpha, a paint stroke over an eraser stroke (or the reverse) can no longer be told apart.
MIN_STROKE_ALPHA = 0.55

SOURCES = ("drawn", "prefill", "imported", "revert")
_DEFECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# --- masks ----------------------------------------------------------------------------------------------------


def compose_mask(
    base: np.ndarray | None,
    drawing: np.ndarray | None,
    size: tuple[int, int],
    stroke_alpha: float = 0.7,
) -> np.ndarray:
    """The mask (bool [H, W], `size` = (W, H)) of a drawing made over `base`.

    `drawing` is the canvas's RGBA layer (uint8 [h, w, 4], any display size: it is mapped onto the image's
    pixels). A canvas pixel counts as marked when its alpha is at least half of `stroke_alpha` (anti-aliased
    stroke edges with less coverage do not count); a marked pixel paints when its red exceeds its blue, else it
    erases. An image pixel becomes 1 when at least half of the canvas area over it paints, 0 when at least
    half erases, and keeps `base` otherwise (`base` None = empty)."""
    width, height = size
    out = np.zeros((height, width), dtype=bool) if base is None else np.asarray(base, dtype=bool).copy()
    if out.shape != (height, width):
        raise AnnotationError(f"the starting mask is {out.shape[1]}x{out.shape[0]} but the image is {width}x{height}")
    if drawing is None:
        return out
    rgba = np.asarray(drawing)
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise AnnotationError(f"a drawing must be RGBA [h, w, 4], got shape {rgba.shape}")
    if not 0 < stroke_alpha <= 1:
        raise AnnotationError(f"stroke alpha must be in (0, 1], got {stroke_alpha}")
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    marked = alpha >= 0.5 * stroke_alpha
    red, blue = rgba[..., 0].astype(np.int16), rgba[..., 2].astype(np.int16)
    paint = (marked & (red > blue)).astype(np.float32)
    erase = (marked & (red <= blue)).astype(np.float32)

    def area(layer: np.ndarray) -> np.ndarray:
        if layer.shape == (height, width):
            return layer
        return np.asarray(Image.fromarray(layer, mode="F").resize((width, height), resample=Image.BOX))

    painted, erased = area(paint), area(erase)
    out[erased >= 0.5] = False
    out[painted >= 0.5] = True
    return out


def mask_to_png(mask: np.ndarray) -> bytes:
    """A bool mask as a 1-channel PNG of 0/255 (the MVTec AD convention)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def read_mask_file(path: str | Path | IO[bytes]) -> np.ndarray:
    """A mask image (any mode) as bool [H, W], read as `ad_core.data.read_mask` reads dataset masks
    (`ad_core.frame.mask_pixels`: above half the mask's maximum is defect, so 0/1 and 0/255 agree)."""
    from ad_core.frame import mask_pixels

    try:
        with Image.open(path) as img:
            img.load()
            return mask_pixels(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise AnnotationError(f"cannot read mask {getattr(path, 'name', path)}: {exc}") from exc


def mask_digest(mask: np.ndarray | None) -> str | None:
    """SHA-256 of a mask's pixels (shape + packed bits; independent of how the PNG was encoded)."""
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    return hashlib.sha256(f"{mask.shape[0]}x{mask.shape[1]}:".encode() + np.packbits(mask).tobytes()).hexdigest()


def image_size(path: str | Path) -> tuple[int, int]:
    """(W, H) of an image file, reading only its header. AnnotationError when it is missing or unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError as exc:
        raise AnnotationError(f"image {path} no longer exists") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise AnnotationError(f"cannot read image {path}: {exc}") from exc


def check_label(label: int, defect_type: str, mask: np.ndarray | None) -> tuple[int, str]:
    """Validated (label, defect type): good images are 'good' and carry no defect pixels; a defect needs a
    defect type that can name a folder (letters, digits, _ . -)."""
    if label not in (0, 1):
        raise AnnotationError(f"label must be 0 (good) or 1 (defect), got {label!r}")
    if label == 0:
        if mask is not None and np.asarray(mask).any():
            raise AnnotationError("a good image cannot have defect pixels: erase the mask or label the image as a defect")
        return 0, "good"
    defect = (defect_type or "").strip()
    if not defect or defect == "good":
        raise AnnotationError("a defect needs a defect type (e.g. scratch); 'good' is the label of normal images")
    if not _DEFECT_NAME.match(defect):
        raise AnnotationError(f"defect type {defect!r} must start with a letter or digit and use only letters, digits, "
                              "_ . - (it names a folder in MVTec layout), at most 64 characters")
    return 1, defect


def check_mask_size(mask: np.ndarray | None, size: tuple[int, int], what: str = "the mask") -> None:
    """AnnotationError unless `mask` (bool [H, W]) fits an image of `size` = (W, H)."""
    if mask is None:
        return
    h, w = np.asarray(mask).shape[:2]
    if (w, h) != tuple(size):
        raise AnnotationError(f"{what} is {w}x{h} but its image is {size[0]}x{size[1]}; masks must have the size "
                              "of their image")


def relative_image_path(root: str | Path, path: str | Path) -> str:
    """`path` (absolute, or relative to `root`) as a POSIX path relative to the dataset root. AnnotationError when
    it leaves the root (absolute elsewhere, `..`, a symlink out) or is not an image file name."""
    base = Path(root).expanduser().resolve()
    candidate = Path(path)
    full = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not full.is_relative_to(base):
        raise AnnotationError(f"{path} is outside the dataset root {base}; only images of the dataset can be annotated")
    if full.suffix.lower() not in IMAGE_SUFFIXES:
        raise AnnotationError(f"{path} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
    return full.relative_to(base).as_posix()


# --- pre-fill from a run's anomaly map ---------------------------------------------------------------------------


def map_on_image(amap: np.ndarray, frame: str, size: tuple[int, int], resize: int = 256, crop: int = 224) -> np.ndarray:
    """A stored anomaly map (in its job's evaluation frame) as float32 [H, W] over the full image of `size` =
    (W, H): a full-image frame is resized (bilinear); a native map (the method's centre crop) is first put back
    where its crop came from, the cut-away border at the map's minimum."""
    from ad_core.frame import EvalFrame, map_to_frame, placement

    width, height = size
    amap = np.asarray(amap, dtype=np.float32)
    if not EvalFrame.parse(frame).is_full:
        side = max(width, height)
        amap = map_to_frame(amap, placement(size, resize, crop), side)
    return np.asarray(Image.fromarray(amap, mode="F").resize((width, height), resample=Image.BILINEAR), dtype=np.float32)


def prefill_mask(amap: np.ndarray, threshold: float, frame: str, size: tuple[int, int], resize: int = 256,
                 crop: int = 224) -> np.ndarray:
    """Pixels of the image whose map value is at least `threshold` (bool [H, W])."""
    return map_on_image(amap, frame, size, resize, crop) >= threshold


def f1_optimal_threshold(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """The score threshold with the best F1 (predict defect when score >= threshold) over all given items
    (images: labels and image scores; pixels: masks and maps, flattened). None without positives."""
    truth = np.asarray(truth, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = int(truth.sum())
    if positives == 0 or len(scores) == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], truth[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    ends = np.r_[np.nonzero(np.diff(ranked))[0], len(ranked) - 1]  # last index of each distinct score
    f1 = 2 * tp[ends] / (tp[ends] + fp[ends] + positives)
    return float(ranked[ends[int(np.argmax(f1))]])


def disagreement(scores: Mapping[Any, Mapping[str, float]]) -> dict[str, float]:
    """How differently runs rank each image: per run, each image's score becomes its rank fraction among the
    images that run scored (0 = lowest, 1 = highest); per image, the spread (max - min) of those fractions over
    the runs that scored it. `scores`: run -> image -> score. Images scored by fewer than two runs get 0."""
    fractions: dict[str, list[float]] = {}
    for per_image in scores.values():
        if not per_image:
            continue
        names = list(per_image)
        values = np.asarray([per_image[n] for n in names], dtype=np.float64)
        ranks = values.argsort(kind="stable").argsort(kind="stable").astype(np.float64)
        ranks /= max(len(values) - 1, 1)
        for name, r in zip(names, ranks, strict=True):
            fractions.setdefault(name, []).append(float(r))
    return {name: (max(f) - min(f)) if len(f) > 1 else 0.0 for name, f in fractions.items()}


# --- ground truth of images and of a set ---------------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruth:
    """What is true of one image: label, defect type and its defect pixels, identified by `mask_sha256`
    (`mask_digest`; None = no defect pixels: a good image, or a defect labelled at image level only). The
    pixels are in `mask` when at hand, else in `mask_file` (an image file, read on demand)."""

    label: int
    defect_type: str
    mask_sha256: str | None = None
    mask_file: str | None = None
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, label: int, defect_type: str, mask: np.ndarray | None, mask_file: str | None = None) -> GroundTruth:
        """Validated (`check_label`); an all-zero mask counts as no mask."""
        label, defect_type = check_label(label, defect_type, mask)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if not mask.any():
                mask = None
        return cls(label, defect_type, mask_digest(mask), mask_file if mask is not None else None, mask)

    @property
    def has_pixels(self) -> bool:
        return self.mask_sha256 is not None

    def pixels(self, size: tuple[int, int]) -> np.ndarray:
        """The defect pixels as bool [H, W] for an image of `size` = (W, H) (zeros when there are none)."""
        if not self.has_pixels:
            return np.zeros((size[1], size[0]), dtype=bool)
        mask = self.mask if self.mask is not None else read_mask_file(str(self.mask_file))
        check_mask_size(mask, size)
        return mask

    def same_as(self, other: GroundTruth) -> bool:
        """Equal label, defect type and defect pixels."""
        return (self.label, self.defect_type, self.mask_sha256) == (other.label, other.defect_type, other.mask_sha256)

    def line(self, path: str) -> str:
        return f"{path}|{self.label}|{self.defect_type}|{self.mask_sha256 or '-'}\n"


def gt_version_key(entries: Mapping[str, GroundTruth]) -> str:
    """The ground-truth version of a dataset with these annotations (relative path -> ground truth, only the
    images whose ground truth differs from the dataset's files): `ann-` + 16 hex digits of the SHA-256 over
    the sorted entries. No entries = the dataset as downloaded (`DEFAULT_GT_VERSION`)."""
    if not entries:
        return DEFAULT_GT_VERSION
    text = "".join(entries[p].line(p) for p in sorted(entries))
    return GT_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:16]


def ground_truth_doc(version: str, label: str, entries: Mapping[str, GroundTruth]) -> dict[str, Any]:
    """A ground-truth version as plain JSON data, for a run (`ad_core.runner.RunSpec.ground_truth`): its key,
    a label for people, and per relative path the label, defect type, mask file and mask digest."""
    return {"version": version, "label": label, "entries": {
        path: {"label": gt.label, "defect_type": gt.defect_type, "mask_file": gt.mask_file,
               "mask_sha256": gt.mask_sha256} for path, gt in sorted(entries.items())}}


def ground_truth_entries(doc: Mapping[str, Any]) -> dict[str, GroundTruth]:
    """Inverse of `ground_truth_doc`. Raises AnnotationError when the entries do not hash to the version they
    claim (the set changed after the job was planned, or the document was edited by hand), or when a mask
    file is missing."""
    try:
        entries = {str(p): GroundTruth(int(e["label"]), str(e["defect_type"]), e.get("mask_sha256"), e.get("mask_file"))
                   for p, e in dict(doc["entries"]).items()}
        version = str(doc["version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(f"malformed ground-truth document ({exc}); expected version, label and entries") from exc
    actual = gt_version_key(entries)
    if actual != version:
        raise AnnotationError(f"the ground truth {doc.get('label') or version} should hash to {version} but its "
                              f"entries hash to {actual}: the annotation set changed since the run was planned; "
                              "submit the run again")
    missing = [gt.mask_file for gt in entries.values() if gt.has_pixels and not (gt.mask_file and Path(gt.mask_file).is_file())]
    if missing:
        raise AnnotationError(f"mask file {missing[0]} of ground truth {doc.get('label') or version} is missing "
                              f"({len(missing)} in all); is IAD_ARTIFACTS the artifact store the annotations were saved to?")
    return entries


def dataset_ground_truth(sample: Sample) -> GroundTruth:
    """The ground truth the dataset's own files give one sample (its mask read from disk)."""
    mask = None
    if sample.mask_path is not None:
        mask = read_mask_file(sample.mask_path)
    return GroundTruth.of(sample.label, sample.defect_type, mask, sample.mask_path)


def split_relative(split: CategorySplit, sample: Sample) -> str:
    base = Path(split.root)
    p = Path(sample.path)
    return (p.relative_to(base) if p.is_relative_to(base) else p).as_posix()


def apply_overrides(split: CategorySplit, overrides: Mapping[str, GroundTruth]) -> CategorySplit:
    """`split` with the test images named in `overrides` (paths relative to the root) relabelled: label, defect
    type and mask file (`GroundTruth.mask_file`, None = no mask). Overrides of images that are not test images
    of this split are ignored (other categories, training images). The category counts as having masks when
    it had them or when every anomalous test image now has one."""
    if not overrides:
        return split
    test = []
    for sample in split.test:
        gt = overrides.get(split_relative(split, sample))
        if gt is None:
            test.append(sample)
            continue
        if gt.has_pixels and gt.mask_file is None:
            raise AnnotationError(f"the annotation of {sample.path} has a mask but no mask file")
        test.append(replace(sample, label=gt.label, defect_type=gt.defect_type, mask_path=gt.mask_file, annotated=True))
    has_masks = split.has_masks or all(s.mask_path is not None for s in test if s.label == 1)
    return replace(split, test=test, has_masks=has_masks)


# --- MVTec AD layout export / import -------------------------------------------------------------------------


@dataclass
class ExportEntry:
    """One exported test image: where it went, where it came from, its ground truth."""

    path: str  # in the export, e.g. bottle/test/broken_large/000.png
    source: str  # relative to the dataset root
    label: int
    defect_type: str
    mask: str | None  # in the export (None: no mask)
    mask_sha256: str | None
    annotated: bool  # the ground truth comes from an annotation (not the dataset's files)


def _unique(taken: set[str], folder: str, name: str, prefix: str) -> str:
    candidate = f"{folder}/{name}"
    n = 0
    while candidate in taken:
        n += 1
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate = f"{folder}/{prefix}_{stem}{suffix}" if n == 1 else f"{folder}/{prefix}_{stem}_{n}{suffix}"
    taken.add(candidate)
    return candidate


def export_mvtec(
    splits: Mapping[str, CategorySplit],
    overrides: Mapping[str, GroundTruth],
    target: str | Path | IO[bytes],
    info: Mapping[str, Any] | None = None,
    include_train: bool = True,
) -> dict[str, Any]:
    """Write the categories of `splits` with `overrides` applied as a zip in MVTec AD layout; return the manifest.

    Test images go to `<category>/test/<defect>/` (a relabelled image moves to its new defect's folder; a name
    already taken there gets its old folder as prefix), masks to `<category>/ground_truth/<defect>/<stem>_mask.png`
    (binary 0/255; a defect without a mask gets an empty mask so that the layout loads, and the manifest says
    it has none), training images to `<category>/train/good/` (`include_train`). The manifest
    (`annotation_set.json`) holds `info`, the ground-truth version key and one entry per test image."""
    entries: list[ExportEntry] = []
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for category in sorted(splits):
            split = splits[category]
            taken: set[str] = set()
            if include_train:
                for sample in sorted(split.train_normal, key=lambda s: s.path):
                    name = _unique(taken, f"{category}/train/good", Path(sample.path).name, "train")
                    zf.write(sample.path, name)
            for sample in sorted(split.test, key=lambda s: s.path):
                rel = split_relative(split, sample)
                gt = overrides.get(rel)
                annotated = gt is not None
                if gt is None:
                    gt = dataset_ground_truth(sample)
                old_folder = PurePosixPath(rel).parent.name
                image_name = _unique(taken, f"{category}/test/{gt.defect_type}", Path(sample.path).name, old_folder)
                zf.write(sample.path, image_name)
                mask_name = None
                if gt.label == 1:
                    mask_name = f"{category}/ground_truth/{gt.defect_type}/{PurePosixPath(image_name).stem}_mask.png"
                    zf.writestr(mask_name, mask_to_png(gt.pixels(image_size(sample.path))))
                entries.append(ExportEntry(image_name, rel, gt.label, gt.defect_type,
                                           mask_name if gt.has_pixels else None, gt.mask_sha256, annotated))
        manifest = {
            "format": EXPORT_FORMAT,
            **dict(info or {}),
            "categories": sorted(splits),
            "gt_version": gt_version_key(overrides),
            "entries": [e.__dict__ for e in entries],
        }
        zf.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


@dataclass
class ImportedEntry:
    source: str  # image path relative to the dataset root
    label: int
    defect_type: str
    mask: np.ndarray | None
    annotated: bool = True


@dataclass
class ImportedSet:
    info: dict[str, Any]
    entries: list[ImportedEntry]


class _Reader:
    """Files of a zip or a folder by POSIX path."""

    def __init__(self, source: str | Path | IO[bytes]):
        self.zip: zipfile.ZipFile | None = None
        self.folder: Path | None = None
        if isinstance(source, (str, Path)) and Path(source).is_dir():
            self.folder = Path(source)
        else:
            try:
                self.zip = zipfile.ZipFile(source)
            except (zipfile.BadZipFile, OSError) as exc:
                raise AnnotationError(f"{getattr(source, 'name', source)} is neither a folder nor a zip file: {exc}") from exc
        names = (self.zip.namelist() if self.zip is not None
                 else [p.relative_to(self.folder).as_posix() for p in sorted(self.folder.rglob("*")) if p.is_file()])
        self.names = [n for n in names if not n.endswith("/")]
        # An archive may wrap everything in one top folder: look through it.
        self.prefix = ""
        if MANIFEST not in self.names:
            tops = {n.split("/", 1)[0] for n in self.names}
            if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST}" in self.names:
                self.prefix = next(iter(tops)) + "/"

    def has(self, name: str) -> bool:
        return self.prefix + name in self.names

    def open(self, name: str) -> IO[bytes]:
        if self.zip is not None:
            return io.BytesIO(self.zip.read(self.prefix + name))
        assert self.folder is not None
        return open(self.folder / (self.prefix + name), "rb")

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def read_mvtec_export(source: str | Path | IO[bytes]) -> ImportedSet:
    """Read an annotation set in MVTec AD layout (a zip or a folder).

    With a manifest (`export_mvtec`'s `annotation_set.json`), every entry maps back to its image in the dataset
    (`source`) with its label, defect type and mask. Without one, the layout itself is read: every image under
    `<category>/test/<defect>/` is taken to live at the same relative path in the dataset, `good` is label 0,
    any other folder a defect with the mask `<category>/ground_truth/<defect>/<stem>_mask.png` (none if absent).
    AnnotationError when the manifest points at files the archive does not hold."""
    reader = _Reader(source)
    try:
        if reader.has(MANIFEST):
            try:
                manifest = json.load(reader.open(MANIFEST))
            except (ValueError, UnicodeDecodeError) as exc:
                raise AnnotationError(f"{MANIFEST} is not valid JSON: {exc}") from exc
            if manifest.get("format") != EXPORT_FORMAT:
                raise AnnotationError(f"{MANIFEST} has format {manifest.get('format')!r}; this version reads {EXPORT_FORMAT}")
            entries = []
            for e in manifest.get("entries", []):
                mask = None
                if e.get("mask"):
                    if not reader.has(e["mask"]):
                        raise AnnotationError(f"the manifest names mask {e['mask']} but the archive does not hold it")
                    mask = read_mask_file(reader.open(e["mask"]))
                entries.append(ImportedEntry(str(e["source"]), int(e["label"]), str(e["defect_type"]), mask,
                                             bool(e.get("annotated", True))))
            info = {k: v for k, v in manifest.items() if k != "entries"}
            return ImportedSet(info, entries)
        entries = []
        pattern = re.compile(r"^([^/]+)/test/([^/]+)/([^/]+)$")
        for name in reader.names:
            m = pattern.match(name[len(reader.prefix):]) if name.startswith(reader.prefix) else None
            if not m or Path(name).suffix.lower() not in IMAGE_SUFFIXES or Path(name).name.startswith("."):
                continue
            category, defect, image = m.groups()
            rel = f"{category}/test/{defect}/{image}"
            if defect == "good":
                entries.append(ImportedEntry(rel, 0, "good", None))
                continue
            mask_name = f"{category}/ground_truth/{defect}/{Path(image).stem}_mask.png"
            mask = read_mask_file(reader.open(mask_name)) if reader.has(mask_name) else None
            entries.append(ImportedEntry(rel, 1, defect, mask))
        if not entries:
            raise AnnotationError("no images found: expected <category>/test/<defect>/<image> (MVTec AD layout) or an "
                                  f"{MANIFEST}")
        return ImportedSet({}, entries)
    finally:
        reader.close()


def iter_test_samples(splits: Iterable[CategorySplit]) -> Iterable[tuple[CategorySplit, Sample, str]]:
    for split in splits:
        for sample in split.test:
            yield split, sample, split_relative(split, sample)


__all__ = [
    "DEFAULT_GT_LABEL", "DEFAULT_GT_VERSION", "ERASE_RGB", "EXPORT_FORMAT", "GT_PREFIX", "MANIFEST", "MIN_STROKE_ALPHA",
    "PAINT_RGB", "SOURCES", "AnnotationError", "ExportEntry", "GroundTruth", "ImportedEntry", "ImportedSet",
    "apply_overrides", "check_label", "check_mask_size", "compose_mask", "dataset_ground_truth", "disagreement",
    "export_mvtec", "f1_optimal_threshold", "ground_truth_doc", "ground_truth_entries",
    "gt_version_key", "image_size", "iter_test_samples", "map_on_image",
    "mask_digest", "mask_to_png", "prefill_mask", "read_mask_file", "read_mvtec_export", "relative_image_path",
    "split_relative",
]

