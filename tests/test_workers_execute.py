"""The job runner without Celery: a real tiny PatchCore job in this process, on SQLite and PostgreSQL.

Checks what the worker stores (rows, maps, provenance), that metrics can be recomputed from the stored
float32 maps, that failures leave nothing behind, and that progress writes are throttled.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import jobs_helpers
import numpy as np
import pytest

from db import artifacts, queries

db_url = jobs_helpers.db_url
postgres_db = jobs_helpers.postgres_db


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return jobs_helpers.make_tiny_demo(tmp_path_factory.mktemp("tiny") / "demo")


def _job(db_url: str, root: Path, category: str = "brick", **overrides) -> int:
    from ad_core.runner import RunSpec

    spec = RunSpec(method="patchcore", dataset="demo", root=str(root), categories=[category],
                   backbone="tf_efficientnet_lite0", weights="random",
                   overrides={"crop": 64, "resize": 64, "coreset_ratio": 0.1, **overrides})
    config = spec.validate().to_dict()
    [job_id] = queries.create_jobs(
        [queries.JobRequest("patchcore", "demo", str(root), [category], config, seed=3)], url=db_url
    )
    return job_id


def _masks_for(root: Path, category: str, paths: list[str], size: int) -> np.ndarray:
    """The ground truth in the job's evaluation frame (the default: the full mask at `size` px, nearest)."""
    from ad_core.data import load_split, read_image, read_mask
    from ad_core.frame import mask_to_frame

    by_path = {s.path: s for s in load_split("demo", root, category).test}
    masks = []
    for path in paths:
        sample = by_path[path]
        if sample.mask_path is None:
            masks.append(np.zeros((size, size), dtype=bool))
        else:
            masks.append(mask_to_frame(read_mask(sample.mask_path, read_image(path).size), size))
    return np.stack(masks)


def test_job_results_are_stored_and_metrics_recompute_from_maps(
    db_url: str, tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ad_core.metrics import METRIC_VERSION, compute_all
    from workers.jobs import execute_job

    monkeypatch.setenv("IAD_ARTIFACTS", str(tmp_path / "artifacts"))
    job_id = _job(db_url, tiny_root)
    assert execute_job(job_id, worker="test-worker", url=db_url) == "succeeded"

    job = queries.get_job(job_id, url=db_url)
    assert (job.status, job.progress, job.attempts, job.worker_host, job.error) == ("succeeded", 1.0, 1, "test-worker", None)
    assert queries.result_counts(job_id, url=db_url) == {"metrics": 7, "image_results": 7, "category_runs": 1,
                                                         "fit_units": 1, "run_records": 1}
    record = queries.run_record(job_id, url=db_url)
    assert record.random_weights and record.seed == 3 and record.metric_version == METRIC_VERSION
    assert record.config["coreset_ratio"] == 0.1 and "torch" in record.packages and record.git_commit
    [run] = queries.category_runs(job_id, url=db_url)
    assert run.fit_s > 0 and run.n_images == 7 and run.split_id is not None
    [split] = queries.list_splits(url=db_url)
    assert (split.n_train, split.n_test, split.n_test_anomalous, len(split.content_hash)) == (6, 7, 4, 64)
    history = [h.progress for h in queries.progress_history(job_id, url=db_url)]
    assert history[0] == 0.0 and history[-1] == 1.0 and history == sorted(history)

    # Recompute every metric from what is stored: scores from the rows, maps from the float32 file.
    rows = queries.image_results(job_id, "brick", url=db_url)
    assert [r.map_index for r in rows] == list(range(7)) and {r.map_path for r in rows} == {run.maps_path}
    maps = artifacts.load_maps(run.maps_path, [r.map_index for r in rows])
    _, stored_paths = artifacts.load_map_file(run.maps_path)
    # Stored in the evaluation frame (the full image at 256 px), not the method's 64 px input.
    assert job.frame == "full:256" and stored_paths == [r.path for r in rows] and maps.shape == (7, 256, 256)
    labels = np.array([r.label for r in rows])
    scores = np.array([r.score for r in rows])
    recomputed = compute_all(labels, scores, _masks_for(tiny_root, "brick", [r.path for r in rows], 256), maps)
    stored = queries.metrics_frame(job_ids=[job_id], url=db_url).set_index("metric").value
    for name, value in recomputed.items():
        assert stored[name] == pytest.approx(value, abs=1e-12), name  # lossless maps: the same numbers

    # A second delivery of the same message does nothing.
    assert execute_job(job_id, url=db_url) == "skipped (succeeded)"
    assert queries.get_job(job_id, url=db_url).attempts == 1


def test_failed_job_leaves_no_rows_and_no_maps(
    db_url: str, tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.jobs import execute_job

    monkeypatch.setenv("IAD_ARTIFACTS", str(tmp_path / "artifacts"))
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    job_id = _job(db_url, root, category="grass")
    shutil.rmtree(root / "grass" / "test")  # the data vanished between submit and run
    assert execute_job(job_id, url=db_url) == "failed"
    job = queries.get_job(job_id, url=db_url)
    first_line = job.error.splitlines()[0]
    assert job.status == "failed" and str(root / "grass") in first_line and "Traceback" in job.error
    assert job.message == first_line
    assert queries.result_counts(job_id, url=db_url) == {"metrics": 0, "image_results": 0, "category_runs": 0,
                                                         "fit_units": 0, "run_records": 0}
    assert not (tmp_path / "artifacts" / artifacts.job_dir(job_id)).exists()


def test_progress_writes_are_throttled(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.jobs import JobReporter

    monkeypatch.delenv("IAD_PROGRESS_INTERVAL_S", raising=False)  # the default: 0.5 s
    [job_id] = queries.create_jobs([queries.JobRequest("m", "demo", "/r", ["c"], {})], url=db_url)
    queries.claim_job(job_id, "w", "cpu", url=db_url)
    reporter = JobReporter(job_id, 1, db_url)
    start = time.monotonic()
    calls = 0
    while time.monotonic() - start < 1.2:
        reporter.progress(min(calls / 2000, 1.0), f"step {calls}")
        reporter.should_cancel()
        calls += 1
        time.sleep(0.001)
    writes = len(queries.progress_history(job_id, url=db_url))  # every write here advanced >= 1%
    assert calls > 200 and 2 <= writes <= 4, (calls, writes)
    queries.request_cancel([job_id], url=db_url)
    deadline = time.monotonic() + 2
    while not reporter.should_cancel() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reporter.should_cancel()
