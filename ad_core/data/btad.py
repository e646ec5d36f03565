"""BTAD, the beanTech Anomaly Detection dataset (Mishra et al., 2021): MVTec layout with ok/ko folders.

Layout: <root>/<product>/{train/ok, test/ok, test/ko, ground_truth/ko}. Images and masks mix .bmp and .png
(product 01 has .bmp images with .png masks), so masks are paired by file stem only.
"""

from __future__ import annotations

from pathlib import Path

from .base import CategorySplit, DatasetError
from .folder import FolderLayout, existing_root, load_layout_split

BTAD_PRODUCTS = ("01", "02", "03")

BTAD_LAYOUT = FolderLayout(
    normal_dir="ok",
    # Masks are `<stem>.png`, `<stem>.bmp` or `<stem>_mask.png` depending on the product and release.
    mask_stem_suffixes=("", "_mask"),
    description=(
        "<root>/<product>/train/ok/, <root>/<product>/test/{ok,ko}/ and <root>/<product>/ground_truth/ko/<stem>.png"
    ),
    setup_hint="Download BTAD (BTech_Dataset_transformed) and point the root at the folder holding 01/ 02/ 03/.",
)


def load_btad_split(root: str | Path, category: str) -> CategorySplit:
    """Normal images get defect_type "good" (label 0); images under test/ko get defect_type "ko" (label 1)."""
    if category not in BTAD_PRODUCTS:
        raise DatasetError(f"unknown BTAD product {category!r}; valid names: {', '.join(BTAD_PRODUCTS)}")
    return load_layout_split("btad", root, category, BTAD_LAYOUT)


def list_btad_products(root: str | Path) -> list[str]:
    root_path = existing_root(root, "btad", BTAD_LAYOUT)
    return [p for p in BTAD_PRODUCTS if (root_path / p).is_dir()]
