"""The experiment seam end to end: toy multi-class and few-shot supervised methods (tests/toy_methods.py,
registered for these tests only through IAD_PLUGINS) go through `iad submit` -> a real worker process ->
the database -> the leaderboard, next to PatchCore, with no change to the worker, planner or leaderboard.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import jobs_helpers as h
import pytest

from db import queries, results

pytestmark = pytest.mark.timeout(300)
TESTS = Path(__file__).resolve().parent
TOYS = ("toy_multiclass", "toy_fewshot")


@pytest.fixture
def toy_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The toy methods registered in this process too (for in-process `iad submit`), removed afterwards."""
    from ad_core.methods import base

    monkeypatch.setenv("IAD_PLUGINS", "toy_methods")
    monkeypatch.syspath_prepend(str(TESTS))
    yield
    for name in TOYS:
        base.unregister(name)
    base._PLUGINS_LOADED.discard("toy_methods")
    sys.modules.pop("toy_methods", None)


@pytest.fixture
def stack(tmp_path: Path, toy_plugins: None) -> Iterator[h.Stack]:
    st = h.make_stack("seam", tmp_path, f"sqlite:///{tmp_path / 'iad.sqlite'}",
                      IAD_PLUGINS="toy_methods", PYTHONPATH=str(TESTS))
    st.tiny = h.make_tiny_demo(tmp_path / "tiny")  # type: ignore[attr-defined]
    try:
        st.wait_ready(st.start_worker())
        yield st
    finally:
        st.close()


def _submit_error(st: h.Stack, monkeypatch, capsys, *args: str) -> str:
    from workers.cli import main

    st.apply_env(monkeypatch)
    capsys.readouterr()
    assert main(["submit", *args]) == 2
    return capsys.readouterr().err.strip()


