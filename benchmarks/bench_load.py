"""Load: N queued jobs of a tiny method drain through W workers on Redis + PostgreSQL (issue 17).

    python benchmarks/bench_load.py [--jobs 1000 --workers 4]

Needs the project's Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432). Uses a fresh PostgreSQL
database and an empty Redis database index with its own queue prefix (all removed afterwards), a tiny
generated demo category, and `toy_mean` (benchmarks/load_toy.py: a mean-image distance, milliseconds of
compute) so that what is measured is the job system: submit, deliver, claim, run, store. Prints throughput
(jobs/s while draining), the submit -> running latency distribution, and the checks: none lost (every job
succeeded), none run twice (one attempt each, no duplicate result rows, no second claim in the logs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without installing
sys.path.insert(0, str(REPO / "tests"))

import jobs_helpers as h  # noqa: E402  (the test suite's real-server helpers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    from db import queries

    with tempfile.TemporaryDirectory(prefix="iad-load-") as tmp, h.postgres_database() as pg, \
            h.redis_database() as redis:
        home = Path(tmp)
        stack = h.make_stack("load", home, pg.url, redis.url, prefix=redis.prefix,
                             IAD_PLUGINS="benchmarks.load_toy", PYTHONPATH=str(REPO), IAD_LEASE_SECONDS="60")
        from ad_core.data import make_demo_dataset

        root = make_demo_dataset(home / "demo", categories=("brick",), seed=0, n_train=4, n_test_good=2,
                                 n_test_defect=2, image_size=32)
        for key, value in stack.env.items():
            if key.startswith("IAD_") or key == "PYTHONPATH":
                os.environ[key] = value
        os.environ.pop("IAD_BROKER_URL", None)
        os.environ["IAD_BROKER_URL"] = redis.url
        from workers.celery_app import submit_jobs
        from workers.planner import plan_jobs

        plan = plan_jobs(["toy_mean"], "demo", str(root), ["brick"], list(range(args.jobs)))
        plan.raise_errors(["toy_mean"])
        # Workers first (they start in ~10 s each), then one submit of the whole matrix: the latency is the
        # queue's, not the workers' start-up.
        workers = [stack.start_worker(log_name=f"worker-{i}.log") for i in range(args.workers)]
        try:
            for w in workers:
                stack.wait_ready(w, timeout=180)
            t0 = time.monotonic()
            _, ids = submit_jobs(plan.requests, group_id=f"load-{uuid.uuid4().hex[:6]}")
            submit_s = time.monotonic() - t0
            print(f"submitted {len(ids)} jobs in {submit_s:.1f} s ({len(ids) / submit_s:.0f} jobs/s)", flush=True)
            jobs = h.wait_final(stack, ids, timeout=3600)
        finally:
            for w in workers:
                stack.stop(w)
        logs = "".join(h.read_log(w) for w in workers)
        stack.close()
        statuses = {j.status for j in jobs.values()}
        started = np.array([(j.started_at - j.created_at).total_seconds() for j in jobs.values()])
        first = min(j.started_at for j in jobs.values())
        last = max(j.finished_at for j in jobs.values())
        drain_s = (last - first).total_seconds()
        frame = queries.metrics_frame(job_ids=ids, url=pg.url)
        duplicates = int(frame.duplicated(["job_id", "category", "metric"]).sum())
        hosts = {j.worker_host for j in jobs.values()}
        print()
        print("| | value |")
        print("|---|---|")
        print(f"| jobs, workers | {len(ids)}, {args.workers} (Redis broker, PostgreSQL results, {os.cpu_count()} CPU cores) |")
        print(f"| throughput while draining | {len(ids) / drain_s:.2f} jobs/s ({drain_s:.0f} s from the first start to the last finish) |")
        print(f"| submit (create rows + publish) | {len(ids) / submit_s:.0f} jobs/s |")
        q = np.percentile(started, [50, 90, 99])
        print(f"| submit -> running latency | min {started.min():.1f} s, p50 {q[0]:.1f} s, p90 {q[1]:.1f} s, "
              f"p99 {q[2]:.1f} s, max {started.max():.1f} s (the queue wait: {len(ids)} jobs submitted at once, "
              "workers already running) |")
        print(f"| statuses | {sorted(statuses)} |")
        print(f"| attempts | {sorted({j.attempts for j in jobs.values()})} (1 = none claimed twice) |")
        print(f"| duplicate metric rows | {duplicates} |")
        print(f"| workers that ran jobs | {len(hosts)} |")
        print(f"| 'succeeded' in the worker logs | {logs.count(chr(39) + 'succeeded' + chr(39))} |")
        ok = statuses == {"succeeded"} and {j.attempts for j in jobs.values()} == {1} and duplicates == 0
        print("\nnone lost, none run twice" if ok else "\nFAILED: see the table")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
