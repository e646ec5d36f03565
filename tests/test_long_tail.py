"""Long-tailed splits: the generator's profiles, the importer of published lists (TailedCore), and methods
on tail classes with a single training image."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ad_core.data import MULTICLASS_DEMO_CATEGORIES, make_demo_dataset
from ad_core.errors import ConfigError, DatasetError
from ad_core.splits import SplitSpec, get_split_kind, read_training_list

REPO_ROOT = Path(__file__).resolve().parent.parent
TAILEDCORE = (REPO_ROOT / ".." / "shared" / "data" / "splits" / "tailedcore").resolve()
# The README of the TailedCore lists: per-class training counts of step tk4 seed101.
README_STEP_TK4_SEED101 = {
    "bottle": 4, "cable": 224, "capsule": 219, "carpet": 4, "grid": 4, "hazelnut": 391, "leather": 4,
    "metal_nut": 4, "pill": 4, "screw": 320, "tile": 230, "toothbrush": 60, "transistor": 4, "wood": 4, "zipper": 4,
}
N_TRAIN = 24  # training images per class of the generated multi-class demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("lt") / "demo", categories=MULTICLASS_DEMO_CATEGORIES, seed=0,
                             n_train=N_TRAIN, n_test_good=1, n_test_defect=2, image_size=32)


def tailedcore_dir() -> Path:
    if not TAILEDCORE.is_dir():
        import os

        message = f"TailedCore lists not present at {TAILEDCORE}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}: CI must have ../shared/data")
        pytest.skip(message)
    return TAILEDCORE


# --- the generator ----------------------------------------------------------------------------------------


def _ranked(spec: SplitSpec, classes: list[str]) -> list[str]:
    """The head-to-tail order the recipe uses, read back from the targets of equal-sized classes."""
    targets = get_split_kind("long_tail").targets(spec, dict.fromkeys(classes, 10_000))
    return sorted(classes, key=lambda c: -targets[c])


@pytest.mark.parametrize("name", ["exp100", "exp10", "step100", "step_k4", "pareto"])
def test_profile_counts_follow_the_formulas(name: str) -> None:
    classes = [f"c{i:02d}" for i in range(10)]
    available = {c: 400 for c in classes}
    spec = SplitSpec.parse(f"long_tail:{name}").with_seed(7)
    targets = get_split_kind("long_tail").targets(spec, available)
    order = _ranked(spec, classes)
    n, n_max = len(classes), 400
    if name.startswith("exp"):
        ratio = float(name[3:])
        expected = [math.floor(n_max * ratio ** (-i / (n - 1)) + 1e-9) for i in range(n)]
        assert targets[order[-1]] == n_max / ratio  # the tail class: n_max / ratio exactly
    elif name == "step100":
        expected = [400] * 4 + [4] * 6  # 60 % of 10 classes cut to n_max / 100
    elif name == "step_k4":
        expected = [400] * 4 + [4] * 6
    else:
        a = math.log(100) / math.log(n)
        expected = [max(5, math.floor(n_max * (i + 1) ** (-a) + 1e-9)) for i in range(n)]
        assert expected[-1] == 5  # 400 / 100 = 4, raised to the minimum of 5
    assert [targets[c] for c in order] == expected


def test_ranking_and_draws_are_seeded_sorted_and_capped(demo: Path, tmp_path: Path) -> None:
    cats = list(MULTICLASS_DEMO_CATEGORIES)

    def kept(spec: str, seed: int, root: Path = demo) -> dict[str, list[str]]:
        splits = SplitSpec.parse(spec).apply("demo", str(root), cats, run_seed=seed)
        return {c: s.relative_paths(s.train) for c, s in splits.items()}

    a = kept("long_tail:exp100", 0)
    assert kept("long_tail:exp100", 0) == a and kept("long_tail:exp100", 1) != a  # seeded
    counts = sorted((len(v) for v in a.values()), reverse=True)
    # n_max = 24 (all classes have 24): 24 * 100^(-i/9) floored, at least 1: the tail classes all hit 1.
    assert counts == [max(1, math.floor(24 * 100 ** (-i / 9) + 1e-9)) for i in range(10)]
    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    assert kept("long_tail:exp100", 0, copy) == a  # other inode order, same files
    # A smaller head count keeps a subset of a larger one (prefix of one permutation per class).
    big, small = kept("long_tail:exp2", 0), kept("long_tail:exp100", 0)
    assert all(set(small[c]) <= set(big[c]) for c in cats)
    # Caps: n_max above what a class has keeps at most what it has.
    capped = kept("long_tail:exp2,n_max=1000", 0)
    assert max(len(v) for v in capped.values()) == N_TRAIN


def test_test_sets_are_untouched_and_counts_recorded(demo: Path) -> None:
    cats = list(MULTICLASS_DEMO_CATEGORIES)
    standard = SplitSpec().apply("demo", str(demo), cats)
    tailed = SplitSpec.parse("long_tail:step_k4").apply("demo", str(demo), cats, run_seed=3)
    for c in cats:
        assert tailed[c].test == standard[c].test
        assert set(s.path for s in tailed[c].train) <= set(s.path for s in standard[c].train)
        assert tailed[c].notes[-1] == f"long_tail: {len(tailed[c].train)} of {N_TRAIN} training images kept"
    assert sorted(len(s.train) for s in tailed.values()) == [4] * 6 + [N_TRAIN] * 4
    with pytest.raises(ConfigError, match="at least 2 classes"):
        SplitSpec.parse("long_tail:exp100").apply("demo", str(demo), ["brick"], 0)


def test_a_one_class_job_sees_the_lists_of_the_whole_long_tail(demo: Path) -> None:
    """Per-class jobs of a matrix: the recipe is bound to the matrix's classes (the planner does this), so a
    job over one class gets exactly that class's lists of the run over all of them."""
    cats = list(MULTICLASS_DEMO_CATEGORIES)
    spec = SplitSpec.parse("long_tail:exp100")
    whole = spec.apply("demo", str(demo), cats, run_seed=2)
    bound = spec.for_classes(cats)
    assert bound.key != spec.key and "over 10 classes" in bound.describe() and bound.label == spec.label
    for c in ("brick", "hubble_deep_field"):
        [alone] = bound.apply("demo", str(demo), [c], run_seed=2).values()
        assert alone.content_hash() == whole[c].content_hash()
    with pytest.raises(ConfigError, match="are not among the classes"):
        SplitSpec.parse("long_tail:exp100").for_classes(["brick", "grass"]).apply("demo", str(demo), ["moon"], 0)
    few_shot = SplitSpec.parse("few_shot:k=1")
    assert few_shot.for_classes(cats) == few_shot  # per-class kinds are not bound


