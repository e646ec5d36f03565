"""Datasets: MVTec AD, BTAD, any folder in the MVTec layout, and a generated demo dataset.

`load_split(kind, root, category)` is the one entry point the runner uses; every kind returns a
CategorySplit of Samples that `ImageDataset` turns into tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import CategorySplit, DatasetError, ImageDataset, Preprocess, Sample, read_image, read_mask
from .btad import BTAD_PRODUCTS, list_btad_products, load_btad_split
from .demo import (
    DEMO_CATEGORIES,
    DEMO_PHOTO_CATEGORIES,
    MULTICLASS_DEMO_CATEGORIES,
    list_demo_categories,
    load_demo_split,
    make_demo_dataset,
)
from .folder import list_folder_categories, load_folder_split
from .mvtec import MVTEC_CATEGORIES, list_mvtec_categories, load_mvtec_split

__all__ = [
    "BTAD_PRODUCTS",
    "DATASET_KINDS",
    "DEMO_CATEGORIES",
    "DEMO_PHOTO_CATEGORIES",
    "MULTICLASS_DEMO_CATEGORIES",
    "MVTEC_CATEGORIES",
    "CategorySplit",
    "DatasetError",
    "ImageDataset",
    "Preprocess",
    "Sample",
    "list_categories",
    "load_split",
    "make_demo_dataset",
    "read_image",
    "read_mask",
]

_LOADERS: dict[str, tuple[Callable[[str | Path, str], CategorySplit], Callable[[str | Path], list[str]]]] = {
    "mvtec": (load_mvtec_split, list_mvtec_categories),
    "btad": (load_btad_split, list_btad_products),
    "folder": (load_folder_split, list_folder_categories),
    "demo": (load_demo_split, list_demo_categories),
}
DATASET_KINDS = tuple(_LOADERS)


def _kind(
    dataset: str,
) -> tuple[Callable[[str | Path, str], CategorySplit], Callable[[str | Path], list[str]]]:
    if dataset not in _LOADERS:
        raise DatasetError(f"unknown dataset kind {dataset!r}; expected one of: {', '.join(DATASET_KINDS)}")
    return _LOADERS[dataset]


def load_split(dataset: str, root: str | Path, category: str) -> CategorySplit:
    """Train/test samples of one category. `dataset` is one of DATASET_KINDS."""
    return _kind(dataset)[0](root, category)


def list_categories(dataset: str, root: str | Path) -> list[str]:
    """Categories of `dataset` available under `root`."""
    return _kind(dataset)[1](root)
