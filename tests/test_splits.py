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


def test_few_shot_source_annotated_draws_only_from_an_annotation_sets_images(root: Path, tmp_path: Path) -> None:
    """`source=annotated`: the k labelled anomalies come only from images an annotation set labels (with the
    set's masks); the default `source=all` leaves recipes (and their keys) as they were; the ground truth's
    entries must hash to the version the run claims."""
    import numpy as np
    from PIL import Image

    from ad_core.annotations import GroundTruth, ground_truth_doc, gt_version_key

    assert SplitSpec.parse("few_shot:k=10,source=all") == SplitSpec.parse("few_shot:k=10")  # key unchanged
    assert "source" not in SplitSpec.parse("few_shot:k=10").key
    annotated = SplitSpec.parse("few_shot:k=2,source=annotated")
    assert annotated.label == "few_shot(k=2, general, annotated)" and annotated.key != SplitSpec.parse("few_shot:k=2").key
    with pytest.raises(ConfigError, match="source must be 'all' or 'annotated'"):
        SplitSpec.parse("few_shot:source=mine")

    standard = SplitSpec().apply("demo", str(root), ["brick"])["brick"]
    goods = sorted((s for s in standard.test if s.label == 0), key=lambda s: s.path)  # 2 good test images
    entries = {}
    for i, sample in enumerate(goods):
        mask = np.zeros((64, 64), bool)
        mask[5 + i: 20 + i, 5:30] = True
        path = tmp_path / f"mask{i}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        entries[Path(sample.path).relative_to(root).as_posix()] = GroundTruth.of(1, "smudge", mask, str(path))
    doc = ground_truth_doc(gt_version_key(entries), "two smudges", entries)
    spec = RunSpec(method="patchcore", dataset="demo", root=str(root), categories=["brick"],
                   split=SplitSpec.parse("few_shot:k=1,source=annotated").to_dict(), ground_truth=doc, seed=0,
                   backbone="tf_efficientnet_lite0", weights="random")
    after = spec.prepare().splits["brick"]
    [moved] = [s for s in after.train if s.label == 1]
    assert moved.path in {s.path for s in goods} and moved.annotated and moved.mask_path.startswith(str(tmp_path))
    [other] = [s for s in after.test if s.path in {g.path for g in goods}]
    assert (other.label, other.defect_type, other.annotated) == (1, "smudge", True)  # relabelled, still tested
    assert len(after.test) == len(standard.test) - 1
    # Seeds draw among the annotated images only.
    drawn = {RunSpec(**{**spec.to_dict(), "seed": s}).prepare().splits["brick"].train[-1].path for s in range(6)}
    assert drawn == {s.path for s in goods}

    # Refusals: no set, too few annotated anomalies, entries that do not hash to the claimed version.
    with pytest.raises(ConfigError, match="draws its labelled anomalies from an annotation set"):
        RunSpec(**{**spec.to_dict(), "ground_truth": None}).prepare()
    with pytest.raises(DatasetError, match="has 2 annotated anomalous test image"):
        RunSpec(**{**spec.to_dict(), "split": SplitSpec.parse("few_shot:k=3,source=annotated").to_dict()}).prepare()
    tampered = {**doc, "entries": {**doc["entries"]}}
    tampered["entries"].pop(next(iter(tampered["entries"])))
    with pytest.raises(ConfigError, match="annotation set changed since the run was planned"):
        RunSpec(**{**spec.to_dict(), "ground_truth": tampered}).prepare()