def test_recipe_names_and_validation() -> None:
    assert SplitSpec.parse("long_tail:exp100").label == "long_tail(exp100)"
    assert SplitSpec.parse("long_tail:step_k4").label == "long_tail(step_k4)"
    assert SplitSpec.parse("long_tail:profile=step,ratio=10,tail_fraction=0.5").label == \
        "long_tail(step10, tail_fraction=0.5)"
    assert "exponential, imbalance ratio 100" in SplitSpec.parse("long_tail:exp100").describe()
    for text, message in [("long_tail:exp0.5", "ratio must be a number >= 1"), ("long_tail:zipf", "not understood"),
                          ("long_tail:exp100,k=4", "only used with profile=step"),
                          ("long_tail:list=/nonexistent.json", "does not exist"),
                          ("long_tail:profile=list", "needs list=PATH")]:
        with pytest.raises(ConfigError, match=message):
            SplitSpec.parse(text)


# --- the importer ------------------------------------------------------------------------------------------


def test_all_tailedcore_lists_parse_with_the_published_counts() -> None:
    files = sorted(tailedcore_dir().glob("mvtec_*.json"))
    assert len(files) == 18
    for path in files:
        entries = read_training_list(path)
        data = json.loads(path.read_text())
        train = [e for e in entries if "/train/" in e]
        noisy = [e for e in entries if "/test/" in e]
        assert noisy == data["noisy_files"] and ("nr10" in path.name) == bool(noisy)
        counts = {c: sum(e.startswith(f"{c}/") for e in train) for c in README_STEP_TK4_SEED101}
        assert all(n >= 1 for n in counts.values()), path.name
        if "step_random" in path.name and "tk4" in path.name and "seed101" in path.name:
            assert counts == README_STEP_TK4_SEED101, path.name
        if "tk1" in path.name:
            assert sorted(counts.values())[:9] == [1] * 9  # 60 % of 15 classes cut to one image
        if "pareto" in path.name:
            assert min(counts.values()) >= 5


def _fake_mvtec(root: Path, data: dict) -> None:
    """Every file a TailedCore list names, as tiny images (masks are white), in the MVTec AD layout."""
    pixel = Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8))
    mask = Image.fromarray(np.full((2, 2), 255, dtype=np.uint8))
    for rel in data["tailed_files"]:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        (mask if "/ground_truth/" in rel else pixel).save(target)


