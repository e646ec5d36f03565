"""End-to-end job system: real `iad worker` processes on real brokers and databases, no mocks.

Installations: "embedded" (SQLite database + kombu's SQLAlchemy transport on a SQLite file: no server),
"redis-postgres" (Redis broker + PostgreSQL database, as a team would run it) and, for cancellation,
"rabbitmq-sqlite". Jobs are tiny PatchCore runs on a generated demo dataset; "slow" jobs are big enough
to be cancelled or killed mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import jobs_helpers as h
import pytest

from db import artifacts, queries

pytestmark = pytest.mark.timeout(300)

ONE_CATEGORY_ROWS = {"metrics": 7, "image_results": 7, "category_runs": 1, "fit_units": 1, "run_records": 1}
NO_ROWS = dict.fromkeys(ONE_CATEGORY_ROWS, 0)
EMBEDDED = "embedded"
REDIS_PG = pytest.param("redis-postgres", marks=[pytest.mark.postgres, pytest.mark.redis])
RABBITMQ = "rabbitmq-sqlite"


def _stack(kind: str, home: Path, resources: ExitStack, **extra_env: str) -> h.Stack:
    if kind == "embedded":
        return h.make_stack(kind, home, f"sqlite:///{home / 'iad.sqlite'}", **extra_env)
    if kind == "rabbitmq-sqlite":
        url, prefix = resources.enter_context(h.rabbitmq_broker())
        return h.make_stack(kind, home, f"sqlite:///{home / 'iad.sqlite'}", url, prefix=prefix, **extra_env)
    pg = resources.enter_context(h.postgres_database())
    redis = resources.enter_context(h.redis_database())
    return h.make_stack(kind, home, pg.url, redis.url, prefix=redis.prefix, **extra_env)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Stack]:
    """One installation with one running worker, shared by the tests of this module per backend."""
    with ExitStack() as resources:
        st = _stack(request.param, tmp_path_factory.mktemp(request.param), resources)
        resources.callback(st.close)
        st.tiny = h.make_tiny_demo(st.home / "tiny")  # type: ignore[attr-defined]
        st.slow = h.make_slow_demo(st.home / "slow")  # type: ignore[attr-defined]
        st.wait_ready(st.start_worker())
        yield st


def _tiny(st: h.Stack, *extra: str) -> list[str]:
    return ["--dataset", "demo", "--root", str(st.tiny), *h.TINY_ARGS, *extra]  # type: ignore[attr-defined]


def _slow(st: h.Stack, *extra: str) -> list[str]:
    return ["--dataset", "demo", "--root", str(st.slow), "--category", "gravel", *h.SLOW_ARGS, *extra]  # type: ignore[attr-defined]


def _assert_stored(st: h.Stack, job_id: int) -> None:
    assert queries.result_counts(job_id, url=st.db_url) == ONE_CATEGORY_ROWS
    [run] = queries.category_runs(job_id, url=st.db_url)
    maps, paths = artifacts.load_map_file(run.maps_path, root=st.artifacts)
    assert maps.shape == (7, 256, 256) and str(maps.dtype) == "float32"  # the evaluation frame (full image, 256 px)
    assert paths == [r.path for r in queries.image_results(job_id, url=st.db_url)]


@pytest.mark.parametrize("stack", [EMBEDDED, REDIS_PG], indirect=True)
def test_matrix_of_jobs_runs_to_completion(stack: h.Stack, monkeypatch, capsys) -> None:
    # Two methods x two categories in one command. ReConPatch's and PatchCore's "fast" presets share the
    # tiny-data overrides (crop/resize/batch size, random weights).
    matrix = ["--method", "patchcore", "reconpatch", "--preset", "fast", "--category", *h.TINY_CATEGORIES,
              "--group", "matrix", *_tiny(stack)]
    if stack.name == "embedded":  # the real `iad` entry point in a subprocess (once: it costs a torch import)
        proc = stack.iad("submit", *matrix)
        assert proc.returncode == 0, proc.stderr
        ids = [int(i) for i in proc.stdout.strip().splitlines()[-1].split()]
    else:
        ids = h.submit(stack, monkeypatch, capsys, *matrix)
    assert len(ids) == 4

    seen: dict[int, set[float]] = {}
    jobs = h.wait_final(stack, ids, timeout=120, seen=seen)
    assert {j.status for j in jobs.values()} == {"succeeded"}, {j.id: j.error for j in jobs.values()}
    for job_id in ids:
        _assert_stored(stack, job_id)
        assert jobs[job_id].attempts == 1 and jobs[job_id].worker_host.startswith("iad-")
        history = [p.progress for p in queries.progress_history(job_id, url=stack.db_url)]
        observed = sorted(set(history) | seen[job_id])
        assert any(0 < p < 1 for p in observed), observed  # progress moved through intermediate values
        assert history == sorted(history) and history[-1] == 1.0

    frame = queries.metrics_frame(group_id="matrix", url=stack.db_url)
    grid = frame[frame.metric == "image_auroc"].pivot(index="method", columns="category", values="value")
    assert grid.shape == (2, 2) and not grid.isna().any().any()  # method x category, all filled
    assert len(frame) == 4 * 7

    from workers.cli import main

    stack.apply_env(monkeypatch)
    capsys.readouterr()
    assert main(["jobs", "--group", "matrix"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:6] == ["id", "method", "dataset", "category", "seed", "status"]
    assert table.count("succeeded") == 4 and "reconpatch/fast" in table and "100%" in table


@pytest.mark.parametrize("stack", [EMBEDDED, REDIS_PG, RABBITMQ], indirect=True)
def test_cancel_a_queued_and_a_running_job(stack: h.Stack, monkeypatch, capsys) -> None:
    [running] = h.submit(stack, monkeypatch, capsys, "--method", "patchcore", *_slow(stack))
    [queued] = h.submit(stack, monkeypatch, capsys, "--method", "patchcore", "--category", "brick", *_tiny(stack))
    h.wait_for(lambda: queries.get_job(running, url=stack.db_url).status == "running", 60, "the slow job to start")
    time.sleep(1.0)  # well inside its fit (it would take ~15 s)
    assert queries.get_job(queued, url=stack.db_url).status == "queued"  # the only worker is busy

    from workers.cli import main

    capsys.readouterr()
    assert main(["cancel", str(queued), str(running)]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == [f"{queued}: cancelled", f"{running}: cancelling"]
    assert queries.get_job(queued, url=stack.db_url).status == "cancelled"  # at once, no worker involved

    jobs = h.wait_final(stack, [running, queued], timeout=60)
    assert jobs[running].status == "cancelled" and jobs[running].progress < 1
    assert jobs[queued].status == "cancelled" and jobs[queued].attempts == 0  # never started
    for job_id in (running, queued):
        assert queries.result_counts(job_id, url=stack.db_url) == NO_ROWS
        assert not (stack.artifacts / artifacts.job_dir(job_id)).exists()
    # The worker is free again and skips the cancelled job's message (or it was revoked).
    [after] = h.submit(stack, monkeypatch, capsys, "--method", "patchcore", "--category", "grass", *_tiny(stack))
    assert h.wait_final(stack, [after], timeout=60)[after].status == "succeeded"
    assert queries.get_job(queued, url=stack.db_url).status == "cancelled"


@pytest.mark.parametrize("kind,max_attempts", [
    ("embedded", "1"),
    pytest.param("redis-postgres", "2", marks=[pytest.mark.postgres, pytest.mark.redis]),
])
def test_worker_killed_mid_job(kind: str, max_attempts: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """kill -9 the worker while it runs a job. IAD_MAX_ATTEMPTS=1: the job fails ("worker lost"); 2: it
    is re-queued and runs again. Either way no partial or duplicate rows, and the other jobs complete."""
    with ExitStack() as resources:
        st = _stack(kind, tmp_path, resources, IAD_MAX_ATTEMPTS=max_attempts)
        resources.callback(st.close)
        st.tiny, st.slow = h.make_tiny_demo(tmp_path / "tiny"), h.make_slow_demo(tmp_path / "slow")  # type: ignore[attr-defined]
        first = st.start_worker()
        st.wait_ready(first)
        [victim] = h.submit(st, monkeypatch, capsys, "--method", "patchcore", *_slow(st, "--set", "coreset_ratio=0.1"))
        others = h.submit(st, monkeypatch, capsys, "--method", "patchcore", "--category", *h.TINY_CATEGORIES, *_tiny(st))
        h.wait_for(lambda: queries.get_job(victim, url=st.db_url).status == "running", 60, "the job to start")
        time.sleep(1.0)  # inside its fit (the whole job takes ~4 s)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert queries.get_job(victim, url=st.db_url).status == "running"

        st.start_worker()  # expires the lost job at startup or within half a lease, then drains the queue
        jobs = h.wait_final(st, [victim, *others], timeout=150)
        assert [jobs[j].status for j in others] == ["succeeded", "succeeded"]
        for job_id in others:
            assert queries.result_counts(job_id, url=st.db_url) == ONE_CATEGORY_ROWS
        lost = jobs[victim]
        if max_attempts == "1":
            assert lost.status == "failed" and lost.attempts == 1
            assert lost.message.startswith("worker lost (no heartbeat since ")
            assert queries.result_counts(victim, url=st.db_url) == NO_ROWS
            assert not (st.artifacts / artifacts.job_dir(victim)).exists()
        else:
            assert lost.status == "succeeded" and lost.attempts == 2, lost.error
            assert queries.result_counts(victim, url=st.db_url) == ONE_CATEGORY_ROWS | {"image_results": 4}
            [run] = queries.category_runs(victim, url=st.db_url)
            assert run.maps_path.startswith(artifacts.job_dir(victim, 2))
            assert not (st.artifacts / artifacts.job_dir(victim, 1)).exists()


@pytest.mark.postgres
@pytest.mark.redis
def test_two_workers_drain_fifty_jobs_on_postgres(tmp_path: Path, monkeypatch, capsys) -> None:
    with ExitStack() as resources:
        st = _stack("redis-postgres", tmp_path, resources)
        resources.callback(st.close)
        st.tiny = h.make_tiny_demo(tmp_path / "tiny")  # type: ignore[attr-defined]
        workers = [st.start_worker(), st.start_worker()]
        for w in workers:
            st.wait_ready(w)
        ids = h.submit(st, monkeypatch, capsys, "--method", "patchcore", "--preset", "ensemble",
                       "--category", *h.TINY_CATEGORIES, "--seeds", *map(str, range(25)), *_tiny(st),
                       "--set", "batch_size=8")
        assert len(ids) == 50 and len(set(ids)) == 50
        jobs = h.wait_final(st, ids, timeout=200)
        assert [j.id for j in jobs.values() if j.status != "succeeded"] == []  # none lost
        assert {j.attempts for j in jobs.values()} == {1}  # none claimed twice
        assert len({j.worker_host for j in jobs.values()}) == 2  # both workers took part
        frame = queries.metrics_frame(job_ids=ids, url=st.db_url)
        assert len(frame) == 50 * 7 and not frame.duplicated(["job_id", "category", "metric"]).any()
        for w in workers:
            st.stop(w)
        logs = "".join(h.read_log(w) for w in workers)
        assert logs.count("'succeeded'") == 50 and "not claimed" not in logs  # each ran exactly once


def test_iad_up_runs_a_worker_and_stops_cleanly_on_ctrl_c(tmp_path: Path, monkeypatch, capsys) -> None:
    st = h.make_stack("up", tmp_path, f"sqlite:///{tmp_path / 'iad.sqlite'}")
    st.tiny = h.make_tiny_demo(tmp_path / "tiny")  # type: ignore[attr-defined]
    log_path = tmp_path / "up.log"
    with open(log_path, "w") as log:
        up = subprocess.Popen([*h.IAD, "up", "--port", str(h.free_port()), "--stop-timeout", "20"], env=st.env,
                              cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        [job_id] = h.submit(st, monkeypatch, capsys, "--method", "patchcore", "--category", "brick", *_tiny(st))
        h.wait_for(lambda: queries.get_job(job_id, url=st.db_url).is_final, 120, "the job under `iad up`")
        assert queries.get_job(job_id, url=st.db_url).status == "succeeded"
        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert up.wait(40) == 0, log_path.read_text()
        time.sleep(0.5)
        pids = [int(line.split()[-1]) for line in log_path.read_text().splitlines() if line.startswith("iad up: pid")]
        assert pids, log_path.read_text()
        for pid in pids:  # the worker (and dashboard) are gone, not orphaned
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
