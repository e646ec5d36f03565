"""Dataset loaders, image/mask reading and the demo generator, on tiny trees written into tmp_path."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ad_core.data import (
    BTAD_PRODUCTS,
    DATASET_KINDS,
    DEMO_CATEGORIES,
    MVTEC_CATEGORIES,
    DatasetError,
    ImageDataset,
    Preprocess,
    list_categories,
    load_split,
    make_demo_dataset,
)
from ad_core.data.demo import DEMO_DEFECT_TYPES, MAX_DEFECT_AREA, MIN_DEFECT_AREA, render_demo_sample

SIZE = 32


def write_image(path: Path, size: int = SIZE, mode: str = "RGB", value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    pixels = np.clip(value + rng.integers(-20, 21, size=shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_mask(path: Path, size: int = SIZE, box: tuple[int, int, int, int] = (8, 8, 16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size, size), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    Image.fromarray(mask).save(path)
    return path


def make_mvtec_tree(
    root: Path,
    category: str = "widget",
    n_train: int = 3,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    with_masks: bool = True,
) -> Path:
    """<root>/<category> in the MVTec layout; returns the category folder."""
    defects = {"crack": 2, "dent": 1} if defects is None else defects
    cat = root / category
    for i in range(n_train):
        write_image(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        write_image(cat / "test" / "good" / f"{i:03d}.png")
    for defect, n in defects.items():
        for i in range(n):
            write_image(cat / "test" / defect / f"{i:03d}.png")
            if with_masks:
                write_mask(cat / "ground_truth" / defect / f"{i:03d}_mask.png")
    return cat


def error_message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


# ---------------------------------------------------------------------------------------------- loaders


def test_folder_loader_counts_labels_and_masks(tmp_path: Path) -> None:
    cat = make_mvtec_tree(tmp_path, n_train=3, n_good=2, defects={"crack": 2, "dent": 1})
    split = load_split("folder", tmp_path, "widget")

    assert split.counts() == {"train": 3, "train_anomalous": 0, "test": 5, "test_good": 2, "test_anomalous": 3}
    assert {s.category for s in [*split.train, *split.test]} == {"widget"}  # samples carry their class
    assert split.dataset == "folder" and split.category == "widget" and split.has_masks
    assert all(s.label == 0 and s.defect_type == "good" and s.mask_path is None for s in split.train)
    by_type = {(s.defect_type, s.label) for s in split.test}
    assert by_type == {("good", 0), ("crack", 1), ("dent", 1)}
    for sample in split.test:
        if sample.label == 0:
            assert sample.mask_path is None
        else:
            image = Path(sample.path)
            assert (
                Path(sample.mask_path) == cat / "ground_truth" / sample.defect_type / f"{image.stem}_mask.png"
            )


def test_masks_are_paired_by_stem_not_listing_order(tmp_path: Path) -> None:
    cat = make_mvtec_tree(tmp_path, defects={})
    # Sorted, images are 1, 10, 2 but masks are 10_mask, 1_mask, 2_mask ('0' < '_'): order pairing would swap them.
    for stem in ("1", "10", "2"):
        write_image(cat / "test" / "crack" / f"{stem}.png")
    gt = cat / "ground_truth" / "crack"
    write_mask(gt / "10_mask.png")
    write_mask(gt / "1_mask.bmp")  # any image suffix
    write_mask(gt / "2_mask.png")
    write_mask(gt / "0_mask.png")  # extra mask without an image
    (gt / "README.txt").write_text("not a mask")

    split = load_split("folder", tmp_path, "widget")
    pairs = {Path(s.path).name: Path(s.mask_path).name for s in split.test if s.label == 1}
    assert pairs == {"1.png": "1_mask.bmp", "10.png": "10_mask.png", "2.png": "2_mask.png"}
    assert any("match no test image" in note for note in split.notes)


def test_test_split_without_anomalies_is_allowed_but_noted(tmp_path: Path) -> None:
    make_mvtec_tree(tmp_path, defects={})
    (tmp_path / "widget" / "ground_truth").mkdir()
    split = load_split("folder", tmp_path, "widget")
    assert split.counts()["test_anomalous"] == 0
    assert any("no anomalous test images" in note for note in split.notes)


def test_category_without_ground_truth_has_no_masks_and_warns(tmp_path: Path) -> None:
    make_mvtec_tree(tmp_path, with_masks=False)
    with pytest.warns(UserWarning, match="pixel metrics will be reported as null"):
        split = load_split("folder", tmp_path, "widget")
    assert split.has_masks is False
    assert all(s.mask_path is None for s in split.test)
    assert split.counts()["test_anomalous"] == 3
    assert any("null" in note for note in split.notes)


def test_loading_with_ground_truth_does_not_warn(tmp_path: Path) -> None:
    make_mvtec_tree(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_split("folder", tmp_path, "widget")


def test_mvtec_kind_checks_names_and_lists_official_categories(tmp_path: Path) -> None:
    make_mvtec_tree(tmp_path, category="bottle")
    make_mvtec_tree(tmp_path, category="widget")
    assert load_split("mvtec", tmp_path, "bottle").dataset == "mvtec"
    assert list_categories("mvtec", tmp_path) == ["bottle"]
    assert list_categories("folder", tmp_path) == ["bottle", "widget"]
    assert len(MVTEC_CATEGORIES) == 15 and "metal_nut" in MVTEC_CATEGORIES


def test_btad_mixed_bmp_png_pairing(tmp_path: Path) -> None:
    product = tmp_path / "01"
    for i in range(3):
        write_image(product / "train" / "ok" / f"{i:04d}.bmp")
    write_image(product / "test" / "ok" / "0000.png")
    write_image(product / "test" / "ok" / "0001.bmp")
    write_image(product / "test" / "ko" / "0000.bmp")
    write_image(product / "test" / "ko" / "0001.png")
    write_image(product / "test" / "ko" / "0002.bmp")
    gt = product / "ground_truth" / "ko"
    write_mask(gt / "0000.png", box=(0, 0, 4, 4))
    write_mask(gt / "0001.bmp", box=(4, 4, 8, 8))
    write_mask(gt / "0002_mask.png", box=(8, 8, 12, 12))

    split = load_split("btad", tmp_path, "01")
    assert split.counts() == {"train": 3, "train_anomalous": 0, "test": 5, "test_good": 2, "test_anomalous": 3}
    assert {s.category for s in [*split.train, *split.test]} == {"01"}
    assert {(s.defect_type, s.label) for s in split.test} == {("good", 0), ("ko", 1)}
    pairs = {Path(s.path).name: Path(s.mask_path).name for s in split.test if s.label == 1}
    assert pairs == {"0000.bmp": "0000.png", "0001.png": "0001.bmp", "0002.bmp": "0002_mask.png"}
    assert list_categories("btad", tmp_path) == ["01"]
    assert BTAD_PRODUCTS == ("01", "02", "03")

    # Both formats decode, and each image gets its own mask (distinct boxes).
    dataset = ImageDataset([s for s in split.test if s.label == 1], Preprocess(resize=SIZE, crop=SIZE))
    masks = [dataset[i]["mask"][0] for i in range(len(dataset))]
    assert [tuple(torch.nonzero(m)[0].tolist()) for m in masks] == [(0, 0), (4, 4), (8, 8)]


# ----------------------------------------------------------------------------------- reading & tensors


def test_grayscale_image_becomes_three_channels(tmp_path: Path) -> None:
    cat = make_mvtec_tree(tmp_path)
    write_image(cat / "train" / "good" / "000.png", mode="L")
    split = load_split("folder", tmp_path, "widget")
    item = ImageDataset(split.train, Preprocess(resize=SIZE, crop=SIZE))[0]
    assert item["image"].shape == (3, SIZE, SIZE)
    pixels = Preprocess().unnormalize(item["image"]).astype(int)
    assert (
        np.abs(pixels[..., 0] - pixels[..., 1]).max() <= 1
        and np.abs(pixels[..., 1] - pixels[..., 2]).max() <= 1
    )


def test_mask_is_resized_nearest_and_binary(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 2, size=(16, 16)).astype(np.uint8)
    cat = make_mvtec_tree(tmp_path, defects={})
    write_image(cat / "test" / "crack" / "000.png", size=64)
    (cat / "ground_truth" / "crack").mkdir(parents=True)
    Image.fromarray(np.kron(blocks, np.ones((4, 4), np.uint8)) * 255).save(
        cat / "ground_truth/crack/000_mask.png"
    )
    split = load_split("folder", tmp_path, "widget")
    defective = [s for s in split.test if s.label == 1]

    # 64 -> 32 halves every 4x4 block to 2x2: nearest keeps it exact; then a centre crop of 24 removes 4 px a side.
    mask = ImageDataset(defective, Preprocess(resize=32, crop=24))[0]["mask"]
    expected = np.kron(blocks, np.ones((2, 2)))[4:28, 4:28]
    assert mask.shape == (1, 24, 24) and mask.dtype == torch.float32
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(mask[0].numpy(), expected)


def test_good_test_images_get_all_zero_masks(tmp_path: Path) -> None:
    make_mvtec_tree(tmp_path)
    split = load_split("folder", tmp_path, "widget")
    dataset = ImageDataset(split.test, Preprocess(resize=SIZE, crop=24))
    items = [dataset[i] for i in range(len(dataset))]
    good = [it for it in items if it["label"] == 0]
    assert len(good) == 2
    assert all(it["mask"].shape == (1, 24, 24) and it["mask"].sum() == 0 for it in good)
    assert all(it["mask"].sum() > 0 for it in items if it["label"] == 1)


# -------------------------------------------------------------------------------------------- errors


def test_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as excinfo:
        load_split("mvtec", root, "bottle")
    assert str(root) in error_message(excinfo)


def test_missing_category_folder(tmp_path: Path) -> None:
    make_mvtec_tree(tmp_path, category="bottle")
    with pytest.raises(DatasetError) as excinfo:
        load_split("mvtec", tmp_path, "cable")
    assert str(tmp_path / "cable") in error_message(excinfo)
    assert "bottle" in error_message(excinfo)  # lists what is there


def test_unknown_mvtec_category_lists_valid_names(tmp_path: Path) -> None:
    make_mvtec_tree(tmp_path, category="widget")
    with pytest.raises(DatasetError) as excinfo:
        load_split("mvtec", tmp_path, "widget")
    assert "widget" in error_message(excinfo) and "metal_nut" in error_message(excinfo)
    assert load_split("folder", tmp_path, "widget").counts()["train"] == 3


def test_unknown_dataset_kind_lists_kinds(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as excinfo:
        load_split("visa", tmp_path, "candle")
    assert all(kind in error_message(excinfo) for kind in DATASET_KINDS)


def test_missing_train_good(tmp_path: Path) -> None:
    make_mvtec_tree(tmp_path, n_train=0)
    train_dir = tmp_path / "widget" / "train" / "good"
    assert not train_dir.exists()
    with pytest.raises(DatasetError) as excinfo:
        load_split("folder", tmp_path, "widget")
    assert str(train_dir) in error_message(excinfo)


def test_empty_train_split(tmp_path: Path) -> None:
    make_mvtec_tree(tmp_path, n_train=0)
    train_dir = tmp_path / "widget" / "train" / "good"
    train_dir.mkdir(parents=True)
    (train_dir / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError) as excinfo:
        load_split("folder", tmp_path, "widget")
    assert str(train_dir) in error_message(excinfo) and "no images" in error_message(excinfo)


def test_missing_and_empty_test_split(tmp_path: Path) -> None:
    make_mvtec_tree(tmp_path, n_good=0, defects={})
    test_dir = tmp_path / "widget" / "test"
    assert not test_dir.exists()
    with pytest.raises(DatasetError) as excinfo:
        load_split("folder", tmp_path, "widget")
    assert str(test_dir) in error_message(excinfo)
    (test_dir / "good").mkdir(parents=True)
    with pytest.raises(DatasetError) as excinfo:
        load_split("folder", tmp_path, "widget")
    assert str(test_dir) in error_message(excinfo) and "no images" in error_message(excinfo)


def test_defect_image_without_mask_names_image_and_expected_mask(tmp_path: Path) -> None:
    cat = make_mvtec_tree(tmp_path, defects={"crack": 2})
    (cat / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DatasetError) as excinfo:
        load_split("folder", tmp_path, "widget")
    assert str(cat / "test" / "crack" / "001.png") in error_message(excinfo)
    assert str(cat / "ground_truth" / "crack" / "001_mask.png") in error_message(excinfo)


def test_defect_folder_without_mask_folder(tmp_path: Path) -> None:
    cat = make_mvtec_tree(tmp_path, defects={"crack": 1})
    write_image(cat / "test" / "dent" / "000.png")
    with pytest.raises(DatasetError) as excinfo:
        load_split("folder", tmp_path, "widget")
    assert str(cat / "test" / "dent" / "000.png") in error_message(excinfo)
    assert str(cat / "ground_truth" / "dent") in error_message(excinfo)


def test_truncated_image_names_the_file(tmp_path: Path) -> None:
    cat = make_mvtec_tree(tmp_path)
    broken = cat / "train" / "good" / "001.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    split = load_split("folder", tmp_path, "widget")  # listing does not decode; reading does
    dataset = ImageDataset(split.train, Preprocess(resize=SIZE, crop=SIZE))
    dataset[0]
    with pytest.raises(DatasetError) as excinfo:
        dataset[1]
    assert str(broken) in error_message(excinfo)


def test_mask_of_wrong_size_names_the_mask(tmp_path: Path) -> None:
    cat = make_mvtec_tree(tmp_path, defects={"crack": 1})
    bad_mask = write_mask(cat / "ground_truth" / "crack" / "000_mask.png", size=SIZE // 2, box=(0, 0, 4, 4))
    split = load_split("folder", tmp_path, "widget")
    dataset = ImageDataset([s for s in split.test if s.label == 1], Preprocess(resize=SIZE, crop=SIZE))
    with pytest.raises(DatasetError) as excinfo:
        dataset[0]
    assert str(bad_mask) in error_message(excinfo)


def test_unknown_btad_product(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as excinfo:
        load_split("btad", tmp_path, "1")
    assert "'1'" in error_message(excinfo) and "01" in error_message(excinfo)


# ---------------------------------------------------------------------------------------------- demo

SMALL_DEMO = {"n_train": 4, "n_test_good": 2, "n_test_defect": 4, "image_size": 64}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("small_demo") / "demo", seed=3, **SMALL_DEMO)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_layout_and_counts(small_demo: Path) -> None:
    assert list_categories("demo", small_demo) == list(DEMO_CATEGORIES)
    for category in DEMO_CATEGORIES:
        split = load_split("demo", small_demo, category)
        assert split.counts() == {"train": 4, "train_anomalous": 0, "test": 6, "test_good": 2, "test_anomalous": 4}
        assert sorted(s.defect_type for s in split.test if s.label == 1) == sorted(DEMO_DEFECT_TYPES)
        assert split.has_masks and all(s.mask_path is not None for s in split.test if s.label == 1)
        with Image.open(split.train[0].path) as img:
            assert img.size == (64, 64) and img.mode == "RGB"
    description = json.loads((small_demo / "dataset.json").read_text())
    assert description["parameters"]["seed"] == 3 and description["parameters"]["image_size"] == 64
    assert "CC0" in description["license"] and "CC0" in (small_demo / "README.txt").read_text()


def test_demo_masks_are_exactly_the_changed_pixels(small_demo: Path) -> None:
    for category in DEMO_CATEGORIES:
        split = load_split("demo", small_demo, category)
        for sample in (s for s in split.test if s.label == 1):
            index = int(Path(sample.path).stem)
            clean = render_demo_sample(category, sample.defect_type, index, seed=3, image_size=64).clean
            image = np.asarray(Image.open(sample.path).convert("RGB"))
            mask = np.asarray(Image.open(sample.mask_path)) > 0
            changed = (image != clean).any(axis=-1)
            np.testing.assert_array_equal(changed, mask, err_msg=sample.path)
            assert MIN_DEFECT_AREA <= mask.mean() <= MAX_DEFECT_AREA
        for sample in split.train + [s for s in split.test if s.label == 0]:
            folder = "train" if sample in split.train else "good"
            clean = render_demo_sample(
                category, folder, int(Path(sample.path).stem), seed=3, image_size=64
            ).clean
            np.testing.assert_array_equal(np.asarray(Image.open(sample.path).convert("RGB")), clean)


def test_demo_counts_per_class_and_the_five_extra_photos(tmp_path: Path, small_demo: Path) -> None:
    """MVTec-AD-sized benchmarks give each class its own counts; the 15 photos include five beyond the
    multi-class demo's ten. A class keeps its images whatever the other classes' counts are."""
    from ad_core.data import DEMO_PHOTO_CATEGORIES, MULTICLASS_DEMO_CATEGORIES

    assert DEMO_PHOTO_CATEGORIES[:10] == MULTICLASS_DEMO_CATEGORIES and len(set(DEMO_PHOTO_CATEGORIES)) == 15
    extra = DEMO_PHOTO_CATEGORIES[10:]
    n_train = {c: 2 + i for i, c in enumerate(("brick", *extra))}
    root = make_demo_dataset(tmp_path / "sized", seed=3, categories=("brick", *extra), n_train=n_train,
                             n_test_good={c: 1 for c in n_train}, n_test_defect={c: 4 + (c == "cell") for c in n_train},
                             image_size=64)
    for category, n in n_train.items():
        counts = load_split("demo", root, category).counts()
        assert (counts["train"], counts["test_good"], counts["test_anomalous"]) == (n, 1, 5 if category == "cell" else 4)
    assert file_bytes(root)["brick/train/good/000.png"] == file_bytes(small_demo)["brick/train/good/000.png"]
    description = json.loads((root / "dataset.json").read_text())
    assert description["images_per_category"]["cell"]["test/scratch"] == 2
    assert all(c in description["sources"] for c in extra)
    with pytest.raises(ValueError, match="n_train gives no count for clock"):
        make_demo_dataset(tmp_path / "bad", categories=("cell", "clock"), n_train={"cell": 3})


def test_demo_is_deterministic_per_seed(tmp_path: Path, small_demo: Path) -> None:
    again = make_demo_dataset(tmp_path / "again", seed=3, **SMALL_DEMO)
    assert file_bytes(again) == file_bytes(small_demo)
    other = make_demo_dataset(tmp_path / "other", seed=4, categories=["brick"], **SMALL_DEMO)
    other_files, same_seed_files = file_bytes(other), file_bytes(small_demo)
    image = "brick/train/good/000.png"
    assert other_files[image] != same_seed_files[image]


def test_demo_is_idempotent_and_overwrites_only_on_request(tmp_path: Path) -> None:
    calls: list[tuple[float, str]] = []
    root = make_demo_dataset(
        tmp_path / "demo", categories=["grass"], progress=lambda f, m: calls.append((f, m)), **SMALL_DEMO
    )
    assert calls and calls[-1][0] == pytest.approx(1.0)
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:], strict=False))
    stamp = (root / "grass" / "train" / "good" / "000.png").stat().st_mtime_ns

    calls.clear()
    assert (
        make_demo_dataset(
            tmp_path / "demo", categories=["grass"], progress=lambda f, m: calls.append((f, m)), **SMALL_DEMO
        )
        == root
    )
    assert calls == [] and (root / "grass" / "train" / "good" / "000.png").stat().st_mtime_ns == stamp

    changed = {**SMALL_DEMO, "n_train": 5}
    with pytest.raises(DatasetError, match="overwrite=True"):
        make_demo_dataset(root, categories=["grass"], **changed)
    make_demo_dataset(root, categories=["grass"], overwrite=True, **changed)
    assert load_split("demo", root, "grass").counts()["train"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary or old folders left behind


def test_demo_interrupted_run_leaves_nothing(tmp_path: Path) -> None:
    def interrupt(fraction: float, message: str) -> None:
        if fraction > 0.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_demo_dataset(tmp_path / "demo", categories=["gravel"], progress=interrupt, **SMALL_DEMO)
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_to_replace_foreign_folder(tmp_path: Path) -> None:
    root = tmp_path / "mydata"
    (root / "keep.txt").parent.mkdir()
    (root / "keep.txt").write_text("precious")
    with pytest.raises(DatasetError) as excinfo:
        make_demo_dataset(root, overwrite=True, **SMALL_DEMO)
    assert str(root) in error_message(excinfo)
    assert (root / "keep.txt").read_text() == "precious"


def test_demo_fixture_is_loadable(demo_root: Path, demo_params: dict) -> None:
    split = load_split("demo", demo_root, "brick")
    assert split.counts()["train"] == demo_params["n_train"]
    assert split.counts()["test_anomalous"] == demo_params["n_test_defect"]


# ------------------------------------------------------------------------------------ real MVTec AD


def test_mvtec_bottle_real_counts(mvtec_bottle_root: Path) -> None:
    split = load_split("mvtec", mvtec_bottle_root, "bottle")
    assert split.counts() == {"train": 209, "train_anomalous": 0, "test": 83, "test_good": 20, "test_anomalous": 63}
    assert split.has_masks
    for sample in split.test:
        if sample.label == 0:
            assert sample.mask_path is None and sample.defect_type == "good"
        else:
            mask = Path(sample.mask_path)
            assert (
                mask.name == f"{Path(sample.path).stem}_mask.png" and mask.parent.name == sample.defect_type
            )
