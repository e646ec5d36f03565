"""Run one job row: claim it, hand it to the ad_core runner loop, store maps and results, finish it.

This is everything the Celery task does, without Celery, so it can be reasoned about (and tested) on its
own. Guarantees (see `db.queries` for the database side):
- a job runs only if this call's conditional claim moved it from `queued` to `running`;
- progress + message reach the job row at most twice a second (plus a thinned history), the cancel flag
  is read at most twice a second, and a background thread refreshes the heartbeat every
  `IAD_HEARTBEAT_SECONDS`, so the lease never expires for a slow-but-alive job;
- maps are written to files first; then all result rows and `succeeded` go in ONE transaction; on
  failure or cancellation this attempt's map files are deleted and no result row exists;
- while the database is unreachable (a PostgreSQL restart), progress is skipped and the writes that end
  the job are retried for `IAD_DB_RETRY_SECONDS`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import OperationalError

from db import artifacts, queries
from db.session import init_db
from workers import faults
from workers.settings import check_data_root, db_retry_seconds, heartbeat_seconds, progress_interval

T = TypeVar("T")

log = logging.getLogger("iad.worker")

CANCEL_CHECK_INTERVAL_S = 0.5  # the cancel flag is read at most twice a second
HISTORY_MIN_STEP = 0.01  # a progress-history row per >= 1% step ...
HISTORY_MAX_GAP_S = 30.0  # ... or per 30 s


class JobReporter:
    """Progress callback and cancel check for one attempt of one job, both throttled."""

    def __init__(self, job_id: int, attempt: int, url: str | None = None):
        self.job_id, self.attempt, self.url = job_id, attempt, url
        self.interval = progress_interval()  # default 0.5 s: at most ~2 progress writes per second
        self.lost = False  # set when the job stopped being ours (lease expired, finished elsewhere)
        self._last_write = 0.0
        self._last_history = (-1.0, 0.0)  # (progress, time)
        self._last_check = 0.0
        self._cancel = False
        self._lock = threading.Lock()

    def progress(self, fraction: float, message: str, force: bool = False) -> None:
        faults.checkpoint(message)  # inert unless IAD_FAULT_PAUSE is set (the fault campaign's tests)
        now = time.monotonic()
        if not force and now - self._last_write < self.interval:
            return
        with self._lock:
            self._last_write = now
            last_p, last_t = self._last_history
            history = force or fraction - last_p >= HISTORY_MIN_STEP or now - last_t >= HISTORY_MAX_GAP_S
            if history:
                self._last_history = (fraction, now)
            try:
                ours = queries.report_progress(self.job_id, self.attempt, fraction, message, history=history,
                                               url=self.url)
            except OperationalError as exc:  # the database is away: progress is best effort, the job goes on
                log.warning("job %s: progress not recorded, the database is unreachable (%s)", self.job_id,
                            type(exc.orig).__name__ if exc.orig is not None else exc)
                return
            if not ours:
                self.lost = True

    def should_cancel(self, force: bool = False) -> bool:
        if self.lost or self._cancel:
            return True
        now = time.monotonic()
        if force or now - self._last_check >= CANCEL_CHECK_INTERVAL_S:
            self._last_check = now
            try:
                self._cancel = queries.cancel_requested(self.job_id, url=self.url)
            except OperationalError:  # the database is away: go on; the next check (or the final claim) decides
                if force:
                    self._cancel = retry_while_database_away(
                        f"job {self.job_id}: reading the cancel flag",
                        lambda: queries.cancel_requested(self.job_id, url=self.url))
        return self._cancel


class Heartbeat(threading.Thread):
    """Refreshes the job's heartbeat while the task runs, independently of progress reports."""

    def __init__(self, reporter: JobReporter, interval: float):
        super().__init__(name=f"heartbeat-job-{reporter.job_id}", daemon=True)
        self.reporter, self.interval = reporter, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if not queries.heartbeat(self.reporter.job_id, self.reporter.attempt, url=self.reporter.url):
                    self.reporter.lost = True
                    return
            except OperationalError as exc:  # the database is away: the next beat may succeed
                log.warning("heartbeat of job %s not recorded, the database is unreachable (%s)",
                            self.reporter.job_id, type(exc.orig).__name__ if exc.orig is not None else exc)
            except Exception:  # nothing may kill the thread; the next beat may succeed
                log.exception("heartbeat of job %s failed", self.reporter.job_id)

    def stop(self) -> None:
        self.stopped.set()


def format_error(exc: BaseException) -> str:
    """First line: what went wrong, in words; then the traceback for whoever debugs it."""
    from ad_core.errors import ConfigError, DatasetError, WeightsError

    first = str(exc) if isinstance(exc, ConfigError | DatasetError | WeightsError) else f"{type(exc).__name__}: {exc}"
    first = first.strip().splitlines()[0] if first.strip() else type(exc).__name__
    return f"{first}\n\n{''.join(traceback.format_exception(exc))}"


def retry_while_database_away(what: str, write: Callable[[], T]) -> T:
    """`write()`, retried with backoff for `db_retry_seconds()` while the database is unreachable (a restart,
    a failover): the writes that end a job are each one transaction, so a failed try left nothing."""
    deadline = time.monotonic() + db_retry_seconds()
    delay = 0.5
    while True:
        try:
            return write()
        except OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: the database is unreachable (%s); retrying in %.1f s", what,
                        type(exc.orig).__name__ if exc.orig is not None else exc, delay)
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


