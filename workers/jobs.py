"""Run one job row: claim it, run ad_core category by category, store maps and results, finish it.

This is everything the Celery task does, without Celery, so it can be reasoned about (and tested) on its
own. Guarantees (see `db.queries` for the database side):
- a job runs only if this call's conditional claim moved it from `queued` to `running`;
- progress + message reach the job row at most twice a second (plus a thinned history), the cancel flag
  is read at most twice a second, and a background thread refreshes the heartbeat every
  `IAD_HEARTBEAT_SECONDS`, so the lease never expires for a slow-but-alive job;
- maps are written to files first; then all result rows and `succeeded` go in ONE transaction; on
  failure or cancellation this attempt's map files are deleted and no result row exists.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from db import artifacts, queries
from db.session import init_db
from workers.settings import heartbeat_seconds, progress_interval

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
        now = time.monotonic()
        if not force and now - self._last_write < self.interval:
            return
        with self._lock:
            self._last_write = now
            last_p, last_t = self._last_history
            history = force or fraction - last_p >= HISTORY_MIN_STEP or now - last_t >= HISTORY_MAX_GAP_S
            if history:
                self._last_history = (fraction, now)
            if not queries.report_progress(self.job_id, self.attempt, fraction, message, history=history, url=self.url):
                self.lost = True

    def for_category(self, index: int, total: int) -> Callable[[float, str], None]:
        """Map one category's 0..1 progress into this job's overall range."""

        def report(fraction: float, message: str) -> None:
            self.progress((index + min(max(fraction, 0.0), 1.0)) / total, message)

        return report

    def should_cancel(self, force: bool = False) -> bool:
        if self.lost or self._cancel:
            return True
        now = time.monotonic()
        if force or now - self._last_check >= CANCEL_CHECK_INTERVAL_S:
            self._last_check = now
            self._cancel = queries.cancel_requested(self.job_id, url=self.url)
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
            except Exception:  # a database hiccup must not kill the thread; the next beat may succeed
                log.exception("heartbeat of job %s failed", self.reporter.job_id)

    def stop(self) -> None:
        self.stopped.set()


def split_info(dataset: str, root: str, category: str) -> queries.SplitInfo:
    """Content hash over the split's file list (relative paths, labels, sizes, masks) and its counts."""
    from ad_core.data import load_split

    split = load_split(dataset, root, category)
    digest = hashlib.sha256()
    base = Path(root)

    def entry(path: str | None) -> str:
        if path is None:
            return "-"
        p = Path(path)
        rel = p.relative_to(base) if p.is_relative_to(base) else p
        return f"{rel.as_posix()}:{p.stat().st_size}"

    for part, samples in (("train", split.train), ("test", split.test)):
        for s in sorted(samples, key=lambda s: s.path):
            digest.update(f"{part}|{entry(s.path)}|{s.label}|{s.defect_type}|{entry(s.mask_path)}\n".encode())
    counts = split.counts()
    return queries.SplitInfo(
        content_hash=digest.hexdigest(), n_train=counts["train"], n_test=counts["test"],
        n_test_good=counts["test_good"], n_test_anomalous=counts["test_anomalous"], has_masks=split.has_masks,
    )


def format_error(exc: BaseException) -> str:
    """First line: what went wrong, in words; then the traceback for whoever debugs it."""
    from ad_core.backbones import WeightsError
    from ad_core.data import DatasetError
    from ad_core.methods.base import ConfigError

    first = str(exc) if isinstance(exc, ConfigError | DatasetError | WeightsError) else f"{type(exc).__name__}: {exc}"
    first = first.strip().splitlines()[0] if first.strip() else type(exc).__name__
    return f"{first}\n\n{''.join(traceback.format_exception(exc))}"


def execute_job(job_id: int, worker: str | None = None, url: str | None = None) -> str:
    """Claim and run job `job_id`. Returns what happened: succeeded, failed, cancelled, lost or skipped (...)."""
    from ad_core.runner import Cancelled, RunSpec, provenance, run_category

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
    try:
        # The stored config is complete, so it is the whole override set (no preset: its values are in it).
        overrides = dict(job.config)
        spec = RunSpec(
            method=job.method, dataset=job.dataset.kind, root=job.dataset.root, categories=list(job.categories),
            backbone=overrides.pop("backbone", None), weights=overrides.pop("weights", None), seed=job.seed,
            device=job.device, overrides=overrides,
        )
        config = spec.validate()  # again here: paths and GPUs are per host
        n = len(spec.categories)
        weights_source = "none"
        for i, category in enumerate(spec.categories):
            reporter.progress(i / n, f"{category}: starting", force=True)
            info = split_info(spec.dataset, spec.root, category)
            result, weights_source = run_category(
                spec, category, config, reporter.for_category(i, n), reporter.should_cancel
            )
            maps_path = artifacts.save_maps(
                job_id, attempt, category, result.anomaly_maps, [img.path for img in result.images]
            )
            outcomes.append(queries.CategoryOutcome(
                category=category, metrics=result.metrics, images=result.images, timings=result.timings,
                maps_path=maps_path, split=info, notes=list(result.notes),
            ))
        if reporter.should_cancel(force=True):
            raise Cancelled("cancel requested")
        reporter.progress(1.0, "saving results", force=True)
        record: dict[str, Any] = provenance(spec, weights_source)
        if not queries.complete_job(job_id, attempt, outcomes, record, config.to_dict(), url=url):
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
        queries.fail_job(job_id, attempt, format_error(exc), url=url)
        return "failed"
    except BaseException as exc:  # KeyboardInterrupt/SystemExit: the worker is being stopped mid-job
        artifacts.delete_job_maps(job_id, attempt)
        queries.fail_job(job_id, attempt, f"worker stopped while the job was running ({type(exc).__name__})", url=url)
        raise
    finally:
        beat.stop()


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