def test_multi_class_and_few_shot_methods_run_through_the_job_system(stack: h.Stack, monkeypatch, capsys) -> None:
    tiny = ["--dataset", "demo", "--root", str(stack.tiny), "--category", *h.TINY_CATEGORIES, *h.TINY_ARGS]  # type: ignore[attr-defined]
    few_shot = ["--split", "few_shot:k=2"]

    # Pairings that make no sense are refused at submit time with one line, and nothing is queued.
    err = _submit_error(stack, monkeypatch, capsys, "--method", "toy_fewshot", *tiny)
    assert err.startswith("error: toy_fewshot is a few_shot_supervised method") and "--split few_shot" in err
    err = _submit_error(stack, monkeypatch, capsys, "--method", "toy_multiclass", "--dataset", "demo", "--root",
                        str(stack.tiny), "--category", "brick", *h.TINY_ARGS)  # type: ignore[attr-defined]
    assert "multi_class method" in err and "at least 2 categories" in err
    err = _submit_error(stack, monkeypatch, capsys, "--method", "patchcore", *tiny, "--split", "few_shot:k=9")
    assert "few_shot k=9: demo/brick has only 4 anomalous test image(s)" in err
    assert queries.list_jobs(limit=None, url=stack.db_url) == []

    multi = h.submit(stack, monkeypatch, capsys, "--method", "toy_multiclass", *tiny, "--seeds", "0", "1")
    shots = h.submit(stack, monkeypatch, capsys, "--method", "toy_fewshot", "patchcore", *tiny, *few_shot,
                     "--seeds", "0", "1")
    standard = h.submit(stack, monkeypatch, capsys, "--method", "patchcore", *tiny)
    assert (len(multi), len(shots), len(standard)) == (2, 8, 2)  # multi-class: one job per seed, all classes
    jobs = h.wait_final(stack, [*multi, *shots, *standard], timeout=240)
    assert {j.status for j in jobs.values()} == {"succeeded"}, {j.id: j.error for j in jobs.values()}

    # Multi-class: ONE fit over both classes per job, its time recorded once; results per class.
    for job_id in multi:
        assert jobs[job_id].categories == list(h.TINY_CATEGORIES)
        [unit] = queries.fit_units(job_id, url=stack.db_url)
        assert unit.categories == list(h.TINY_CATEGORIES) and unit.fit_s is not None
        assert unit.details["fits"] == 1 and unit.details["classes"] == sorted(h.TINY_CATEGORIES)
        assert unit.details["train_labels"] == [0]  # normal images only
        runs = queries.category_runs(job_id, url=stack.db_url)
        assert [(r.category, r.fit_unit, r.fit_s) for r in runs] == [(c, 0, None) for c in h.TINY_CATEGORIES]
        assert all(r.n_images == 7 for r in runs)
        assert queries.result_counts(job_id, url=stack.db_url)["metrics"] == 2 * 7
    timings = results.timings_frame(multi, url=stack.db_url)
    unit_time = queries.fit_units(multi[0], url=stack.db_url)[0].fit_s
    assert timings[timings.job_id == multi[0]]["fit_s"].tolist() == pytest.approx([unit_time / 2] * 2)

    # Few-shot: the recipe and the content hash are stored; the k drawn anomalies are trained on and
    # never evaluated; PatchCore runs on exactly the same split as the few-shot method.
    by_cell = {(j.method, j.categories[0], j.seed): j for j in jobs.values() if j.id in shots}
    for (method, category, seed), job in by_cell.items():
        assert job.split == {"kind": "few_shot", "k": 2, "setting": "general", "defect_type": None, "seed": None}
        [run] = queries.category_runs(job.id, url=stack.db_url)
        split = next(s for s in queries.list_splits(url=stack.db_url) if s.id == run.split_id)
        assert (split.n_train_anomalous, split.n_test, split.n_test_anomalous) == (2, 5, 2)
        assert len(split.train_anomalies) == 2 and all(p.startswith(f"{category}/test/") for p in split.train_anomalies)
        if method == "toy_fewshot":
            [unit] = queries.fit_units(job.id, url=stack.db_url)
            trained = set(unit.details["anomalous_paths"])
            assert len(trained) == 2 and unit.details["categories"] == [category]
            assert trained == {f"{stack.tiny}/{p}" for p in split.train_anomalies}  # type: ignore[attr-defined]
            evaluated = {r.path for r in queries.image_results(job.id, url=stack.db_url)}
            assert len(evaluated) == 5 and not trained & evaluated
            twin = by_cell[("patchcore", category, seed)]
            [twin_run] = queries.category_runs(twin.id, url=stack.db_url)
            assert twin_run.split_id == run.split_id  # same content hash: the same files
            assert {r.path for r in queries.image_results(twin.id, url=stack.db_url)} == evaluated
    # Each seed draws its own anomalies (seed 0 and 1 may pick the same pair of 4 by chance, so compare the
    # draws with what the split recipe gives for those seeds, computed here independently of the worker).
    from ad_core.splits import SplitSpec

    for seed in (0, 1):
        expected = SplitSpec.parse("few_shot:k=2").apply("demo", str(stack.tiny), list(h.TINY_CATEGORIES), seed)  # type: ignore[attr-defined]
        for category in h.TINY_CATEGORIES:
            [run] = queries.category_runs(by_cell[("toy_fewshot", category, seed)].id, url=stack.db_url)
            stored = next(s for s in queries.list_splits(url=stack.db_url) if s.id == run.split_id)
            assert stored.content_hash == expected[category].content_hash()

    # The leaderboard: one table per recipe, never pooled; the caption says which recipe.
    board = results.leaderboard("demo", "image_auroc", root=str(stack.tiny), url=stack.db_url)  # type: ignore[attr-defined]
    assert board.split_label == "standard" and board.other_splits == ["few_shot(k=2, general)"]
    assert set(board.rows["method"]) == {"patchcore", "toy_multiclass"}
    assert board.rows.loc[board.rows["method"] == "patchcore", "seed_list"].iloc[0] == [0]
    standard_values = results.results_frame(job_ids=standard, metrics=["image_auroc"], url=stack.db_url)
    patchcore_row = board.rows.index[board.rows["method"] == "patchcore"][0]
    for category in h.TINY_CATEGORIES:
        expected = standard_values.loc[standard_values.category == category, "value"].item()
        assert board.mean.at[patchcore_row, category] == pytest.approx(expected)
        assert board.n.at[patchcore_row, category] == 1
    assert "split: standard (the dataset as downloaded" in board.caption()

    few = results.leaderboard("demo", "image_auroc", root=str(stack.tiny), split="few_shot(k=2, general)",  # type: ignore[attr-defined]
                              url=stack.db_url)
    assert set(few.rows["method"]) == {"patchcore", "toy_fewshot"} and few.other_splits == ["standard"]
    assert (few.n[few.categories] == 2).all().all()  # two seeds per cell, nothing from the standard split
    assert "few-shot supervised (DRA protocol, general): k=2" in few.caption()
    long = few.long()
    assert set(long["split"]) == {"few_shot(k=2, general)"}

    # The stored provenance names the split and the thread count.
    record = queries.run_record(shots[0], url=stack.db_url)
    assert record.threads >= 1 and json.dumps(record.config)  # complete config stored