def execute_job(job_id: int, worker: str | None = None, url: str | None = None) -> str:
    """Claim and run job `job_id`. Returns what happened: succeeded, failed, cancelled, lost or skipped (...)."""
    from ad_core.annotations import DEFAULT_GT_VERSION
    from ad_core.errors import AnnotationError, ConfigError
    from ad_core.frame import LEGACY_FRAME
    from ad_core.runner import Cancelled, CategoryResult, RunSpec, run

    init_db(url)
    worker = worker or worker_name()
    queued = queries.get_job(job_id, url=url)
    job = queries.claim_job(job_id, host=worker, device=describe_device(queued.device), url=url) if queued else None
    if job is None:
        # Already claimed (a redelivered or duplicated message), finished, cancelled or deleted: do nothing.
        current = queries.get_job(job_id, url=url)
        state = "missing" if current is None else current.status
        log.info("job %s not claimed (status: %s); skipping this message", job_id, state)
        return f"skipped ({state})"

    attempt = job.attempts
    reporter = JobReporter(job_id, attempt, url)
    beat = Heartbeat(reporter, heartbeat_seconds())
    beat.start()
    outcomes: list[queries.CategoryOutcome] = []

    def store_category(result: CategoryResult) -> None:
        # Maps go to files as soon as a category is done; rows are written at the end, in one transaction.
        maps_path = artifacts.save_maps(
            job_id, attempt, result.category, result.anomaly_maps, [img.path for img in result.images]
        )
        counts = result.counts
        split = queries.SplitInfo(
            content_hash=result.split_hash, train_anomalies=result.train_anomalies, n_train=counts["train"],
            n_train_anomalous=counts["train_anomalous"], n_test=counts["test"], n_test_good=counts["test_good"],
            n_test_anomalous=counts["test_anomalous"], has_masks=result.has_masks,
        )
        outcomes.append(queries.CategoryOutcome(
            category=result.category, metrics=result.metrics, images=result.images, timings=result.timings,
            maps_path=maps_path, split=split, notes=list(result.notes), fit_unit=result.fit_unit,
        ))

    try:
        # This host's IAD_DATA_ROOTS decides too: a job row written past the planner (or on another host with
        # another policy) must not make this worker read outside them.
        check_data_root(job.dataset.root)
        # The stored config is complete: it is rebuilt as it is (paths and GPUs are validated again on this host).
        ground_truth = None
        if job.gt_version and job.gt_version != DEFAULT_GT_VERSION:
            from db.annotations import ground_truth_of

            try:  # the set's entries, checked against the version the job was planned with (RunSpec.prepare)
                ground_truth = ground_truth_of(job.gt_version, job.dataset.kind, job.dataset.root, url=url)
            except AnnotationError as exc:
                raise ConfigError(f"ground truth {job.gt_version}: {exc}") from exc
        spec = RunSpec(
            method=job.method, dataset=job.dataset.kind, root=job.dataset.root, categories=list(job.categories),
            seed=job.seed, device=job.device, split=dict(job.split or {}), config=dict(job.config),
            frame=job.frame or LEGACY_FRAME, ground_truth=ground_truth,
        )
        reporter.progress(0.0, "preparing the split", force=True)
        result = run(spec, reporter.progress, reporter.should_cancel, on_category=store_category, keep_maps=False)
        if reporter.should_cancel(force=True):
            raise Cancelled("cancel requested")
        reporter.progress(1.0, "saving results", force=True)
        units = [
            queries.FitUnitOutcome(
                index=u.index, categories=u.categories, fit_s=u.fit_s, peak_rss_mb=u.peak_rss_mb,
                peak_gpu_mb=u.peak_gpu_mb, weights_source=u.weights_source, details=u.details,
            )
            for u in result.units
        ]
        stored = retry_while_database_away(
            f"job {job_id}: storing results",
            lambda: queries.complete_job(job_id, attempt, outcomes, result.provenance, result.config, units, url=url))
        if not stored and _succeeded(job_id, attempt, url):
            stored = True  # an earlier try committed, but its answer was lost with the connection
        if not stored:
            artifacts.delete_job_maps(job_id, attempt)
            log.warning("job %s attempt %s finished but the job is no longer ours; results discarded", job_id, attempt)
            return "lost"
        log.info("job %s succeeded", job_id)
        return "succeeded"
    except Cancelled:
        artifacts.delete_job_maps(job_id, attempt)
        if queries.mark_cancelled(job_id, attempt, url=url):
            log.info("job %s cancelled", job_id)
            return "cancelled"
        return "lost"
    except Exception as exc:
        artifacts.delete_job_maps(job_id, attempt)
        log.exception("job %s failed", job_id)
        error = format_error(exc)
        retry_while_database_away(f"job {job_id}: recording the failure",
                                  lambda: queries.fail_job(job_id, attempt, error, url=url))
        return "failed"
    except BaseException as exc:  # KeyboardInterrupt/SystemExit: the worker is being stopped mid-job
        artifacts.delete_job_maps(job_id, attempt)
        queries.fail_job(job_id, attempt, f"worker stopped while the job was running ({type(exc).__name__})", url=url)
        raise
    finally:
        beat.stop()


def _succeeded(job_id: int, attempt: int, url: str | None) -> bool:
    job = queries.get_job(job_id, url=url)
    return job is not None and job.status == "succeeded" and job.attempts == attempt


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def describe_device(device: str) -> str:
    """What `device` means on this host, e.g. "cuda:0 (NVIDIA H100, CUDA_VISIBLE_DEVICES=3)"."""
    if not device.startswith("cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return f"{device} (no GPU visible)"
    name = torch.cuda.get_device_name(torch.device(device))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{device} ({name}" + (f", CUDA_VISIBLE_DEVICES={visible})" if visible else ")")
