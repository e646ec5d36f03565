"""Leaderboard construction rules and the LaTeX / CSV / Markdown exports (plus `iad export`).

Results are stored through `db.queries` (create -> claim -> complete) in a tmp SQLite database.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import pytest

from ad_core.analysis import export
from ad_core.analysis import leaderboard as lb
from ad_core.catalog import METRIC_VERSION
from dashboard.sample_data import Image, store_job
from db import results
from workers.cli import main as export_main

IMAGES = [Image(f"/data/x/{i}.png", i % 2, "good" if i % 2 == 0 else "scratch", 0.1 * i) for i in range(4)]


def put(method: str, category: str, seed: int, value: float, root: str = "/data/mvtec", dataset: str = "mvtec",
        **kw) -> int:
    return store_job(method, dataset, root, category, seed, {"image_auroc": value, "pixel_auroc": None}, IMAGES,
                     **kw)


@pytest.fixture
def board(url: str) -> lb.Leaderboard:
    """3 methods x 2 categories (one with an underscore) x 2 seeds; one method with random weights."""
    values = {"patchcore": (0.99, 0.97), "padim": (0.95, 0.90), "isstad": (0.999, 0.999)}
    for method, (a, b) in values.items():
        for seed in (0, 1):
            jitter = 0.01 * seed
            put(method, "bottle", seed, a - jitter, random_weights=method == "isstad")
            put(method, "metal_nut", seed, b - jitter, random_weights=method == "isstad")
    return results.leaderboard("mvtec", "image_auroc")


# --- leaderboard rules ---------------------------------------------------------------------------------------


def test_mean_std_over_seeds_and_ranking(board: lb.Leaderboard) -> None:
    assert list(board.mean.columns) == ["bottle", "metal_nut", "mean"]
    assert list(board.mean.index) == ["patchcore (fast)", "padim (fast)", "isstad (fast)"]
    assert board.mean.at["patchcore (fast)", "bottle"] == pytest.approx(0.985)
    assert board.std.at["patchcore (fast)", "bottle"] == pytest.approx(pd.Series([0.99, 0.98]).std())
    assert board.n.at["patchcore (fast)", "bottle"] == 2
    assert board.mean.at["patchcore (fast)", "mean"] == pytest.approx((0.985 + 0.965) / 2)
    # The random-weight row scores highest but is never ranked against pretrained rows.
    assert board.rank.loc["isstad (fast)"].tolist() == [0, 0, 0]
    assert board.rank.loc["patchcore (fast)"].tolist() == [1, 1, 1]
    assert board.rank.loc["padim (fast)"].tolist() == [2, 2, 2]
    assert board.row_label("isstad (fast)") == "isstad (fast) ⚠ random weights"
    assert board.cell("patchcore (fast)", "bottle") == "0.985 ± 0.007"
    assert board.seeds == [0, 1] and board.any_random
    # The per-seed values behind each cell (the leaderboard's dot plot), the mean column included.
    pc = board.seed_values[board.seed_values["variant"] == "patchcore (fast)"].set_index(["column", "seed"])["value"]
    assert pc.sort_index().to_dict() == pytest.approx({("bottle", 0): 0.99, ("bottle", 1): 0.98, ("mean", 0): 0.98,
                                                       ("mean", 1): 0.97, ("metal_nut", 0): 0.97, ("metal_nut", 1): 0.96})


def test_rerun_replaces_and_never_counts_as_a_seed(url: str) -> None:
    put("patchcore", "bottle", 0, 0.5)
    put("patchcore", "bottle", 0, 0.9)  # re-run of the same cell: the latest wins
    board = results.leaderboard("mvtec", "image_auroc")
    assert board.n.at["patchcore (fast)", "bottle"] == 1
    assert board.mean.at["patchcore (fast)", "bottle"] == pytest.approx(0.9)
    assert board.cell("patchcore (fast)", "bottle") == "0.900"  # one seed: no ± part


def test_metric_versions_and_configs_are_never_mixed(url: str) -> None:
    put("patchcore", "bottle", 0, 0.9, metric_version="iad-metrics-0")
    put("patchcore", "bottle", 0, 0.8)
    put("patchcore", "bottle", 0, 0.7, config={"backbone": "wide_resnet50_2", "crop": 224})
    board = results.leaderboard("mvtec", "image_auroc")
    assert board.metric_version == "iad-metrics-2" and board.other_versions == ["iad-metrics-0"]
    assert len(board.mean) == 2 and all(re.fullmatch(r"patchcore \(fast\) #[0-9a-f]{8}", r) for r in board.mean.index)
    old = results.leaderboard("mvtec", "image_auroc", metric_version="iad-metrics-0")
    assert old.mean.iloc[0, 0] == pytest.approx(0.9)


def test_split_recipes_are_never_pooled_and_changed_data_is_left_out(url: str) -> None:
    few_shot = {"kind": "few_shot", "k": 10, "setting": "general", "defect_type": None, "seed": None}
    put("patchcore", "bottle", 0, 0.90, split_hash="a" * 64)
    put("patchcore", "bottle", 1, 0.80, split_hash="a" * 64)
    put("patchcore", "bottle", 0, 0.50, split=few_shot, split_hash="b" * 64)
    put("padim", "bottle", 0, 0.70, split_hash="a" * 64)

    board = results.leaderboard("mvtec", "image_auroc")
    assert (board.split_label, board.other_splits, board.excluded) == ("standard", ["few_shot(k=10, general)"], 0)
    assert board.n.at["patchcore (fast)", "bottle"] == 2  # the few-shot result is not a third seed
    assert board.mean.at["patchcore (fast)", "bottle"] == pytest.approx(0.85)
    few = results.leaderboard("mvtec", "image_auroc", split="few_shot(k=10, general)")
    assert list(few.mean.index) == ["patchcore (fast)"] and few.mean.iat[0, 0] == pytest.approx(0.5)
    assert "k=10 labelled anomalies per class" in few.caption() and set(few.long()["split"]) == {few.split_label}
    with pytest.raises(ValueError, match="no results on split 'long_tail'"):
        results.leaderboard("mvtec", "image_auroc", split="long_tail")

    # The folder changed on disk: a newer run of (bottle, seed 0) saw other files. Results of that class and
    # seed on the old files are left out rather than compared with the new ones.
    put("padim", "bottle", 0, 0.60, split_hash="c" * 64)
    board = results.leaderboard("mvtec", "image_auroc")
    assert board.excluded == 2  # patchcore's and padim's seed-0 runs on the old files
    assert board.n.at["patchcore (fast)", "bottle"] == 1 and board.mean.at["patchcore (fast)", "bottle"] == 0.8
    assert board.mean.at["padim (fast)", "bottle"] == pytest.approx(0.60)


def test_incomplete_rows_are_flagged_and_not_ranked_on_the_mean(url: str) -> None:
    put("patchcore", "bottle", 0, 0.9)
    put("patchcore", "cable", 0, 0.8)
    put("padim", "bottle", 0, 0.99)  # no cable result
    board = results.leaderboard("mvtec", "image_auroc")
    assert board.incomplete == ["padim (fast)"]
    assert board.rank.at["padim (fast)", "mean"] == 0 and board.rank.at["patchcore (fast)", "mean"] == 1
    assert board.cell("padim (fast)", "mean").endswith("†") and board.cell("padim (fast)", "cable") == "–"
    assert "subset of the categories" in board.caption()


def test_filters_and_datasets(url: str) -> None:
    put("patchcore", "bottle", 0, 0.9)
    put("patchcore", "01", 0, 0.8, dataset="btad", root="/data/btad")
    assert results.leaderboard("btad", "image_auroc").categories == ["01"]
    assert results.leaderboard("mvtec", "image_auroc", methods=["padim"]).empty
    choices = results.dataset_choices()
    assert set(choices["kind"]) == {"mvtec", "btad"}


def test_image_scores_of_many_jobs_in_one_frame(url: str) -> None:
    a = put("patchcore", "bottle", 0, 0.9)
    b = put("padim", "bottle", 0, 0.8)
    put("padim", "cable", 0, 0.7)  # not asked for
    frame = results.image_scores_frame([b, a])
    assert list(frame.columns) == ["job_id", "category", "path", "label", "defect_type", "score"]
    assert frame["job_id"].tolist() == [a] * 4 + [b] * 4 and set(frame["category"]) == {"bottle"}
    first = frame[frame["job_id"] == a]
    assert first["path"].tolist() == [img.path for img in IMAGES]
    assert first["label"].tolist() == [img.label for img in IMAGES]
    assert first["defect_type"].tolist() == [img.defect_type for img in IMAGES]
    assert first["score"].tolist() == pytest.approx([img.score for img in IMAGES])
    empty = results.image_scores_frame([])
    assert empty.empty and list(empty.columns) == list(frame.columns)


def test_empty_database_gives_an_empty_board(url: str) -> None:
    board = results.leaderboard("mvtec", "image_auroc")
    assert board.empty
    with pytest.raises(ValueError, match="empty"):
        export.to_latex(board)


# --- LaTeX ------------------------------------------------------------------------------------------------------


def _environments_balanced(latex: str) -> bool:
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{([^}]+)\}", latex):
        if kind == "begin":
            stack.append(name)
        elif not stack or stack.pop() != name:
            return False
    return not stack


def _body_rows(latex: str) -> list[str]:
    body = latex.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    return [line.strip() for line in body.splitlines() if line.strip().endswith("\\\\")]


def test_latex_escape_covers_what_pdflatex_rejects() -> None:
    assert export.latex_escape("n<20 & n>100, 20≤n≤100, a−b, x_1 ± 0.1 – #1 50%") == (
        r"n\textless{}20 \& n\textgreater{}100, 20$\leq$n$\leq$100, a-b, x\_1 $\pm$ 0.1 -- \#1 50\%")


def test_latex_is_structurally_valid_booktabs(board: lb.Leaderboard) -> None:
    latex = export.to_latex(board)
    assert _environments_balanced(latex)
    assert latex.count(r"\begin{table}") == 1 and latex.count(r"\begin{tabular}{lccc}") == 1
    assert latex.index(r"\toprule") < latex.index(r"\midrule") < latex.index(r"\bottomrule")
    rows = _body_rows(latex)
    assert len(rows) == 3, "one row per method"
    assert all(row.count("&") == 3 for row in rows)
    patchcore, padim, isstad = rows
    # Display names (methods without one, like padim here, keep theirs), a random-weight mark.
    assert patchcore.startswith("PatchCore (fast) &") and patchcore.count(r"\textbf{") == 3
    assert padim.startswith("padim (fast) &") and padim.count(r"\underline{") == 3 and r"$\pm$" in padim
    assert isstad.startswith(r"ISSTAD (fast)$^\ddagger$") and r"\textbf" not in isstad
    assert "metal\\_nut" in latex and "metal_nut" not in latex.replace("metal\\_nut", "")
    # A short caption; the full provenance is a comment above the table, with the booktabs requirement.
    caption = re.search(r"\\caption\{(.*)\}", latex).group(1)
    assert caption == (r"Image AUROC on MVTec AD (standard split, frame: full image 256x256), mean $\pm$ std over 2 "
                       r"seeds; best in bold, second "
                       r"underlined. $^\ddagger$ Random backbone weights, not ranked.")
    comment = latex.splitlines()[0]
    assert comment.startswith(r"% Needs \usepackage{booktabs}.")
    for needle in ("split: standard (the dataset as downloaded", "evaluation frame: full image 256x256",
                   "2 seeds (0, 1)", f"metric version {METRIC_VERSION}"):
        assert needle in comment
    assert "⚠" not in latex and "±" not in latex  # pdflatex-safe


def test_latex_with_efficiency_columns(board: lb.Leaderboard) -> None:
    latex = export.to_latex(board, efficiency=True)
    assert _environments_balanced(latex) and r"\begin{tabular}{lccccc}" in latex
    assert "method & bottle & metal\\_nut & mean & img/s & fit s \\\\" in latex
    assert all(row.endswith("& 20.0 & 2.0 \\\\") for row in _body_rows(latex))


def test_efficiency_columns_name_the_nearest_neighbour_search(url: str) -> None:
    exact = {"coreset_ratio": 0.1, "nn_index": "flat"}
    approx = {"coreset_ratio": 0.1, "nn_index": "pca_refine", "nn_pca_dim": 64, "nn_refine_factor": 16}
    put("patchcore", "bottle", 0, 0.99, config=exact)
    put("patchcore", "bottle", 0, 0.98, config=approx)
    put("padim", "bottle", 0, 0.95, config={"backbone": "resnet18"})  # no memory bank: no scorer
    board = results.leaderboard("mvtec", "image_auroc")
    scorers = {board.row_label(v): None if pd.isna(s) else s for v, s in board.rows["scorer"].items()}
    assert sorted(scorers.values(), key=str) == [None, "PCA-64 + re-rank x16", "exact"]
    assert len(set(board.rows["config_hash"])) == 3  # the search is part of the config: two patchcore rows
    markdown = export.to_markdown(board, efficiency=True)
    header = markdown.splitlines()[0]
    assert header.split("|")[-2].strip() == "kNN"
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in markdown.splitlines()[2:] if line.startswith("|")}
    assert sorted(rows.values()) == ["PCA-64 + re-rank x16", "exact", "–"]


def test_latex_with_categories_as_rows_has_a_rule_above_the_mean(board: lb.Leaderboard) -> None:
    latex = export.to_latex(board, transpose=True)
    assert _environments_balanced(latex)
    assert [r.split(" &")[0] for r in _body_rows(latex)] == ["bottle", "metal\\_nut", "mean"]
    assert "category & PatchCore (fast) & padim (fast) & ISSTAD (fast)$^\\ddagger$ \\\\" in latex
    assert "\\midrule\nmean &" in latex
    assert latex.count(r"\begin{tabular}{lccc}") == 1


# --- CSV and Markdown -----------------------------------------------------------------------------------------


def test_csv_round_trips_through_pandas(board: lb.Leaderboard) -> None:
    text = export.to_csv(board)
    back = pd.read_csv(io.StringIO(text))
    pd.testing.assert_frame_equal(back, board.long(), check_dtype=False)
    assert len(back) == 3 * 3  # 3 methods x (2 categories + mean)
    assert set(back.loc[back["random_weights"], "method"]) == {"isstad"}


def test_markdown_marks_best_and_second(board: lb.Leaderboard) -> None:
    md = export.to_markdown(board)
    lines = md.splitlines()
    assert lines[0] == "| method | bottle | metal_nut | mean |"
    rows = [line for line in lines[2:] if line.startswith("|")]
    assert len(rows) == 3
    assert rows[0].count("**") == 6 and rows[1].count("<u>") == 3
    assert "random weights" in rows[2] and "**" not in rows[2]


# --- iad export -------------------------------------------------------------------------------------------------


def test_export_command_writes_every_format(board: lb.Leaderboard, tmp_path: Path, capsys) -> None:
    for fmt in export.FORMATS:
        out = tmp_path / f"table{export.SUFFIXES[fmt]}"
        assert export_main(["export", "--dataset", "mvtec", "--metric", "image_auroc", "--format", fmt,
                            "--out", str(out)]) == 0
        assert out.read_text() == export.render(board, fmt)
    assert export_main(["export", "--dataset", "mvtec", "--metric", "image_auroc", "--format", "csv",
                        "--no-random", "--methods", "padim", "patchcore"]) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(printed["method"]) == {"padim", "patchcore"}


def test_export_command_notes_the_booktabs_requirement_for_latex(board: lb.Leaderboard, capsys) -> None:
    assert export_main(["export", "--dataset", "mvtec", "--metric", "image_auroc", "--format", "latex"]) == 0
    out, err = capsys.readouterr()
    assert "note: the table needs \\usepackage{booktabs}" in err and out.startswith("% Needs \\usepackage{booktabs}")
    assert export_main(["export", "--dataset", "mvtec", "--metric", "image_auroc", "--format", "md"]) == 0
    assert "booktabs" not in capsys.readouterr().err


def test_export_command_explains_what_is_missing(url: str, capsys) -> None:
    assert export_main(["export", "--dataset", "mvtec", "--metric", "aupro"]) == 2
    assert "no finished results for dataset 'mvtec'" in capsys.readouterr().err
    put("patchcore", "bottle", 0, 0.9, root="/a")
    put("patchcore", "bottle", 0, 0.8, root="/b")
    assert export_main(["export", "--dataset", "mvtec", "--metric", "image_auroc"]) == 2
    assert "several roots" in capsys.readouterr().err
    assert export_main(["export", "--dataset", "mvtec", "--root", "/b", "--metric", "image_auroc",
                        "--format", "md"]) == 0
    assert "0.800" in capsys.readouterr().out
