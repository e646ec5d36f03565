"""Annotation feeds evaluation: a finished demo run re-scored against an annotation set (one mask erased, one
added) gives the metrics computed directly from its stored maps and the new masks; the leaderboard keeps the two
ground truths apart; the run's before/after table; `iad annotations` from the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from db import artifacts, queries


@pytest.fixture
def env(url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The shared private database (`url`, conftest) with a named user for the saved annotations."""
    monkeypatch.setenv("IAD_USER", "carol")
    return url


def _run(url: str, root: Path, category: str = "brick") -> int:
    from ad_core.runner import RunSpec
    from workers.jobs import execute_job

    spec = RunSpec(method="patchcore", dataset="demo", root=str(root), categories=[category],
                   backbone="tf_efficientnet_lite0", weights="random",
                   overrides={"crop": 64, "resize": 64, "coreset_ratio": 0.1})
    [job_id] = queries.create_jobs(
        [queries.JobRequest("patchcore", "demo", str(root), [category], spec.validate().to_dict(), seed=0)], url=url)
    assert execute_job(job_id, url=url) == "succeeded"
    return job_id


def test_rescore_against_a_set_equals_metrics_from_the_maps_and_new_masks(env: str, demo_root: Path, capsys) -> None:
    from ad_core.data import load_split, read_mask
    from ad_core.frame import mask_to_frame
    from ad_core.metrics import METRIC_VERSION, compute_all
    from db import annotations as dba
    from db import results
    from workers.annotations import rescore_against_set
    from workers.cli import main as iad

    url, root = env, str(demo_root)
    job_id = _run(url, demo_root)
    job = queries.get_job(job_id, url=url)
    dataset_rows = queries.metrics_frame(job_ids=[job_id], url=url).set_index("metric")["value"].to_dict()

    # The correction: one defect's mask erased (the image is good after all), one defect added to a good image.
    split = load_split("demo", root, "brick")
    erased = next(s for s in split.test if s.label == 1)
    added = next(s for s in split.test if s.label == 0)
    rel = lambda s: Path(s.path).relative_to(demo_root).as_posix()  # noqa: E731
    dba.save_annotation("demo", root, rel(erased), 0, "good", None, url=url)
    w, h = Image.open(added.path).size
    new_mask = np.zeros((h, w), bool)
    new_mask[h // 4: h // 2, w // 3: 2 * w // 3] = True
    dba.save_annotation("demo", root, rel(added), 1, "dent", new_mask, url=url)
    info = dba.create_set("demo", root, "fix-1", url=url)

    assert iad(["annotations", "rescore", "--set", "fix-1", "--dataset", "demo", "--root", root, "--dry-run"]) == 0
    assert f"job {job_id} brick: to do" in capsys.readouterr().out
    items = rescore_against_set(info.id, url=url)
    assert [(i.job_id, i.category, i.status, i.rows) for i in items] == [(job_id, "brick", "stored", 7)]

    # Directly: the stored maps and scores, the new labels and masks in the job's frame (full image, 256 px).
    rows = sorted(queries.image_results(job_id, "brick", url=url), key=lambda r: r.map_index)
    [run] = queries.category_runs(job_id, url=url)
    maps = artifacts.load_maps(run.maps_path, [r.map_index for r in rows])
    assert job.frame == "full:256" and maps.shape[1:] == (256, 256)
    by_path = {s.path: s for s in split.test}
    labels, masks = [], []
    for r in rows:
        sample = by_path[r.path]
        if r.path == erased.path:
            labels.append(0)
            masks.append(np.zeros((256, 256), bool))
        elif r.path == added.path:
            labels.append(1)
            masks.append(mask_to_frame(Image.fromarray(new_mask.astype(np.uint8) * 255), 256))
        else:
            labels.append(sample.label)
            masks.append(np.zeros((256, 256), bool) if sample.mask_path is None
                         else mask_to_frame(read_mask(sample.mask_path, Image.open(sample.path).size), 256))
    expected = compute_all(np.array(labels), np.array([r.score for r in rows]), np.stack(masks), maps)
    stored = queries.metrics_frame(job_ids=[job_id], url=url, gt_version=info.gt_version)
    assert set(stored["metric_version"]) == {METRIC_VERSION}
    got = stored.set_index("metric")["value"].to_dict()
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert got != pytest.approx(dataset_rows)  # the correction changed something
    # The rows against the dataset's own ground truth are untouched.
    assert queries.metrics_frame(job_ids=[job_id], url=url).set_index("metric")["value"].to_dict() == dataset_rows

    # A second re-score has nothing to do.
    assert rescore_against_set(info.id, url=url)[0].status == "up to date"
    assert iad(["annotations", "rescore", "--set", "fix-1", "--dataset", "demo", "--root", root]) == 0
    assert "nothing to re-score" in capsys.readouterr().out

    # The leaderboard: one ground truth per table, both available, never mixed.
    default = results.leaderboard("demo", "pixel_auroc", root=root, url=url)
    corrected = results.leaderboard("demo", "pixel_auroc", root=root, url=url, gt_version=info.gt_version)
    by_label = results.leaderboard("demo", "pixel_auroc", root=root, url=url, gt_version=info.label)
    assert default.gt_version == "dataset" and default.other_gts == [info.label]
    assert corrected.gt_version == info.gt_version and corrected.other_gts == ["dataset as downloaded"]
    assert by_label.gt_version == info.gt_version
    cell = lambda board: float(board.mean.iloc[0]["brick"])  # noqa: E731
    assert cell(default) == pytest.approx(dataset_rows["pixel_auroc"], abs=1e-12)
    assert cell(corrected) == pytest.approx(expected["pixel_auroc"], abs=1e-12)
    assert "ground truth: annotation set 'fix-1'" in corrected.caption()
    assert "ground truth: dataset as downloaded" in default.caption()
    everything = results.results_frame(dataset="demo", root=root, url=url, gt_version=None)
    assert set(everything["gt_version"]) == {"dataset", info.gt_version}
    only_dataset = results.results_frame(dataset="demo", root=root, url=url)  # the default: the dataset's own
    assert len(only_dataset) == len(everything[everything["gt_version"] == "dataset"])
    with pytest.raises(ValueError, match="no results against ground truth 'nope'"):
        results.leaderboard("demo", "pixel_auroc", root=root, url=url, gt_version="nope")

    # Run detail's before/after table.
    from ad_core.analysis.ground_truth import before_after

    table = before_after(queries.metrics_frame(job_ids=[job_id], url=url, gt_version=None), info.gt_version)
    table = table.set_index("metric")
    assert table.loc["pixel_auroc", "before"] == pytest.approx(dataset_rows["pixel_auroc"], abs=1e-12)
    assert table.loc["pixel_auroc", "after"] == pytest.approx(expected["pixel_auroc"], abs=1e-12)
    assert table["change"].abs().max() > 0


def test_annotations_cli_make_export_import(env: str, demo_root: Path, tmp_path: Path, capsys) -> None:
    from db import annotations as dba
    from workers.cli import main as iad

    root = str(demo_root)
    good = sorted(p for p in (demo_root / "grass" / "test" / "good").iterdir())[0]
    w, h = Image.open(good).size
    mask = np.zeros((h, w), bool)
    mask[:10, :10] = True
    dba.save_annotation("demo", root, good.relative_to(demo_root).as_posix(), 1, "dent", mask)
    assert iad(["annotations", "make-set", "--dataset", "demo", "--root", root, "--name", "g1",
                "--category", "grass"]) == 0
    assert "1 image(s) differ from the dataset" in capsys.readouterr().out
    out = tmp_path / "g1.zip"
    assert iad(["annotations", "export", "--dataset", "demo", "--root", root, "--set", "g1", "--out", str(out)]) == 0
    assert out.is_file()
    assert iad(["annotations", "import", "--dataset", "demo", "--root", root, str(out), "--name", "g1-copy"]) == 0
    assert "0 new version(s)" in capsys.readouterr().out
    sets = {s.name: s for s in dba.list_sets("demo", root)}
    assert sets["g1"].gt_version == sets["g1-copy"].gt_version
    assert iad(["annotations", "sets"]) == 0
    assert "g1-copy" in capsys.readouterr().out
    # Bad input: one clear line, exit 2.
    assert iad(["annotations", "export", "--set", "nope", "--out", str(tmp_path / "x.zip")]) == 2
    assert "no annotation set 'nope'" in capsys.readouterr().err


def test_few_shot_split_takes_its_anomalies_from_an_annotation_set(tmp_path: Path, demo_root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A team labels three defects in good-looking test images; `iad submit --split few_shot:k=2,source=annotated
    --annotations SET` -> a real worker: the two training anomalies are drawn from those three only (with
    their drawn masks), they leave the test set, the third stays there as a defect, and the metrics are the
    ones computed from the stored maps against the set's ground truth, stored under its version only."""
    import jobs_helpers as h

    from ad_core.data import read_mask
    from ad_core.frame import mask_to_frame
    from ad_core.metrics import compute_all
    from ad_core.splits import SplitSpec
    from db import annotations as dba
    from db import results

    stack = h.make_stack("gt-few-shot", tmp_path / "home", f"sqlite:///{tmp_path / 'iad.sqlite'}")
    stack.apply_env(monkeypatch)
    monkeypatch.setenv("IAD_USER", "dana")
    url, root = stack.db_url, str(demo_root)
    from ad_core.data import load_split

    split = load_split("demo", root, "brick")
    goods = sorted((s for s in split.test if s.label == 0), key=lambda s: s.path)[:3]
    rel = {s.path: Path(s.path).relative_to(demo_root).as_posix() for s in goods}
    drawn = {}
    for i, sample in enumerate(goods):
        w, h_ = Image.open(sample.path).size
        mask = np.zeros((h_, w), bool)
        mask[10 + 5 * i: 40 + 5 * i, 20: 60] = True
        drawn[sample.path] = mask
        dba.save_annotation("demo", root, rel[sample.path], 1, "smudge", mask, url=url)
    info = dba.create_set("demo", root, "team-defects", url=url)
    assert info.n_changed == 3

    try:
        stack.wait_ready(stack.start_worker())
        tiny = ["--dataset", "demo", "--root", root, "--category", "brick", "--backbone", "tf_efficientnet_lite0",
                "--weights", "random", "--set", "crop=64", "--set", "resize=64", "--set", "coreset_ratio=0.1"]
        # Without a set, an annotated-only draw is refused at submit time with one line.
        from workers.cli import main as iad

        capsys.readouterr()
        assert iad(["submit", "--method", "patchcore", *tiny, "--split", "few_shot:k=2,source=annotated"]) == 2
        assert "draws its labelled anomalies from an annotation set" in capsys.readouterr().err
        # More anomalies than the set labels: refused, naming the shortfall.
        assert iad(["submit", "--method", "patchcore", *tiny, "--split", "few_shot:k=4,source=annotated",
                    "--annotations", "team-defects"]) == 2
        assert "has 3 annotated anomalous test image(s)" in capsys.readouterr().err

        [job_id] = h.submit(stack, monkeypatch, capsys, "--method", "patchcore", *tiny, "--split",
                            "few_shot:k=2,source=annotated", "--annotations", "team-defects")
        final = h.wait_final(stack, [job_id], 120)[job_id]
        assert final.status == "succeeded", final.error
    finally:
        stack.close()

    job = queries.get_job(job_id, url=url)
    assert job.gt_version == info.gt_version
    assert SplitSpec.from_dict(job.split).label == "few_shot(k=2, general, annotated)"
    [run] = queries.category_runs(job_id, url=url)
    [stored_split] = [s for s in queries.list_splits(job.dataset_id, url=url) if s.id == run.split_id]
    trained = set(stored_split.train_anomalies)
    assert len(trained) == 2 and trained <= set(rel.values())
    rows = sorted(queries.image_results(job_id, "brick", url=url), key=lambda r: r.map_index)
    tested = {r.path for r in rows}
    assert not tested & {p for p, r in rel.items() if r in trained}  # never evaluated on a trained image
    [kept] = [p for p, r in rel.items() if r not in trained]
    assert kept in tested and next(r for r in rows if r.path == kept).label == 1  # the set's label, not "good"
    assert len(rows) == len(split.test) - 2

    # The metrics: recomputed from the stored maps and the set's ground truth (the drawn mask for the kept image).
    maps = artifacts.load_maps(run.maps_path, [r.map_index for r in rows])
    by_path = {s.path: s for s in split.test}
    masks = []
    for r in rows:
        if r.path == kept:
            masks.append(mask_to_frame(Image.fromarray(drawn[kept].astype(np.uint8) * 255), 256))
        else:
            s = by_path[r.path]
            masks.append(np.zeros((256, 256), bool) if s.mask_path is None
                         else mask_to_frame(read_mask(s.mask_path, Image.open(s.path).size), 256))
    expected = compute_all(np.array([r.label for r in rows]), np.array([r.score for r in rows]), np.stack(masks), maps)
    stored = queries.metrics_frame(job_ids=[job_id], url=url, gt_version=None)
    assert set(stored["gt_version"]) == {info.gt_version}  # nothing stored as if against the dataset's files
    got = stored.set_index("metric")["value"].to_dict()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    board = results.leaderboard("demo", "image_auroc", root=root, url=url, gt_version=info.gt_version)
    assert board.mean.iloc[0]["brick"] == pytest.approx(expected["image_auroc"], abs=1e-12)
    assert "few_shot(k=2, general, annotated)" in board.split_label and "team-defects" in board.caption()
    # Re-scoring under another metric version rebuilds the job's split with its own annotation set: the content
    # hash matches, and the new rows (same definitions here) equal the stored ones, under the set's version.
    from workers.rescore import rescore

    [item] = rescore([job_id], version="iad-metrics-next", url=url)
    assert (item.status, item.rows) == ("stored", len(expected)), item
    again = queries.metrics_frame(job_ids=[job_id], url=url, gt_version=info.gt_version)
    again = again[again["metric_version"] == "iad-metrics-next"].set_index("metric")["value"].to_dict()
    assert again == pytest.approx(got, abs=1e-12)
