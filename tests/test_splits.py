"""Split recipes: parsing and storage, the few-shot draw (DRA protocol), content hashes, learning types."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ad_core.data import load_split, make_demo_dataset
from ad_core.errors import ConfigError, DatasetError
from ad_core.runner import RunSpec, plan_fit_units, training_samples
from ad_core.splits import SplitSpec

CATS = ["brick", "grass"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 defective test images per class over 4 defect types (3 each)."""
    return make_demo_dataset(tmp_path_factory.mktemp("splits") / "demo", categories=tuple(CATS), seed=0, n_train=4,
                             n_test_good=2, n_test_defect=12, image_size=64)


def test_recipes_parse_validate_and_round_trip() -> None:
    spec = SplitSpec.parse("few_shot:k=1,setting=hard,seed=3")
    assert spec.to_dict() == {"kind": "few_shot", "defect_type": None, "k": 1, "setting": "hard", "seed": 3}
    assert SplitSpec.from_dict(spec.to_dict()) == spec and spec.label == "few_shot(k=1, hard)"
    assert SplitSpec.parse("few_shot").option("k") == 10  # DRA's default
    assert SplitSpec.parse(None) == SplitSpec.from_dict({}) == SplitSpec() and SplitSpec().label == "standard"
    assert SplitSpec.parse("few_shot:k=10").key != SplitSpec.parse("few_shot:k=1").key
    for text, message in [("few_shot:k=0", "k must be an integer >= 1"), ("few_shot:j=2", "unknown option(s) ['j']"),
                          ("few_shot:k", "must be key=value"), ("few_shot:setting=hard,seed=-1", "non-negative"),
                          ("few_shot:defect_type=crack", "only used with setting=hard"),
                          ("fewshot", "unknown split kind 'fewshot'")]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            SplitSpec.parse(text)


def test_few_shot_general_moves_k_anomalies_from_test_to_train(root: Path) -> None:
    standard = SplitSpec().apply("demo", str(root), CATS)
    splits = SplitSpec.parse("few_shot:k=5").apply("demo", str(root), CATS, run_seed=0)
    for category in CATS:
        before, after = standard[category], splits[category]
        moved = [s for s in after.train if s.label == 1]
        assert len(moved) == 5 and all(s.mask_path and s.category == category for s in moved)
        assert {s.path for s in moved}.isdisjoint(s.path for s in after.test)  # never evaluated
        assert {s.path for s in after.test} | {s.path for s in moved} == {s.path for s in before.test}
        assert after.train_normal == before.train and after.counts()["train_anomalous"] == 5
        assert after.recipe == {"kind": "few_shot", "defect_type": None, "k": 5, "setting": "general", "seed": 0}
        # One-class methods never see the labelled anomalies; few-shot supervised methods do.
        assert training_samples("one_class", after) == before.train
        assert training_samples("few_shot_supervised", after) == after.train


def test_few_shot_draws_are_seeded_nested_and_independent_of_listing_order(root: Path, tmp_path: Path) -> None:
    def drawn(spec: str, seed: int, where: Path = root) -> dict[str, list[str]]:
        splits = SplitSpec.parse(spec).apply("demo", str(where), CATS, run_seed=seed)
        return {c: s.relative_paths(x for x in s.train if x.label == 1) for c, s in splits.items()}

    ten = drawn("few_shot:k=10", 0)
    assert drawn("few_shot:k=10", 0) == ten  # same seed, same files
    assert drawn("few_shot:k=10", 1) != ten  # another seed, another draw
    assert drawn("few_shot:k=10,seed=0", 1) == ten  # a fixed recipe seed wins over the run's
    one = drawn("few_shot:k=1", 0)
    assert all(set(one[c]) <= set(ten[c]) for c in CATS)  # k=1 is one of the ten, as in DRA
    # A copy of the data elsewhere (another machine, other inode order) gives the same relative draw.
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert drawn("few_shot:k=10", 0, copy) == ten


def test_few_shot_hard_draws_one_defect_type_and_removes_it_from_the_test_set(root: Path) -> None:
    splits = SplitSpec.parse("few_shot:k=2,setting=hard").apply("demo", str(root), CATS, run_seed=0)
    for split in splits.values():
        [chosen] = {s.defect_type for s in split.train if s.label == 1}
        assert chosen not in {s.defect_type for s in split.test}
        assert split.counts()["test_anomalous"] == 12 - 3  # the whole type (3 images) left the test set
    fixed = SplitSpec.parse("few_shot:k=3,setting=hard,defect_type=hole").apply("demo", str(root), ["grass"], 0)
    assert {s.defect_type for s in fixed["grass"].train if s.label == 1} == {"hole"}
    with pytest.raises(DatasetError, match="defect type 'crack' not in the test set of demo/grass"):
        SplitSpec.parse("few_shot:k=1,setting=hard,defect_type=crack").apply("demo", str(root), ["grass"], 0)
    with pytest.raises(DatasetError, match="has only 3 anomalous test image"):
        SplitSpec.parse("few_shot:k=4,setting=hard,defect_type=hole").apply("demo", str(root), ["grass"], 0)


def test_content_hash_follows_the_files_not_their_order(root: Path, tmp_path: Path) -> None:
    split = load_split("demo", root, "brick")
    digest = split.content_hash()
    assert len(digest) == 64 and load_split("demo", root, "brick").content_hash() == digest
    shuffled = type(split)(**{**split.__dict__, "train": split.train[::-1], "test": split.test[::-1]})
    assert shuffled.content_hash() == digest
    copy = tmp_path / "demo"
    shutil.copytree(root, copy)
    assert load_split("demo", copy, "brick").content_hash() == digest  # relative paths: the root may move
    victim = sorted((copy / "brick" / "train" / "good").iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"\0")  # one byte more in one training image
    assert load_split("demo", copy, "brick").content_hash() != digest
    few = SplitSpec.parse("few_shot:k=2").apply("demo", str(root), ["brick"], 0)["brick"]
    assert few.content_hash() != digest  # the same files in other roles


def test_learning_types_plan_units_and_reject_pairings_that_make_no_sense(root: Path) -> None:
    assert [u.categories for u in plan_fit_units("one_class", CATS)] == [["brick"], ["grass"]]
    assert [u.categories for u in plan_fit_units("few_shot_supervised", CATS)] == [["brick"], ["grass"]]
    assert [u.categories for u in plan_fit_units("multi_class", CATS)] == [CATS]
    spec = RunSpec(method="patchcore", dataset="demo", root=str(root), categories=CATS, preset="fast",
                   weights="random", overrides={"crop": 64, "resize": 64},
                   split=SplitSpec.parse("few_shot:k=2").to_dict())
    plan = spec.prepare()  # a one-class method runs on a few-shot split (and ignores the anomalies)
    assert plan.splits["brick"].counts()["train_anomalous"] == 2 and len(plan.units) == 2
    with pytest.raises(ConfigError, match="categories repeat"):
        RunSpec(method="patchcore", dataset="demo", root=str(root), categories=["brick", "brick"]).prepare()