def test_noisy_lists_never_evaluate_a_training_image(tmp_path: Path) -> None:
    path = tailedcore_dir() / "mvtec_step_random_nr10_tk4_tr60_seed101.json"
    data = json.loads(path.read_text())
    _fake_mvtec(tmp_path, data)
    # The MVTec layout also has training images the list does not keep: add one per class.
    for c in README_STEP_TK4_SEED101:
        Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / c / "train" / "good" / "999.png")
    cats = list(README_STEP_TK4_SEED101)
    spec = SplitSpec.parse(f"long_tail:list={path}")
    splits = spec.apply("mvtec", str(tmp_path), cats)
    noisy_by_class = {c: [n for n in data["noisy_files"] if n.startswith(f"{c}/")] for c in cats}
    for c, split in splits.items():
        train = set(split.relative_paths(split.train))
        assert not train & set(split.relative_paths(split.test))  # no test image of the run is trained on
        assert len(train) == README_STEP_TK4_SEED101[c] + len(noisy_by_class[c])
        assert f"{c}/train/good/999.png" not in train
        assert all(s.label == 0 for s in split.train)  # noisy images join training unlabelled
    assert sum(len(v) for v in noisy_by_class.values()) == 144
    with pytest.raises(DatasetError, match="pass noisy=drop"):
        SplitSpec.parse(f"long_tail:list={path},noisy=refuse").apply("mvtec", str(tmp_path), cats)
    first = sorted(e for e in data["tailed_files"] if e.startswith("bottle/train/"))[0]
    (tmp_path / first).unlink()
    with pytest.raises(DatasetError, match=f"names {first}, which is missing under"):
        spec.apply("mvtec", str(tmp_path), ["bottle"])


def test_plain_lists_and_content_identity(tmp_path: Path, demo: Path) -> None:
    txt = tmp_path / "mine.txt"
    txt.write_text("# my split\nbrick/train/good/000.png\nbrick/train/good/003.png\ngrass/train/good/001.png\n")
    csv = tmp_path / "mine.csv"
    csv.write_text("path\nbrick/train/good/000.png\nbrick/train/good/003.png\ngrass/train/good/001.png\n")
    js = tmp_path / "mine.json"
    js.write_text(json.dumps({"train": ["brick/train/good/000.png", "brick/train/good/003.png",
                                        "grass/train/good/001.png"]}))
    got = [SplitSpec.parse(f"long_tail:list={p}").apply("demo", str(demo), ["brick", "grass"]) for p in (txt, csv, js)]
    for splits in got:
        assert [len(splits[c].train) for c in ("brick", "grass")] == [2, 1]
    assert got[0]["brick"].content_hash() == got[1]["brick"].content_hash() == got[2]["brick"].content_hash()
    # Two copies of one list at different paths are the same recipe; a changed list is another one.
    copy = tmp_path / "elsewhere.txt"
    shutil.copy(txt, copy)
    assert SplitSpec.parse(f"long_tail:list={txt}").key == SplitSpec.parse(f"long_tail:list={copy}").key
    copy.write_text("brick/train/good/000.png\ngrass/train/good/001.png\n")
    assert SplitSpec.parse(f"long_tail:list={txt}").key != SplitSpec.parse(f"long_tail:list={copy}").key
    with pytest.raises(DatasetError, match="has no training image of class 'gravel'"):
        SplitSpec.parse(f"long_tail:list={txt}").apply("demo", str(demo), ["brick", "gravel"])


def test_real_bottle_with_the_noisy_list(mvtec_bottle_root: Path) -> None:
    path = tailedcore_dir() / "mvtec_step_random_nr10_tk4_tr60_seed101.json"
    noisy = [n for n in json.loads(path.read_text())["noisy_files"] if n.startswith("bottle/")]
    [split] = SplitSpec.parse(f"long_tail:list={path}").apply("mvtec", str(mvtec_bottle_root), ["bottle"]).values()
    assert len(split.train) == 4 + len(noisy) and split.counts()["test"] == 83 - len(noisy)


# --- methods on tail classes -------------------------------------------------------------------------------


@pytest.mark.parametrize("method,overrides", [
    ("patchcore", {}),
    ("reconpatch", {"epochs": 1, "patches_per_epoch": 256}),
    ("isstad", {"stage1_epochs": 1, "stage2_epochs": 1}),
    ("patchcore_unified", {}),
])
def test_every_method_fits_a_tail_class_with_one_image(demo: Path, method: str, overrides: dict) -> None:
    from ad_core.runner import RunSpec, run

    cats = ["brick", "grass"]
    spec = RunSpec(method=method, dataset="demo", root=str(demo), categories=cats, preset="fast", weights="random",
                   overrides={"resize": 32, "crop": 32, **overrides},
                   split=SplitSpec.parse("long_tail:exp100").to_dict())
    result = run(spec)
    assert sorted(r.counts["train"] for r in result.categories.values()) == [1, N_TRAIN]
    assert all(np.isfinite(r.anomaly_maps).all() for r in result.categories.values())
    assert len(result.units) == (1 if method.endswith("_unified") else 2)
