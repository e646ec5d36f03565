"""MVTec AD (Bergmann et al., CVPR 2019): the folder loader plus a check of the 15 official category names."""

from __future__ import annotations

from pathlib import Path

from .base import CategorySplit, DatasetError
from .folder import FolderLayout, existing_root, load_layout_split

MVTEC_CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)

MVTEC_LAYOUT = FolderLayout(
    setup_hint=(
        "Download MVTec AD from https://www.mvtec.com/company/research/datasets/mvtec-ad and extract it "
        "so that <root>/bottle/train/good exists."
    )
)


def load_mvtec_split(root: str | Path, category: str) -> CategorySplit:
    if category not in MVTEC_CATEGORIES:
        raise DatasetError(
            f"unknown MVTec AD category {category!r}; valid names: {', '.join(MVTEC_CATEGORIES)}. "
            "Use the 'folder' dataset kind for other categories in the same layout."
        )
    return load_layout_split("mvtec", root, category, MVTEC_LAYOUT)


def list_mvtec_categories(root: str | Path) -> list[str]:
    """The official category names that exist under `root` (in the official order)."""
    root_path = existing_root(root, "mvtec", MVTEC_LAYOUT)
    return [c for c in MVTEC_CATEGORIES if (root_path / c).is_dir()]
