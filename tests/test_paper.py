"""Paper-reported vs reproduced: the versioned table of paper numbers, the setting matcher, `iad export --view paper`.

Results are stored through `db.queries` (create -> claim -> complete) in a tmp SQLite database, with configs
chosen to match or miss the papers' settings.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from ad_core.analysis import paper
from dashboard.sample_data import Image, store_job
from db import results
from db.evidence import configs_by_hash
from workers.cli import main as iad

IMAGES = [Image(f"/data/x/{i}.png", i % 2, "good" if i % 2 == 0 else "scratch", 0.1 * i) for i in range(4)]
# The official PatchCore WR50 baseline's setting (paper preset of this code).
WRN50_224 = {"backbone": "wide_resnet50_2.tv_in1k", "weights": "imagenet", "resize": 256, "crop": 224,
             "coreset_ratio": 0.1, "num_neighbors": 1, "target_embed_dim": 1024}
FAST = {"backbone": "tf_efficientnet_lite0", "weights": "bundled", "resize": 128, "crop": 128, "coreset_ratio": 0.05,
        "num_neighbors": 1, "target_embed_dim": 1024}


def put(category: str, metrics: dict, config: dict, preset: str | None, frame: str = "native") -> int:
    return store_job("patchcore", "mvtec", "/data/mvtec", category, 0, metrics, IMAGES, preset=preset, config=config,
                     frame=frame)


# --- the table ----------------------------------------------------------------------------------------------------


def _value(table: pd.DataFrame, **where: str) -> list[float]:
    mask = pd.Series(True, index=table.index)
    for key, value in where.items():
        mask &= table[key] == value
    return table.loc[mask, "value"].tolist()


def test_paper_table_holds_the_sourced_numbers_with_their_setting() -> None:
    table = paper.load_paper_numbers()
    assert (table["source"].str.len() > 0).all() and (table["table"].str.len() > 0).all()
    assert set(table["evidence"]) <= set(paper.EVIDENCE)
    # ReConPatch: single WRN-50 and the 480 px ensemble on MVTec AD, BTAD.
    assert _value(table, method="reconpatch", dataset="mvtec", metric="image_auroc", backbone="wide_resnet50_2") == [99.56]
    ensemble = table[(table["method"] == "reconpatch") & table["backbone"].str.startswith("ensemble:")]
    assert _value(ensemble, metric="image_auroc", resolution="480") == [99.72]
    assert _value(table, method="reconpatch", dataset="btad", metric="image_auroc") == [95.8]
    # PRN: MVTec AD means; LTAD: the two long-tailed profiles; ISSTAD's abstract.
    prn = table[(table["method"] == "prn") & (table["category"] == "mean")].set_index("metric")["value"].to_dict()
    assert prn == {"image_auroc": 99.4, "pixel_auroc": 99.0, "aupro": 96.1, "pixel_ap": 78.6}
    ltad = table[table["method"] == "ltad"]
    assert sorted(ltad["value"]) == [87.36, 88.86, 93.83, 94.46]
    assert ltad["split"].str.startswith(paper.EXTERNAL).all()
    assert _value(table, method="isstad", metric="image_auroc") == [97.6]
    # PatchCore: the official WR50 baseline's released results (bottle and the MVTec AD mean).
    assert _value(table, method="patchcore", category="bottle", metric="image_auroc") == [100.0]
    assert _value(table, method="patchcore", category="mean", metric="image_auroc") == [99.16]
    assert _value(table, method="patchcore", category="mean", metric="pixel_auroc") == [98.11]
    pc = table[table["method"] == "patchcore"]
    assert set(pc["resolution"]) == {"224"} and set(pc["backbone"]) == {"wide_resnet50_2"}
    assert pc["table"].str.contains("5adb469b75a07e1f051c7c7d5ff36508bc98b0d5").all()
    # Each (method, dataset, category, metric, setting) appears once.
    key = ["method", "dataset", "category", "metric", "backbone", "resolution", "split"]
    assert not table.duplicated(key).any()


def test_malformed_rows_are_refused_with_their_line(tmp_path: Path) -> None:
    good = paper.PAPER_NUMBERS.read_text().splitlines()
    for bad, message in (
        (good[1].replace(",image_auroc,", ",img_auc,"), "unknown metric 'img_auc'"),
        (good[1].replace(",100.00,", ",1.00e3,"), "is not a percentage"),
        (good[1].replace(",224,", ",big,"), "resolution 'big'"),
    ):
        path = tmp_path / "numbers.csv"
        path.write_text("\n".join([good[0], good[2], bad]) + "\n")
        with pytest.raises(ValueError, match=rf"numbers.csv line 3: .*{message}"):
            paper.load_paper_numbers(path)


def test_package_data_ships_the_table() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["ad_core"]
    assert paper.PAPER_NUMBERS.relative_to(paper.PAPER_NUMBERS.parents[1]).as_posix() in shipped


# --- matching ---------------------------------------------------------------------------------------------------


def _row(**kw: str) -> dict:
    base = dict(method="patchcore", dataset="mvtec", category="bottle", metric="image_auroc", value="100.0",
                backbone="wide_resnet50_2", resolution="224", split="standard", frame="native", requires="",
                assumed="", setting="", source="s", table="t", page="-", evidence="C", url="", note="")
    return {**base, **kw}


def _setting(**kw) -> paper.RunSetting:  # noqa: ANN003
    base = dict(method="patchcore", dataset="mvtec", backbone="wide_resnet50_2", resolution=224,
                split_key='{"kind": "standard", "seed": null}', split_label="standard", frame="native",
                config=dict(WRN50_224))
    return paper.RunSetting(**{**base, **kw})


def test_matching_names_every_difference_of_the_setting() -> None:
    assert paper.mismatches(_row(), _setting()) == []
    assert paper.mismatches(_row(), _setting(backbone="tf_efficientnet_lite0", resolution=128)) == [
        "backbone: paper wide_resnet50_2, this run tf_efficientnet_lite0", "resolution: paper 224, this run 128"]
    assert paper.mismatches(_row(), _setting(random_weights=True)) == ["this run used random backbone weights"]
    # Pixel metrics also need the paper's frame; image metrics do not depend on it.
    assert paper.mismatches(_row(), _setting(frame="full:256")) == []
    assert paper.mismatches(_row(metric="pixel_auroc"), _setting(frame="full:256")) == [
        "pixel metrics: paper in the native frame, this table in full:256"]
    # Required config fields (the coreset ratio of the released model).
    row = _row(requires="coreset_ratio=0.1;num_neighbors=1")
    assert paper.mismatches(row, _setting()) == []
    assert paper.mismatches(row, _setting(config={**WRN50_224, "coreset_ratio": 0.01})) == [
        "coreset_ratio: paper 0.1, this run 0.01"]
    # Split recipes compare by key; a paper's own lists never match a recipe of ours.
    few = _row(split="few_shot:k=10")
    assert paper.mismatches(few, _setting())[0].startswith("split: paper few_shot(k=10, general), this run standard")
    from ad_core.splits import SplitSpec

    spec = SplitSpec.parse("few_shot:k=10")
    assert paper.mismatches(few, _setting(split_key=spec.key, split_label=spec.label)) == []
    external = _row(split="external:LTAD exp100 lists", backbone="?", resolution="?")
    assert paper.mismatches(external, _setting()) == [
        "the paper's backbone is not known", "the paper's input size is not known",
        "split: the paper trained on its own lists (LTAD exp100 lists), not on this run's standard"]
    # Ensembles are their own backbone class.
    assert paper.run_backbone({"backbone": "wide_resnet101_2.tv_in1k", "ensemble_backbones": [
        "wide_resnet101_2.tv_in1k", "resnext101_32x8d.tv_in1k", "densenet201.tv_in1k"]}) == \
        "ensemble:wide_resnet101_2+resnext101_32x8d+densenet201"


def test_paper_next_to_reproduced_only_where_the_setting_matches(url: str) -> None:
    put("bottle", {"image_auroc": 0.99, "pixel_auroc": 0.97}, WRN50_224, preset="paper")
    put("bottle", {"image_auroc": 0.95, "pixel_auroc": 0.93}, FAST, preset="fast")
    board = results.leaderboard("mvtec", "image_auroc", eval_frame="native")
    table = paper.paper_vs_reproduced(board, configs_by_hash(board)).set_index(["method", "variant", "category"])

    same = table.loc[("patchcore", "patchcore (paper)", "bottle")]
    assert same["comparable"] and same["paper"] == 100.0
    assert same["reproduced"] == pytest.approx(99.0) and same["difference"] == pytest.approx(-1.0)
    assert "amazon-science/patchcore-inspection" in same["source"] and same["evidence"] == "C"
    assert paper.summary_line(same.to_dict()) == (
        "paper: wide_resnet50_2 at 224, standard split; this run: wide_resnet50_2 at 224, standard split, frame "
        "native — comparable: reproduced 99.00 vs paper 100.00 (-1.00)")

    fast = table.loc[("patchcore", "patchcore (fast)", "bottle")]
    assert not fast["comparable"] and pd.isna(fast["reproduced"]) and pd.isna(fast["difference"])
    assert fast["why"] == ("backbone: paper wide_resnet50_2, this run tf_efficientnet_lite0; resolution: paper 224, "
                           "this run 128; coreset_ratio: paper 0.1, this run 0.05")
    assert "— not comparable (backbone: paper wide_resnet50_2" in paper.summary_line(fast.to_dict())

    # The dataset mean of a paper is over all 15 classes: a one-class run is no mean to compare with.
    mean = table.loc[("patchcore", "patchcore (paper)", "mean")]
    assert not mean["comparable"] and "covers 1 of the 15 classes" in mean["why"]
    # Methods without results still show their paper numbers, with their source; other classes are left out.
    reconpatch = table.loc["reconpatch"]
    assert set(reconpatch.index.get_level_values("category")) == {"mean"}
    assert (reconpatch["why"] == "no result of reconpatch in this table").all()
    assert 99.72 in set(reconpatch["paper"]) and reconpatch["source"].str.contains("WACV 2024").all()
    assert "cable" not in set(table.index.get_level_values("category"))

    # Pixel metrics in the full frame are not the papers' (native) pixels.
    put("bottle", {"image_auroc": 0.99, "pixel_auroc": 0.97}, WRN50_224, preset="paper", frame="full:256")
    full = results.leaderboard("mvtec", "pixel_auroc", eval_frame="full:256")
    pixel = paper.paper_vs_reproduced(full, configs_by_hash(full)).set_index(["variant", "category"])
    assert "pixel metrics: paper in the native frame, this table in full:256" in pixel.loc[
        ("patchcore (paper)", "bottle"), "why"]


def test_export_view_paper_renders_rows_with_their_source(url: str, tmp_path: Path, capsys) -> None:
    put("bottle", {"image_auroc": 0.99, "pixel_auroc": 0.97}, WRN50_224, preset="paper")
    assert iad(["export", "--dataset", "mvtec", "--metric", "image_auroc", "--frame", "native", "--view", "paper",
                "--format", "csv"]) == 0
    captured = capsys.readouterr()
    printed = pd.read_csv(io.StringIO(captured.out))
    row = printed[(printed["method"] == "patchcore") & (printed["category"] == "bottle")].iloc[0]
    assert row["paper"] == 100.0 and row["reproduced"] == pytest.approx(99.0) and bool(row["comparable"])
    assert "results.csv" in row["source"]
    assert "comparable: reproduced 99.00 vs paper 100.00 (-1.00)" in captured.err
    for fmt in ("md", "latex"):
        out = tmp_path / f"paper.{fmt}"
        assert iad(["export", "--dataset", "mvtec", "--metric", "image_auroc", "--frame", "native", "--view",
                    "paper", "--format", fmt, "--out", str(out)]) == 0
        text = out.read_text()
        assert "99.00" in text and "100.00" in text and "-1.00" in text
        assert "patchcore-inspection" in text and "WACV 2024" in text
    assert "\\begin{tabular}" in (tmp_path / "paper.latex").read_text()
