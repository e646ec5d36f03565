"""Loader for any dataset in the MVTec AD folder layout; MVTec AD, BTAD and the demo dataset reuse it.

Layout (folder names configurable through `FolderLayout`)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .base import CategorySplit, DatasetError, Sample, list_images


@dataclass(frozen=True)
class FolderLayout:
    """Folder and file naming of an MVTec-style dataset."""

    # Name of the folder holding normal images, both under train/ and under test/.
    normal_dir: str = "good"
    # A mask's file stem is its image's stem plus one of these (the first one is the canonical name).
    mask_stem_suffixes: tuple[str, ...] = ("_mask",)
    # Shown in error messages so that the user sees what we expected on disk.
    description: str = (
        "<root>/<category>/train/good/, <root>/<category>/test/<defect>/ and "
        "<root>/<category>/ground_truth/<defect>/<stem>_mask.png"
    )
    # Appended to the "root does not exist" error: where to get the data.
    setup_hint: str = ""


DEFAULT_LAYOUT = FolderLayout()


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def existing_root(root: str | Path, dataset: str, layout: FolderLayout = DEFAULT_LAYOUT) -> Path:
    """The dataset root as an absolute path; DatasetError when it is missing or not a folder."""
    root_path = Path(root).expanduser().absolute()
    if not root_path.is_dir():
        what = "is not a folder" if root_path.exists() else "does not exist"
        hint = f" {layout.setup_hint}" if layout.setup_hint else ""
        raise DatasetError(f"{dataset} dataset root {root_path} {what}; expected {layout.description}.{hint}")
    return root_path


def pair_masks_by_stem(
    images: Sequence[Path], mask_dir: Path, stem_suffixes: Sequence[str]
) -> tuple[dict[Path, Path], list[Path]]:
    """Pair each defective image with its mask by file stem, never by listing order.

    A mask matches an image when its stem is the image stem plus one of `stem_suffixes` (any image file
    suffix, so `000.bmp` pairs with `000_mask.png`). Returns (image -> mask, masks that matched no image).
    """
    canonical = f"<stem>{stem_suffixes[0]}.png"
    if not mask_dir.is_dir():
        raise DatasetError(
            f"defective image {images[0]} has no mask: the mask folder {mask_dir} does not exist "
            f"(expected {mask_dir / (images[0].stem + stem_suffixes[0])}.png)"
        )
    masks_by_stem: dict[str, list[Path]] = {}
    for mask in list_images(mask_dir):
        masks_by_stem.setdefault(mask.stem, []).append(mask)

    pairs: dict[Path, Path] = {}
    for image in images:
        candidates = [m for suffix in stem_suffixes for m in masks_by_stem.get(image.stem + suffix, [])]
        if not candidates:
            raise DatasetError(
                f"defective image {image} has no mask: expected {mask_dir / (image.stem + stem_suffixes[0])}.png "
                f"(masks are matched by file stem, named {canonical}, any image suffix)"
            )
        if len(candidates) > 1:
            names = ", ".join(str(c) for c in candidates)
            raise DatasetError(f"defective image {image} matches several masks ({names}); keep exactly one")
        pairs[image] = candidates[0]
    used = set(pairs.values())
    unused = [m for ms in masks_by_stem.values() for m in ms if m not in used]
    return pairs, sorted(unused)


def load_layout_split(
    dataset: str, root: str | Path, category: str, layout: FolderLayout = DEFAULT_LAYOUT
) -> CategorySplit:
    """Train and test samples of one category of a dataset in the (possibly renamed) MVTec layout."""
    root_path = existing_root(root, dataset, layout)
    category_dir = root_path / category
    if not category_dir.is_dir():
        present = ", ".join(p.name for p in _subdirs(root_path)) or "none"
        raise DatasetError(
            f"category folder {category_dir} not found; expected {layout.description}. "
            f"Folders present under {root_path}: {present}"
        )

    train_dir = category_dir / "train" / layout.normal_dir
    if not train_dir.is_dir():
        raise DatasetError(
            f"training folder {train_dir} not found; expected the normal training images there"
        )
    train = [Sample(str(p), 0, "good", category=category) for p in list_images(train_dir)]
    if not train:
        raise DatasetError(
            f"training folder {train_dir} contains no images; expected normal images (.png, .jpg, ...)"
        )

    test_dir = category_dir / "test"
    if not test_dir.is_dir():
        raise DatasetError(
            f"test folder {test_dir} not found; expected {test_dir / layout.normal_dir}/ and {test_dir}/<defect>/"
        )
    notes: list[str] = []
    gt_dir = category_dir / "ground_truth"
    has_masks = gt_dir.is_dir()
    test: list[Sample] = []
    for folder in _subdirs(test_dir):
        images = list_images(folder)
        if not images:
            notes.append(f"test folder {folder} has no images; skipped")
        elif folder.name == layout.normal_dir:
            test += [Sample(str(p), 0, "good", category=category) for p in images]
        elif has_masks:
            pairs, unused = pair_masks_by_stem(images, gt_dir / folder.name, layout.mask_stem_suffixes)
            test += [Sample(str(p), 1, folder.name, str(pairs[p]), category) for p in images]
            if unused:
                notes.append(
                    f"{len(unused)} mask(s) in {gt_dir / folder.name} match no test image and are ignored"
                )
        else:
            test += [Sample(str(p), 1, folder.name, None, category) for p in images]
    if not test:
        raise DatasetError(
            f"test folder {test_dir} contains no images; expected {test_dir / layout.normal_dir}/ and "
            f"{test_dir}/<defect>/ subfolders with images"
        )
    stray = list_images(test_dir)
    if stray:
        notes.append(
            f"{len(stray)} image(s) directly in {test_dir} (not in a <defect>/ subfolder) are ignored"
        )

    if not has_masks:
        message = (
            f"{dataset}/{category} has no ground_truth folder ({gt_dir}); "
            "pixel metrics will be reported as null"
        )
        warnings.warn(message, stacklevel=2)
        notes.append(message)
    n_anomalous = sum(s.label for s in test)
    if n_anomalous == 0:
        notes.append(f"no anomalous test images under {test_dir}; image-level AUROC is undefined")
    if n_anomalous == len(test):
        notes.append(
            f"no normal test images in {test_dir / layout.normal_dir}; image-level AUROC is undefined"
        )

    return CategorySplit(
        dataset=dataset,
        category=category,
        root=str(root_path),
        train=train,
        test=test,
        has_masks=has_masks,
        notes=notes,
    )


def list_layout_categories(
    root: str | Path, dataset: str, layout: FolderLayout = DEFAULT_LAYOUT
) -> list[str]:
    """Subfolders of `root` that have a train/<normal> folder, i.e. loadable categories."""
    root_path = existing_root(root, dataset, layout)
    return [p.name for p in _subdirs(root_path) if (p / "train" / layout.normal_dir).is_dir()]


def load_folder_split(root: str | Path, category: str) -> CategorySplit:
    """Any category name in the MVTec layout (your own data)."""
    return load_layout_split("folder", root, category)


def list_folder_categories(root: str | Path) -> list[str]:
    return list_layout_categories(root, "folder")
