"""Results database: migrations, pragmas, job life cycle, atomicity, fencing, leases, artifacts.

Every test that takes `db_url` runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import jobs_helpers
import numpy as np
import pytest
from sqlalchemy import text

from db import artifacts, queries
from db.models import Base
from db.session import current_revision, get_engine, head_revision, init_db, table_names

db_url = jobs_helpers.db_url
postgres_db = jobs_helpers.postgres_db

RESULT_TABLES = ("metrics", "image_results", "category_runs", "fit_units", "run_records")


def _request(**kw) -> queries.JobRequest:
    values = {"method": "patchcore", "dataset": "demo", "root": "/data/demo", "categories": ["brick"],
              "config": {"backbone": "x", "coreset_ratio": 0.1}, "seed": 0}
    values.update(kw)
    return queries.JobRequest(**values)


class Img:
    def __init__(self, path: str, label: int, score: float):
        self.path, self.label, self.defect_type, self.score = path, label, "good" if label == 0 else "scratch", score


RECORD = {"metric_version": "test-1", "packages": {"numpy": np.__version__}, "git_commit": "abc", "seed": 0,
          "weights_source": "random (NOT pretrained)", "random_weights": True, "device": "cpu", "host": "h"}


def _outcome(category: str = "brick", n: int = 3, **kw) -> queries.CategoryOutcome:
    values = {
        "category": category,
        "metrics": {"image_auroc": 0.75, "pixel_auroc": None, "aupro": float("nan")},
        "images": [Img(f"/data/{category}/{i}.png", i % 2, 0.1 * i) for i in range(n)],
        "timings": {"fit_s": 1.0, "predict_s": 0.5, "images_per_s": 6.0, "peak_rss_mb": 100.0},
        "maps_path": f"maps/x/{category}.npz",
        "split": queries.SplitInfo("f" * 64, 6, n, 1, n - 1, True),
    }
    values.update(kw)
    return queries.CategoryOutcome(**values)


# --- schema ---------------------------------------------------------------------------------------------


def test_migrations_create_the_schema_of_the_models(db_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may depend on the current directory (installed package)
    init_db(db_url)
    assert current_revision(db_url) == head_revision()
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with get_engine(db_url).connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diffs == []
    assert set(Base.metadata.tables) | {"alembic_version"} == set(table_names(db_url))
    init_db(db_url)  # idempotent


def test_migration_downgrades_and_upgrades_again(db_url: str) -> None:
    from alembic import command

    from db.session import alembic_config

    init_db(db_url)
    command.downgrade(alembic_config(db_url), "base")
    assert table_names(db_url) == ["alembic_version"]
    command.upgrade(alembic_config(db_url), "head")
    assert "jobs" in table_names(db_url)


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    init_db(url)
    with get_engine(url).connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 10_000


def test_default_url_lives_in_iad_home(tmp_path: Path, monkeypatch) -> None:
    from db.session import database_url

    monkeypatch.setenv("IAD_HOME", str(tmp_path))
    monkeypatch.delenv("IAD_DATABASE_URL", raising=False)
    assert database_url() == f"sqlite:///{tmp_path / 'iad.sqlite'}"
    monkeypatch.setenv("IAD_DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert database_url() == "postgresql+psycopg://u@h/db"


# --- job life cycle --------------------------------------------------------------------------------------


def test_job_life_cycle_and_results(db_url: str) -> None:
    ids = queries.create_jobs([_request(), _request(seed=1)], group_id="g1", launched_by="alice", url=db_url)
    job = queries.get_job(ids[0], url=db_url)
    assert (job.status, job.progress, job.attempts, job.launched_by, job.dataset.kind) == ("queued", 0.0, 0, "alice", "demo")
    assert queries.job_counts(url=db_url)["queued"] == 2

    claimed = queries.claim_job(ids[0], host="w1", device="cpu", url=db_url)
    assert (claimed.status, claimed.attempts, claimed.worker_host) == ("running", 1, "w1")
    assert claimed.started_at is not None and claimed.heartbeat_at is not None
    assert queries.claim_job(ids[0], host="w2", device="cpu", url=db_url) is None  # a second delivery is a no-op

    assert queries.report_progress(ids[0], 1, 0.4, "fitting", history=True, url=db_url)
    assert queries.report_progress(ids[0], 1, 0.8, "scoring", url=db_url)
    assert queries.get_job(ids[0], url=db_url).progress == pytest.approx(0.8)
    assert [h.progress for h in queries.progress_history(ids[0], url=db_url)] == [pytest.approx(0.4)]

    assert queries.complete_job(ids[0], 1, [_outcome("brick"), _outcome("grass", n=2)], RECORD, {"k": 1}, url=db_url)
    done = queries.get_job(ids[0], url=db_url)
    assert (done.status, done.progress, done.finished_at is not None) == ("succeeded", 1.0, True)
    assert queries.result_counts(ids[0], url=db_url) == {"metrics": 6, "image_results": 5, "category_runs": 2,
                                                         "fit_units": 0, "run_records": 1}
    frame = queries.metrics_frame(group_id="g1", url=db_url)
    assert set(frame.category) == {"brick", "grass"} and set(frame.metric) == {"image_auroc", "pixel_auroc", "aupro"}
    values = frame.set_index(["category", "metric"]).value
    assert values["brick", "image_auroc"] == pytest.approx(0.75)
    assert values.isna()["brick", "pixel_auroc"] and values.isna()["brick", "aupro"]  # None and NaN -> NULL
    rows = queries.image_results(ids[0], "brick", url=db_url)
    assert [(r.map_path, r.map_index) for r in rows] == [("maps/x/brick.npz", i) for i in range(3)]
    assert queries.run_record(ids[0], url=db_url).random_weights is True
    runs = queries.category_runs(ids[0], url=db_url)
    assert [r.category for r in runs] == ["brick", "grass"] and runs[0].fit_s == 1.0
    assert len(queries.list_splits(url=db_url)) == 2
    # The same split content seen again by another job is stored once.
    queries.claim_job(ids[1], host="w1", device="cpu", url=db_url)
    assert queries.complete_job(ids[1], 1, [_outcome("brick")], RECORD, {}, url=db_url)
    assert len(queries.list_splits(url=db_url)) == 2
    groups = queries.list_groups(url=db_url)
    assert groups.to_dict("records")[0] | {"created_at": None} == {
        "group_id": "g1", "jobs": 2, "created_at": None, "succeeded": 2, "failed_or_cancelled": 0}
    # A job can only finish once.
    assert not queries.complete_job(ids[0], 1, [_outcome()], RECORD, {}, url=db_url)
    assert queries.result_counts(ids[0], url=db_url)["metrics"] == 6


def test_result_rows_are_all_or_nothing(db_url: str) -> None:
    [job_id] = queries.create_jobs([_request()], url=db_url)
    queries.claim_job(job_id, "w", "cpu", url=db_url)
    duplicate = _outcome(images=[Img("/same.png", 0, 0.1), Img("/same.png", 1, 0.2)])  # violates a unique key
    with pytest.raises(Exception):  # noqa: B017 (IntegrityError, wrapped differently per driver)
        queries.complete_job(job_id, 1, [_outcome("ok"), duplicate], RECORD, {}, url=db_url)
    assert queries.result_counts(job_id, url=db_url) == dict.fromkeys(RESULT_TABLES, 0)
    assert queries.get_job(job_id, url=db_url).status == "running"
    assert queries.fail_job(job_id, 1, "ValueError: broken\n\nTraceback ...", url=db_url)
    failed = queries.get_job(job_id, url=db_url)
    assert (failed.status, failed.message) == ("failed", "ValueError: broken")
    assert failed.error.startswith("ValueError: broken\n")


def test_claim_is_atomic_under_concurrency(db_url: str) -> None:
    job_ids = queries.create_jobs([_request(seed=s) for s in range(5)], url=db_url)
    winners: dict[int, list[str]] = {j: [] for j in job_ids}
    barrier = threading.Barrier(6)

    def worker(name: str) -> None:
        barrier.wait()
        for job_id in job_ids:
            if queries.claim_job(job_id, name, "cpu", url=db_url) is not None:
                winners[job_id].append(name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(w) == 1 for w in winners.values()), winners
    assert all(j.attempts == 1 for j in queries.list_jobs(job_ids=job_ids, url=db_url))


def test_cancel_queued_running_and_finished(db_url: str) -> None:
    queued, running, finished = queries.create_jobs([_request(seed=s) for s in range(3)], url=db_url)
    queries.claim_job(running, "w", "cpu", url=db_url)
    queries.claim_job(finished, "w", "cpu", url=db_url)
    queries.complete_job(finished, 1, [_outcome()], RECORD, {}, url=db_url)

    outcome = queries.request_cancel([queued, running, finished, 999_999], url=db_url)
    assert outcome == {queued: "cancelled", running: "cancelling", finished: "already succeeded", 999_999: "not found"}
    assert queries.get_job(queued, url=db_url).status == "cancelled"
    assert queries.claim_job(queued, "w", "cpu", url=db_url) is None  # its message arrives later: skipped
    assert queries.cancel_requested(running, url=db_url)
    assert queries.get_job(running, url=db_url).status == "running"  # stops at its next check
    assert queries.mark_cancelled(running, 1, url=db_url)
    assert queries.get_job(running, url=db_url).status == "cancelled"
    assert queries.get_job(finished, url=db_url).status == "succeeded"


def _age_heartbeat(db_url: str, job_id: int, seconds: float) -> None:
    from sqlalchemy import update

    from db.models import Job
    from db.session import session_scope, utcnow

    with session_scope(db_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - dt.timedelta(seconds=seconds)))


def test_expire_stale_jobs_fails_them_by_default(db_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("IAD_ARTIFACTS", str(tmp_path / "artifacts"))
    stale, alive = queries.create_jobs([_request(), _request(seed=1)], max_attempts=1, url=db_url)
    for job_id in (stale, alive):
        queries.claim_job(job_id, "w", "cpu", url=db_url)
    artifacts.save_maps(stale, 1, "brick", np.zeros((1, 4, 4)), ["/a.png"])  # the lost attempt's files
    _age_heartbeat(db_url, stale, 120)

    expired = queries.expire_stale_jobs(lease=60, url=db_url)
    assert [(e.job_id, e.action) for e in expired] == [(stale, "failed")]
    job = queries.get_job(stale, url=db_url)
    assert job.status == "failed" and job.message.startswith("worker lost (no heartbeat since ")
    assert queries.get_job(alive, url=db_url).status == "running"
    assert not (tmp_path / "artifacts" / artifacts.job_dir(stale)).exists()
    # The lost worker, should it come back, can no longer write anything.
    assert not queries.report_progress(stale, 1, 0.9, "late", url=db_url)
    assert not queries.heartbeat(stale, 1, url=db_url)
    assert not queries.complete_job(stale, 1, [_outcome()], RECORD, {}, url=db_url)
    assert queries.result_counts(stale, url=db_url) == dict.fromkeys(RESULT_TABLES, 0)


def test_expire_stale_jobs_requeues_while_attempts_remain(db_url: str) -> None:
    [job_id] = queries.create_jobs([_request()], max_attempts=2, url=db_url)
    requeued = []
    queries.claim_job(job_id, "w1", "cpu", url=db_url)
    _age_heartbeat(db_url, job_id, 120)
    # Without a way to publish (e.g. called from the dashboard) a retryable job is left to the workers.
    assert queries.expire_stale_jobs(lease=60, url=db_url) == []
    assert queries.get_job(job_id, url=db_url).status == "running"
    expired = queries.expire_stale_jobs(lease=60, requeue=requeued.append, url=db_url)
    assert [e.action for e in expired] == ["requeued"] and [j.id for j in requeued] == [job_id]
    job = queries.get_job(job_id, url=db_url)
    assert (job.status, job.attempts) == ("queued", 1) and job.message.startswith("re-queued after attempt 1")

    second = queries.claim_job(job_id, "w2", "cpu", url=db_url)
    assert second.attempts == 2
    assert not queries.report_progress(job_id, 1, 0.5, "zombie attempt 1", url=db_url)  # fenced off
    _age_heartbeat(db_url, job_id, 120)
    assert [e.action for e in queries.expire_stale_jobs(lease=60, requeue=requeued.append, url=db_url)] == ["failed"]
    assert queries.get_job(job_id, url=db_url).status == "failed"


def test_a_failed_requeue_fails_the_job(db_url: str) -> None:
    [job_id] = queries.create_jobs([_request()], max_attempts=2, url=db_url)
    queries.claim_job(job_id, "w1", "cpu", url=db_url)
    _age_heartbeat(db_url, job_id, 120)

    def broker_down(job) -> None:
        raise ConnectionError("broker unreachable")

    assert [e.action for e in queries.expire_stale_jobs(lease=60, requeue=broker_down, url=db_url)] == ["requeued"]
    job = queries.get_job(job_id, url=db_url)
    assert job.status == "failed" and "broker unreachable" in job.message


def test_expire_honours_a_pending_cancel(db_url: str) -> None:
    [job_id] = queries.create_jobs([_request()], max_attempts=3, url=db_url)
    queries.claim_job(job_id, "w", "cpu", url=db_url)
    queries.request_cancel([job_id], url=db_url)
    _age_heartbeat(db_url, job_id, 120)
    assert [e.action for e in queries.expire_stale_jobs(lease=60, requeue=lambda j: None, url=db_url)] == ["cancelled"]


def test_delete_jobs_removes_results_and_maps(db_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("IAD_ARTIFACTS", str(tmp_path))
    done, queued = queries.create_jobs([_request(), _request(seed=1)], url=db_url)
    queries.claim_job(done, "w", "cpu", url=db_url)
    artifacts.save_maps(done, 1, "brick", np.zeros((3, 4, 4)), ["a", "b", "c"])
    queries.complete_job(done, 1, [_outcome()], RECORD, {}, url=db_url)
    assert queries.delete_jobs([done, queued], url=db_url) == [done]
    assert queries.get_job(done, url=db_url) is None and queries.get_job(queued, url=db_url) is not None
    assert not (tmp_path / artifacts.job_dir(done)).exists()


def test_list_jobs_filters(db_url: str) -> None:
    a, b, c = queries.create_jobs([_request(seed=s) for s in range(3)], group_id="gx", url=db_url)
    queries.create_jobs([_request()], group_id="gy", url=db_url)
    queries.request_cancel([b], url=db_url)
    assert [j.id for j in queries.list_jobs(group_id="gx", url=db_url)] == [c, b, a]
    assert [j.id for j in queries.list_jobs(status="cancelled", url=db_url)] == [b]
    assert len(queries.list_jobs(limit=2, url=db_url)) == 2
    with pytest.raises(ValueError, match="unknown job status"):
        queries.list_jobs(status="done", url=db_url)
    assert queries.list_methods(url=db_url) == ["patchcore"]
    assert [(d.kind, d.root) for d in queries.list_datasets(url=db_url)] == [("demo", "/data/demo")]


# --- artifacts ------------------------------------------------------------------------------------------


def test_maps_are_stored_without_loss_and_written_atomically(tmp_path: Path) -> None:
    # Squared distances of PatchCore-style scorers exceed float16's range (65504): stored maps must not
    # overflow or lose resolution, so that re-scoring from them equals the metrics computed in memory.
    maps = np.random.default_rng(0).random((5, 16, 16), dtype=np.float32) * 3 + 65_000
    maps[0, 0, 0] = 1e6
    rel = artifacts.save_maps(7, 1, "metal nut/x", maps, [f"img{i}.png" for i in range(5)], root=tmp_path)
    assert rel == "maps/job-000007/a1/metal_nut_x.npz"
    stored, paths = artifacts.load_map_file(rel, root=tmp_path)
    assert stored.dtype == np.float32 and paths == [f"img{i}.png" for i in range(5)]
    np.testing.assert_array_equal(stored, maps)
    np.testing.assert_array_equal(artifacts.load_maps(rel, [4, 1], root=tmp_path), maps[[4, 1]])
    labels, masks = np.array([0, 1, 0, 1, 0]), np.zeros((5, 16, 16), dtype=bool)
    masks[1, :4], masks[3, 8:] = True, True
    from ad_core.metrics import compute_all

    assert compute_all(labels, stored.max(axis=(1, 2)), masks, stored) == compute_all(
        labels, maps.max(axis=(1, 2)), masks, maps)
    assert [p.name for p in (tmp_path / "maps/job-000007/a1").iterdir()] == ["metal_nut_x.npz"]  # no tmp left
    with pytest.raises(ValueError):
        artifacts.save_maps(7, 1, "bad", maps, ["one path"], root=tmp_path)
    assert artifacts.delete_job_maps(7, 1, root=tmp_path)
    assert not (tmp_path / "maps/job-000007").exists()
