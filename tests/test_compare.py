"""`iad compare` / `workers.compare.compare_jobs`: two stored runs on the demo data (maps lighting up where the
masks are), compared per category with intervals over the test images; pixel metrics from the stored maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ad_core import metrics
from ad_core.reproduce import frame_masks
from dashboard import sample_data
from db import artifacts, queries
from workers.cli import main as iad
from workers.compare import compare_jobs


@pytest.fixture
def runs(url: str, demo_root: Path) -> dict[tuple[str, str], int]:
    """(method, category) -> job id: one job per method and category (as the sample data stores them)."""
    ids = sample_data.store_synthetic_results(demo_root, ["brick", "grass"], methods={"strong": 3.0, "weak": 0.2},
                                              seeds=(0,), url=url)
    return {(j.method, j.categories[0]): j.id for j in queries.list_jobs(job_ids=ids, limit=None)}


@pytest.fixture
def two_runs(runs: dict[tuple[str, str], int]) -> tuple[int, int]:
    return runs[("strong", "brick")], runs[("weak", "brick")]


def test_compare_jobs_gives_each_metric_with_its_interval(two_runs: tuple[int, int]) -> None:
    strong, weak = two_runs
    table = compare_jobs(strong, weak, pixel=True, n_boot=300)
    assert (table["note"] == "").all(), table[table["note"] != ""]
    assert set(table["category"]) == {"brick"}
    assert list(table[table["category"] == "brick"]["metric"]) == [
        "image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro"]
    # The values are the runs' own: image AUROC from the stored scores, pixel metrics from maps + masks.
    job = queries.list_jobs(job_ids=[strong], limit=None)[0]
    run = {r.category: r for r in queries.category_runs(strong)}["brick"]
    rows = sorted(queries.image_results(strong, "brick"), key=lambda r: r.map_index)
    maps = artifacts.load_maps(run.maps_path, [r.map_index for r in rows])
    from ad_core.splits import SplitSpec

    split = SplitSpec().apply("demo", job.dataset.root, ["brick"])["brick"]
    by_path = {s.path: s for s in split.test}
    masks = frame_masks([by_path[r.path] for r in rows], *job.map_geometry)
    brick = table[table["category"] == "brick"].set_index("metric")
    assert brick.at["image_auroc", "a"] == pytest.approx(metrics.image_auroc([r.label for r in rows],
                                                                            [r.score for r in rows]))
    assert brick.at["aupro", "a"] == pytest.approx(metrics.aupro(masks, maps))
    assert brick.at["pixel_auroc", "a"] == pytest.approx(metrics.pixel_auroc(masks, maps))
    # strong's maps light up 15x more where the masks are: its pixel lead is real.
    assert brick.at["pixel_auroc", "significant"] and brick.at["pixel_auroc", "low"] > 0
    assert all(row.low <= row.difference <= row.high for row in table.itertuples())
    assert 0 <= brick.at["image_auroc", "delong_p"] <= 1
    # Seeded: the same call gives the same table.
    assert compare_jobs(strong, weak, pixel=True, n_boot=300).equals(table)


def test_compare_explains_what_it_cannot_compare(runs: dict[tuple[str, str], int]) -> None:
    strong, weak = runs[("strong", "brick")], runs[("weak", "brick")]
    (run,) = queries.category_runs(weak)
    (artifacts.artifacts_root() / run.maps_path).unlink()  # the weak run's maps are gone
    table = compare_jobs(strong, weak, pixel=True, n_boot=50)
    assert list(table["note"]) == ["its maps are not in the artifact store"]
    with pytest.raises(ValueError, match="no job 999"):
        compare_jobs(strong, 999)
    with pytest.raises(ValueError, match="share no category"):
        compare_jobs(strong, runs[("weak", "grass")])


def test_iad_compare_prints_the_table(two_runs: tuple[int, int], capsys: pytest.CaptureFixture) -> None:
    strong, weak = two_runs
    assert iad(["compare", str(strong), str(weak), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert f"job {strong} (a) vs job {weak} (b)" in out and "DeLong p = " in out
    lines = [line for line in out.splitlines() if line.strip().startswith("Image AUROC")]
    assert len(lines) == 1 and "Δ +" in lines[0] and "DeLong p = " in lines[0], out
    assert not any(line.strip().startswith("Pixel AUROC") for line in out.splitlines())  # no --pixel
    assert iad(["compare", str(strong), "12345"]) == 2
    assert "no job 12345" in capsys.readouterr().err
    assert np.isfinite(compare_jobs(strong, weak, n_boot=20)["difference"]).all()
