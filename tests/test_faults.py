"""Fault campaign (issue 17), on real worker processes: SIGKILL at each phase of a job.

The worker is stopped at a known point by `workers.faults` (IAD_FAULT_PAUSE=<phase> pauses it there and
touches a marker file), killed with SIGKILL, and a fresh worker takes over. With IAD_MAX_ATTEMPTS=1 the job
ends failed ("worker lost"), with 2 it runs again and succeeds; either way its result rows exist exactly once
or not at all, no map file of a dead attempt is left, and no temporary (half-written) file remains.
"""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack
from pathlib import Path

import jobs_helpers as h
import pytest

from db import artifacts, queries
from workers.faults import PHASES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROWS = {"metrics": 7, "image_results": 7, "category_runs": 1, "fit_units": 1, "run_records": 1}
NO_ROWS = dict.fromkeys(ROWS, 0)


@pytest.mark.parametrize("phase,max_attempts", [*((p, "1") for p in PHASES), ("writing", "2"), ("predicting", "2")])
def test_worker_killed_at_each_phase(phase: str, max_attempts: str, tmp_path: Path, monkeypatch, capsys) -> None:
    marker = tmp_path / "paused"
    with ExitStack() as resources:
        st = h.make_stack("embedded", tmp_path, f"sqlite:///{tmp_path / 'iad.sqlite'}", IAD_FAULT_PAUSE=phase,
                          IAD_FAULT_MARKER=str(marker), IAD_MAX_ATTEMPTS=max_attempts)
        resources.callback(st.close)
        tiny = h.make_tiny_demo(tmp_path / "tiny")
        victim_worker = st.start_worker()
        st.wait_ready(victim_worker)
        [victim] = h.submit(st, monkeypatch, capsys, "--method", "patchcore", "--dataset", "demo", "--root",
                            str(tiny), "--category", "brick", *h.TINY_ARGS)
        h.wait_for(marker.exists, 90, f"the worker to reach the {phase} phase")
        assert marker.read_text().splitlines()[0] == phase
        os.killpg(victim_worker.pid, signal.SIGKILL)
        victim_worker.wait()
        assert queries.get_job(victim, url=st.db_url).status == "running"
        if phase == "writing":  # the maps were on disk when it died
            assert list((st.artifacts / artifacts.job_dir(victim, 1)).glob("*.npz"))

        del st.extra_env["IAD_FAULT_PAUSE"]
        monkeypatch.delenv("IAD_FAULT_PAUSE")  # `h.submit` exported the stack's settings to this process
        st.start_worker()  # expires the lost attempt (lease 4 s), then re-runs it or not
        [other] = h.submit(st, monkeypatch, capsys, "--method", "patchcore", "--dataset", "demo", "--root",
                           str(tiny), "--category", "grass", *h.TINY_ARGS)
        jobs = h.wait_final(st, [victim, other], timeout=120)
        assert marker.read_text().splitlines()[0] == phase  # the new worker did not pause
        assert jobs[other].status == "succeeded"  # nothing else is affected
        assert queries.result_counts(other, url=st.db_url) == ROWS
        lost = jobs[victim]
        if max_attempts == "1":
            assert lost.status == "failed" and lost.attempts == 1, lost.message
            assert lost.message.startswith("worker lost (no heartbeat since ")
            assert queries.result_counts(victim, url=st.db_url) == NO_ROWS
            assert not (st.artifacts / artifacts.job_dir(victim)).exists()
        else:
            assert lost.status == "succeeded" and lost.attempts == 2, lost.error
            assert queries.result_counts(victim, url=st.db_url) == ROWS  # exactly once
            assert not (st.artifacts / artifacts.job_dir(victim, 1)).exists()
            [run] = queries.category_runs(victim, url=st.db_url)
            maps, paths = artifacts.load_map_file(run.maps_path, root=st.artifacts)
            assert len(maps) == len(paths) == 7
        assert [p for p in st.artifacts.rglob("*") if p.name.endswith(".tmp")] == []
