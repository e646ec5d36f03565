"""Imbalance analysis (issue 10): points, trend lines, head/medium/tail groups, the drop against the standard
split, the exports and `iad export --view imbalance`, and the dashboard page.

The analysis tests run on small hand-made results frames (the columns of `db.results.results_frame`) whose
group means are computed by hand below; the command and the page read results stored through `db.queries`
(`dashboard.sample_data.store_job`) in a private database.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ad_core.analysis import export
from ad_core.analysis import imbalance as imb
from ad_core.analysis.leaderboard import STANDARD_SPLIT_KEY
from ad_core.frame import DEFAULT_FRAME, frame_identity
from ad_core.splits import split_identity

LT_RECIPE = {"kind": "long_tail", "profile": "exp", "ratio": 100, "seed": None}
LT_KEY, LT_LABEL, LT_PROTOCOL = split_identity(LT_RECIPE)

# Two seeds of a seed=None recipe draw opposite head/tail classes: a class's count depends on the seed.
COUNTS = {0: {"a": 200, "b": 150, "c": 50, "d": 30, "e": 10, "f": 5},
          1: {"a": 5, "b": 10, "c": 30, "d": 50, "e": 150, "f": 200}}
PC = {0: {"a": 0.99, "b": 0.97, "c": 0.90, "d": 0.88, "e": 0.80, "f": 0.76},
      1: {"a": 0.70, "b": 0.74, "c": 0.86, "d": 0.90, "e": 0.95, "f": 0.97}}
_ids = itertools.count(1)


def row(method: str, category: str, seed: int, value: float, n_train: float | None, *, split: dict | None = None,
        metric: str = "image_auroc", version: str = "iad-metrics-1", random: bool = False, job_id: int | None = None,
        config_hash: str = "cfg00001", preset: str = "fast", split_hash: str | None = None,
        eval_frame: str = DEFAULT_FRAME) -> dict:
    key, label, protocol = split_identity(split if split is not None else LT_RECIPE)
    frame_key, frame_label, frame_protocol = frame_identity(eval_frame)
    job = next(_ids) if job_id is None else job_id
    return {"job_id": job, "category": category, "metric": metric, "value": value, "metric_version": version,
            "split_hash": split_hash or f"h-{category}-{seed}-{key}", "n_train": n_train, "n_train_anomalous": 0,
            "method": method, "preset": preset, "seed": seed, "device": "cpu", "group_id": "g", "dataset": "mvtec",
            "root": "/data/mvtec", "split": split, "random_weights": random,
            "weights_source": "random" if random else "bundled", "finished_at": pd.Timestamp("2025-01-01")
            + pd.Timedelta(seconds=job), "config_hash": config_hash, "split_key": key, "split_label": label,
            "protocol": protocol, "eval_frame": frame_key, "eval_frame_label": frame_label,
            "eval_frame_protocol": frame_protocol}


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


@pytest.fixture
def results() -> pd.DataFrame:
    """patchcore: 6 classes x 2 seeds (PC); reconpatch: seed 0 only, 0.85 everywhere; isstad: random weights."""
    rows = [row("patchcore", c, s, PC[s][c], COUNTS[s][c]) for s in (0, 1) for c in COUNTS[s]]
    rows += [row("reconpatch", c, 0, 0.85, COUNTS[0][c]) for c in COUNTS[0]]
    rows += [row("isstad", c, 0, 0.999, COUNTS[0][c], random=True) for c in COUNTS[0]]
    return frame(rows)


# --- grouping conventions ------------------------------------------------------------------------------------------


def test_literature_grouping_thresholds() -> None:
    g = imb.literature_grouping()
    assert [g.group_of(n) for n in (5, 19, 20, 50, 100, 101, 400)] == \
        ["few", "few", "medium", "medium", "medium", "many", "many"]
    assert g.rules() == {"many": "n > 100", "medium": "20 ≤ n ≤ 100", "few": "n < 20"}
    assert "Liu et al." in g.describe() and "n > 100" in g.describe()


def test_tertile_grouping_splits_the_counts_in_thirds() -> None:
    counts = [2, 3, 4, 6, 8, 9]
    g = imb.tertile_grouping(counts)
    q1, q2 = np.quantile(counts, [1 / 3, 2 / 3])
    assert (g.few_below, g.many_above) == pytest.approx((q1, q2))
    assert (q1, q2) == pytest.approx((11 / 3, 20 / 3))
    assert [g.group_of(n) for n in counts] == ["few", "few", "medium", "medium", "many", "many"]
    assert g.describe() == "tertiles of the split's 6 per-class training counts: many n > 6.67, medium 3.67 < n ≤ 6.67, few n ≤ 3.67"
    # Integer quantiles: n equal to the lower threshold is few, as `few n <= q` says.
    assert [imb.tertile_grouping(range(1, 8)).group_of(n) for n in range(1, 8)] == \
        ["few"] * 3 + ["medium"] * 2 + ["many"] * 2
    with pytest.raises(ValueError, match="tertiles"):
        imb.tertile_grouping([])
    with pytest.raises(ValueError, match="unknown grouping"):
        imb.make_grouping("quartiles")


# --- points, groups and the gap --------------------------------------------------------------------------------------


def test_points_are_per_variant_category_and_seed_with_their_own_count(results: pd.DataFrame) -> None:
    points = imb.select_points(results, "image_auroc")
    assert points.split_key == LT_KEY  # the long-tailed recipe is the default
    pc = points.frame[points.frame["variant"] == "patchcore (fast)"].set_index(["category", "seed"])
    assert len(pc) == 12
    assert pc.at[("a", 0), "n_train"] == 200 and pc.at[("a", 1), "n_train"] == 5
    assert points.variants[-1] == "isstad (fast)" and points.label("isstad (fast)").endswith("random weights")
    assert sorted(points.counts["n_train"]) == sorted([*COUNTS[0].values(), *COUNTS[1].values()])


def test_group_means_std_over_seeds_and_gap_by_hand(results: pd.DataFrame) -> None:
    board = imb.group_table(imb.select_points(results, "image_auroc"), "literature")
    assert list(board.mean.columns) == ["many", "medium", "few", "all", "gap"]
    # Per seed (patchcore): seed 0 many {a, b} .98, medium {c, d} .89, few {e, f} .78, all 5.30/6, gap .20;
    # seed 1 many {e, f} .96, medium {c, d} .88, few {a, b} .72, all 5.12/6, gap .24.
    m, s, n = board.mean.loc["patchcore (fast)"], board.std.loc["patchcore (fast)"], board.n.loc["patchcore (fast)"]
    assert m["many"] == pytest.approx(0.97) and s["many"] == pytest.approx(np.std([0.98, 0.96], ddof=1))
    assert m["medium"] == pytest.approx(0.885) and s["medium"] == pytest.approx(np.std([0.89, 0.88], ddof=1))
    assert m["few"] == pytest.approx(0.75) and s["few"] == pytest.approx(np.std([0.78, 0.72], ddof=1))
    assert m["all"] == pytest.approx((5.30 / 6 + 5.12 / 6) / 2) and s["all"] == pytest.approx(np.std([5.30 / 6, 5.12 / 6], ddof=1))
    assert m["gap"] == pytest.approx(0.22) and s["gap"] == pytest.approx(np.std([0.20, 0.24], ddof=1))
    assert (n == 2).all()
    # One seed: no std; the random-weight row is last and never ranked; the gap is never ranked.
    assert board.mean.at["reconpatch (fast)", "gap"] == pytest.approx(0.0)
    assert pd.isna(board.std.at["reconpatch (fast)", "many"])
    assert list(board.mean.index) == ["patchcore (fast)", "reconpatch (fast)", "isstad (fast)"]  # by "all"
    assert board.rank.at["patchcore (fast)", "many"] == 1 and board.rank.at["reconpatch (fast)", "many"] == 2
    assert board.rank.at["isstad (fast)", "many"] == 0 and (board.rank["gap"] == 0).all()
    assert board.cell("patchcore (fast)", "few") == "0.750 ± 0.042"
    assert board.group_sizes == {"many": (2, 2), "medium": (2, 2), "few": (2, 2)}
    assert "fewer seeds for reconpatch (fast): 1" in board.caption()
    # The per-seed table the cells are the mean of.
    per_seed = imb.per_seed_groups(imb.select_points(results, "image_auroc"), imb.literature_grouping())
    pc = per_seed[per_seed["variant"] == "patchcore (fast)"].set_index(["seed", "group"])["value"]
    assert pc[(0, "many")] == pytest.approx(0.98) and pc[(1, "few")] == pytest.approx(0.72)


def test_tertiles_and_empty_groups_never_invent_numbers() -> None:
    counts = {"a": 2, "b": 3, "c": 4, "d": 6, "e": 8, "f": 9}
    values = {"a": 0.60, "b": 0.70, "c": 0.80, "d": 0.82, "e": 0.90, "f": 0.94}
    results = frame([row("patchcore", c, 0, values[c], counts[c]) for c in counts])
    points = imb.select_points(results, "image_auroc")
    # Literature: every class has < 20 images -> many and medium are empty, and so is the gap.
    lit = imb.group_table(points, "literature")
    assert lit.empty_groups == ["many", "medium"]
    assert lit.mean.loc["patchcore (fast)", ["many", "medium", "gap"]].isna().all()
    assert lit.mean.at["patchcore (fast)", "few"] == pytest.approx(np.mean(list(values.values())))
    assert lit.cells().loc["patchcore (fast)", "gap"] == "–"
    assert "no class in the many and medium group, so no gap" in lit.caption()
    assert "single seed" in lit.caption()
    # Tertiles of the split's own counts: few {a, b}, medium {c, d}, many {e, f}.
    ter = imb.group_table(points, "tertiles")
    m = ter.mean.loc["patchcore (fast)"]
    assert m["few"] == pytest.approx(0.65) and m["medium"] == pytest.approx(0.81) and m["many"] == pytest.approx(0.92)
    assert m["gap"] == pytest.approx(0.27)
    assert "tertiles of the split's 6 per-class training counts" in ter.caption()
    assert "many = more than 6.67 (2 classes)" in ter.caption() and "few = at most 3.67 (2 classes)" in ter.caption()


def test_recipes_versions_reruns_and_changed_data_are_never_pooled(results: pd.DataFrame) -> None:
    extra = [
        row("patchcore", "a", 0, 0.10, 200, split={"kind": "few_shot", "k": 1, "setting": "general", "seed": None}),
        row("patchcore", "a", 0, 0.20, 200, version="iad-metrics-0", job_id=-5),
        row("patchcore", "a", 0, 0.30, 200, split_hash="h-other-data", job_id=0),  # older job on changed data
    ]
    points = imb.select_points(pd.concat([results, frame(extra)], ignore_index=True), "image_auroc")
    pc = points.frame[points.frame["variant"] == "patchcore (fast)"].set_index(["category", "seed"])
    assert pc.at[("a", 0), "value"] == 0.99
    assert points.other_versions == ["iad-metrics-0"] and points.excluded == 1
    assert points.other_splits and LT_LABEL not in points.other_splits
    # A re-run (a later job) of the same variant, class and seed replaces the older one.
    rerun = frame([row("patchcore", "a", 0, 0.50, 200)])
    again = imb.select_points(pd.concat([results, rerun], ignore_index=True), "image_auroc").frame
    assert again.set_index(["variant", "category", "seed"]).at[("patchcore (fast)", "a", 0), "value"] == 0.50
    # Results without a stored training count are left out and counted.
    old = frame([row("padim", "a", 0, 0.9, None)])
    assert imb.select_points(pd.concat([results, old], ignore_index=True), "image_auroc").uncounted == 1
    with pytest.raises(ValueError, match="no results on split"):
        imb.select_points(results, "image_auroc", split="long_tail(nope)")
    nothing = imb.group_table(imb.select_points(results, "image_auroc", methods=["nope"]))
    assert nothing.empty and "Image AUROC" in nothing.caption()
    with pytest.raises(ValueError, match="empty"):
        export.to_latex(nothing)


# --- trend lines and scatter -------------------------------------------------------------------------------------------


def test_trend_slope_matches_numpy_least_squares(results: pd.DataFrame) -> None:
    points = imb.select_points(results, "image_auroc")
    trends = imb.trend_lines(points)
    pc = points.frame[points.frame["variant"] == "patchcore (fast)"]
    slope, intercept = np.polyfit(np.log10(pc["n_train"]), pc["value"], 1)
    assert trends.at["patchcore (fast)", "slope"] == pytest.approx(slope)
    assert trends.at["patchcore (fast)", "intercept"] == pytest.approx(intercept)
    assert trends.at["patchcore (fast)", "r"] == pytest.approx(np.corrcoef(np.log10(pc["n_train"]), pc["value"])[0, 1])
    assert trends.at["patchcore (fast)", "n_points"] == 12
    assert trends.at["reconpatch (fast)", "slope"] == pytest.approx(0.0)
    one = imb.select_points(frame([row("x", "a", 0, 0.9, 10), row("x", "b", 0, 0.8, 10)]), "image_auroc")
    assert np.isnan(imb.trend_lines(one).at["x (fast)", "slope"])  # one distinct count: no line


def test_scatter_points_pool_seeds_only_with_the_same_count() -> None:
    rows = [row("x", "a", s, v, 40) for s, v in ((0, 0.8), (1, 0.9))] + [row("x", "a", 2, 0.5, 4)]
    sp = imb.scatter_points(imb.select_points(frame(rows), "image_auroc")).set_index("n_train")
    assert sp.at[40, "value"] == pytest.approx(0.85) and sp.at[40, "seeds"] == "0, 1"
    assert sp.at[4, "seeds"] == "2" and sp.at[40, "values"] == "0.800, 0.900"


# --- long-tailed vs full -----------------------------------------------------------------------------------------------


def test_drop_table_against_the_standard_split(results: pd.DataFrame) -> None:
    standard = {"kind": "standard", "seed": None}
    full = {c: 0.995 - 0.005 * i for i, c in enumerate("abcdef")}
    extra = [row("patchcore", c, s, full[c] + 0.002 * s, 250, split=standard) for c in full for s in (0, 1)]
    extra.append(row("reconpatch", "a", 0, 0.95, 250, split=standard, config_hash="cfg99999"))  # another config
    drop = imb.drop_table(pd.concat([results, frame(extra)], ignore_index=True), "image_auroc")
    table = drop.table.set_index(["variant", "category", "n_train"]).sort_index()
    # Class a is a head class in seed 0 (200 images) and a tail class in seed 1 (5): two rows, never averaged.
    head, tail = table.loc[("patchcore (fast)", "a", 200)], table.loc[("patchcore (fast)", "a", 5)]
    assert head["long_tail"] == pytest.approx(0.99) and head["seeds"] == "0" and tail["seeds"] == "1"
    assert head["full"] == pytest.approx(0.996) and head["full_seeds"] == 2 and head["n_train_full"] == 250
    assert head["drop"] == pytest.approx(0.006) and tail["drop"] == pytest.approx(0.996 - 0.70)
    assert tail["relative_drop"] == pytest.approx((0.996 - 0.70) / 0.996)
    assert len(table.loc["patchcore (fast)"]) == 12 and table.loc["patchcore (fast)", "full"].notna().all()
    # reconpatch's standard run has another config: not the same variant, so its drop is empty...
    assert table.loc[("reconpatch (fast)", "a", 200), ["full", "drop"]].isna().all()
    # Numbers are floats (NaN where there is none), so the page shows blanks, never "None".
    assert all(drop.table[c].dtype == float for c in ("long_tail_std", "full", "full_std", "drop", "relative_drop"))
    # ...and its 6 long-tailed jobs (and isstad's) are the missing standard runs, one row per job.
    missing = drop.missing
    assert set(missing["method"]) == {"reconpatch", "isstad"} and len(missing) == 12
    assert all(m == c for m, c in zip(missing["missing_categories"], missing["categories"], strict=True))
    # On the standard split itself there is nothing to compare.
    assert imb.drop_table(pd.concat([results, frame(extra)]), "image_auroc", split=STANDARD_SPLIT_KEY).note


def test_drop_lists_a_multi_class_job_once_with_all_its_classes() -> None:
    rows = [row("unified", c, 0, 0.9, COUNTS[0][c], job_id=500) for c in COUNTS[0]]
    rows += [row("unified", c, 0, 0.95, 250, split={"kind": "standard", "seed": None}, job_id=600) for c in "abc"]
    drop = imb.drop_table(frame(rows), "image_auroc")
    assert drop.missing[["job_id", "seed"]].values.tolist() == [[500, 0]]
    assert drop.missing.at[0, "missing_categories"] == ["d", "e", "f"]
    assert drop.missing.at[0, "categories"] == list("abcdef")


# --- export ------------------------------------------------------------------------------------------------------------


def test_group_table_exports_latex_csv_markdown(results: pd.DataFrame) -> None:
    board = imb.group_table(imb.select_points(results, "image_auroc", dataset="mvtec"), "literature")
    latex = export.to_latex(board)
    assert latex.count(r"\begin{table}") == 1 and latex.count(r"\end{table}") == 1
    assert latex.count(r"\begin{tabular}{lccccc}") == 1 and latex.count(r"\end{tabular}") == 1
    assert r"\toprule" in latex and r"\midrule" in latex and r"\bottomrule" in latex
    assert latex.count("{") == latex.count("}")
    assert r"\textbf{0.970 $\pm$ 0.014}" in latex and r"\underline{0.850}" in latex
    body = latex[latex.index(r"\midrule"):latex.index(r"\bottomrule")]
    assert all(line.count("&") == 5 for line in body.splitlines()[1:] if line.strip())
    caption = re.search(r"\\caption\{(.*)\}", latex).group(1)
    for text in ("Image AUROC on mvtec", "Liu et al.", "many = more than 100 (2 classes)",
                 "medium = 20 to 100 (2 classes)", "few = fewer than 20 (2 classes) training images",
                 "mean $\\pm$ std over 2 seeds (0, 1) of the per-seed group mean", "metric version iad-metrics-1",
                 "gap = many - few"):
        assert text in caption, text
    assert not re.search("[<>≤≥−]", caption), "pdflatex cannot typeset these in text mode"
    assert export.latex_escape(LT_LABEL) in caption
    back = pd.read_csv(io.StringIO(export.to_csv(board)))
    pd.testing.assert_frame_equal(back, board.long(), check_dtype=False)
    assert set(back["category"]) == {"many", "medium", "few", "all", "gap"} and back["grouping"].str.contains("n > 100").all()
    md = export.to_markdown(board)
    assert md.splitlines()[0] == "| method | many | medium | few | all | gap |"
    assert "**0.970 ± 0.014**" in md and "random weights" in md


# --- iad export --view imbalance and the page (stored results) -----------------------------------------------------------


@pytest.fixture
def iad_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'iad.sqlite'}"
    monkeypatch.setenv("IAD_HOME", str(home))
    monkeypatch.setenv("IAD_DATABASE_URL", url)
    monkeypatch.setenv("IAD_ARTIFACTS", str(home / "artifacts"))
    monkeypatch.setenv("IAD_QUEUE_PREFIX", "imbtest-")
    monkeypatch.delenv("IAD_BROKER_URL", raising=False)
    yield url
    from db.session import dispose_engine

    dispose_engine(url)


def store_long_tail(root: str, counts: dict[int, dict[str, int]], seeds=(0, 1), methods=("patchcore", "reconpatch"),
                    standard: dict[str, float] | None = None) -> None:
    """Long-tailed results (per seed its own counts), plus standard-split results of patchcore."""
    from dashboard.sample_data import Image, store_job

    images = [Image(f"{root}/x/{i}.png", i % 2, "good" if i % 2 == 0 else "hole", 0.1 * i) for i in range(4)]
    for method, seed in itertools.product(methods, seeds):
        for i, (category, n) in enumerate(counts[seed].items()):
            value = 0.6 + 0.15 * np.log10(n) - (0.05 if method == "reconpatch" else 0.0) + 0.001 * i
            store_job(method, "demo", root, category, seed, {"image_auroc": value, "pixel_auroc": value - 0.01},
                      images, split=LT_RECIPE, split_hash=f"lt-{category}-{seed}", n_train=n)
    for category, value in (standard or {}).items():
        store_job("patchcore", "demo", root, category, 0, {"image_auroc": value, "pixel_auroc": value}, images,
                  split={"kind": "standard", "seed": None}, split_hash=f"std-{category}", n_train=10)


def test_export_command_imbalance_view(iad_env: str, capsys) -> None:
    from workers.cli import main

    store_long_tail("/data/demo", {0: {"brick": 200, "grass": 40, "gravel": 4}, 1: {"brick": 4, "grass": 40, "gravel": 200}})
    argv = ["export", "--dataset", "demo", "--metric", "image_auroc", "--view", "imbalance"]
    assert main([*argv, "--split", LT_LABEL, "--grouping", "literature", "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert r"\toprule" in latex and "many" in latex and "Liu et al." in latex and "over 2 seeds (0, 1)" in latex
    assert main([*argv, "--grouping", "tertiles", "--format", "csv"]) == 0
    back = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(back["variant"]) == {"patchcore (fast)", "reconpatch (fast)"} and (back["n_seeds"] == 2).all()
    assert back["grouping"].str.startswith("tertiles of the split's 6 per-class training counts").all()
    pc = back[back["variant"] == "patchcore (fast)"].set_index("category")["mean"]
    # many = the 200-image class: brick (value offset 0) in seed 0, gravel (offset 0.002) in seed 1.
    assert pc["many"] == pytest.approx(0.6 + 0.15 * np.log10(200) + 0.001)
    assert main([*argv, "--format", "md", "--efficiency"]) == 2
    assert main([*argv, "--split", "long_tail(nope)"]) == 2
    assert "no results on split" in capsys.readouterr().err
    assert imb.GROUPINGS == ("literature", "tertiles")  # the CLI's choices, spelled out to keep --help light


def test_page_renders_the_scatter_groups_and_launches_missing_standard_runs(iad_env: str, demo_root: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from db import queries

    app = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
    store_long_tail(str(demo_root), {0: {"brick": 200, "grass": 40, "gravel": 4}, 1: {"brick": 4, "grass": 40, "gravel": 200}},
                    standard={"brick": 0.99, "grass": 0.98, "gravel": 0.97})
    before = {j.id for j in queries.list_jobs(limit=None)}
    at = AppTest.from_file(app, default_timeout=180).run()
    at.switch_page("pages/imbalance.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="imb_split").value == LT_KEY
    chart = at.get("plotly_chart")[0]
    spec = json.loads(chart.proto.spec)
    assert spec["layout"]["xaxis"]["type"] == "log"
    names = {t.get("name") for t in spec["data"]}
    assert {"patchcore (fast)", "reconpatch (fast)"} <= names
    assert any("seed(s)" in t.get("hovertemplate", "") for t in spec["data"])
    table = at.table[0].value
    assert list(table.columns) == ["many", "medium", "few", "all", "gap"]
    assert re.fullmatch(r"0\.\d{3} ± 0\.\d{3}", table.loc["patchcore (fast)", "many"])
    assert any("mean over 2 seeds (0, 1) of the per-seed group mean" in m.value for m in at.markdown)
    assert [b.label for b in at.get("download_button")] == ["Download LaTeX", "Download CSV", "Download Markdown"]
    assert "--view imbalance" in at.code[-1].value
    # patchcore has a standard run for seed 0 only; reconpatch none: 3 + 6 long-tailed jobs lack a counterpart.
    drop = next(d.value for d in at.dataframe if "drop" in d.value.columns)
    # One row per class and long-tailed count: brick and gravel have 200 images in one seed and 4 in the other.
    assert sorted(drop.loc[drop["variant"] == "patchcore (fast)", "n_train"]) == [4, 4, 40, 200, 200]
    assert drop.loc[drop["variant"] == "patchcore (fast)", "drop"].notna().all()
    assert drop.loc[drop["variant"] == "reconpatch (fast)", "drop"].isna().all()
    button = at.button(key="imb_launch_full")
    assert button.label == "Launch the missing standard run(s) (9 job(s))"
    button.click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    new = [j for j in queries.list_jobs(limit=None) if j.id not in before]
    assert len(new) == 9 and {j.status for j in new} == {"queued"}
    assert all(j.split == {"kind": "standard", "seed": None} for j in new)
    assert sorted((j.method, j.categories[0], j.seed) for j in new) == sorted(
        [("patchcore", c, 1) for c in ("brick", "grass", "gravel")]
        + [("reconpatch", c, s) for c in ("brick", "grass", "gravel") for s in (0, 1)])
    lt_job = next(j for j in queries.list_jobs(limit=None) if j.method == "reconpatch" and j.split.get("kind") == "long_tail")
    assert all(j.config == lt_job.config for j in new)
    assert "Submitted 9 standard-split job(s)" in at.success[0].value
    # Queued standard runs are not offered twice.
    assert not any(b.key == "imb_launch_full" for b in at.button)


def test_page_renders_on_an_empty_database(iad_env: str) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py"), default_timeout=120).run()
    at.switch_page("pages/imbalance.py").run()
    assert not at.exception and at.title[0].value == "Imbalance"
    assert at.info and "No finished results" in at.info[0].value
