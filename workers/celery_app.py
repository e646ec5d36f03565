"""The Celery app and its tasks, `run_job(job_id)` and `rescore(job_ids)` (`iad rescore`). The job row is the
truth; Celery only delivers ids.

Broker: `IAD_BROKER_URL` (see `workers.settings`). The embedded default is kombu's SQLAlchemy transport on
a SQLite file: no server, fine for one host. Celery results are not stored (`task_ignore_result`): status,
progress, errors and results all live in the results database.

Delivery settings: `task_acks_late` + `task_reject_on_worker_lost` keep a message until its task returns,
`worker_prefetch_multiplier=1` stops a busy worker from hoarding queued jobs. A message can therefore
arrive twice (redelivery after a lost worker, or two workers reading the SQLite broker at once); the
conditional claim in `db.queries.claim_job` makes the second delivery a no-op.

Start a worker with `iad worker --queue cpu|gpu` (one per GPU, `--concurrency 1`, pinned with
CUDA_VISIBLE_DEVICES) or `celery -A workers.celery_app worker -Q cpu --pool solo`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from celery import Celery, Task, signals
from kombu import Connection

from db import queries
from db.models import Job
from db.session import reset_after_fork
from workers.jobs import execute_job, worker_name
from workers.settings import (
    broker_url,
    ensure_broker_dir,
    is_embedded_broker,
    queue_name,
    supports_remote_control,
)

log = logging.getLogger("iad.worker")


def make_app(url: str | None = None) -> Celery:
    url = url or broker_url()
    app = Celery("iad", broker=url, set_as_current=True)
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=queue_name("cpu"),
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        # After a broker connection loss the running job keeps going: a redelivered copy of its message
        # cannot start it twice (the claim), so there is nothing to gain from cancelling it.
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    if is_embedded_broker(url):
        configure_embedded_transport()
    return app


def configure_embedded_transport() -> None:
    """Polling interval and two race fixes for kombu's SQLAlchemy transport (the embedded broker). Idempotent."""
    import kombu.transport.sqlalchemy as kombu_sqla
    from sqlalchemy.exc import IntegrityError, OperationalError

    # Poll every 0.2 s instead of 1 s. This must be the class attribute: kombu forwards every transport
    # option of this transport to create_engine(), so broker_transport_options would crash the worker.
    kombu_sqla.Transport.polling_interval = 0.2

    channel = kombu_sqla.Channel
    if getattr(channel._open, "iad_patched", False):
        return
    # kombu guards its "check, then create" steps with a per-process lock only. Two processes (a starting
    # worker and a submitting dashboard) can both create the tables of a new broker file, or both insert
    # the same queue row; the loser got OperationalError("table ... already exists") or IntegrityError
    # (unique queue name), and a worker died of it. In both cases the winner's object exists now, so
    # doing the step again succeeds.
    open_channel, get_or_create = channel._open, channel._get_or_create

    def open_retrying(self: Any) -> Any:
        try:
            return open_channel(self)
        except OperationalError as exc:
            if "already exists" not in str(exc):
                raise
            return open_channel(self)

    def get_or_create_retrying(self: Any, queue: str) -> Any:
        try:
            return get_or_create(self, queue)
        except IntegrityError:
            self.session.rollback()
            return get_or_create(self, queue)

    open_retrying.iad_patched = True  # type: ignore[attr-defined]
    channel._open, channel._get_or_create = open_retrying, get_or_create_retrying


app = make_app()


@app.task(name="iad.run_job", bind=True)
def run_job(self: Task, job_id: int) -> str:
    """Run job `job_id` (a no-op unless the job is still queued)."""
    return execute_job(int(job_id), worker=self.request.hostname or worker_name())


@app.task(name="iad.rescore")
def rescore_task(job_ids: list[int] | None = None) -> str:
    """Re-score stored runs under this code's metric version (`workers.rescore.rescore`)."""
    from workers.rescore import rescore

    items = rescore(job_ids)
    stored = [i for i in items if i.status == "stored"]
    skipped = [i for i in items if i.status.startswith("skipped")]
    for item in skipped:
        log.warning("rescore job %s %s: %s", item.job_id, item.category, item.status)
    return f"re-scored {len(stored)} categor{'y' if len(stored) == 1 else 'ies'}, skipped {len(skipped)}"


def submit_rescore(job_ids: Sequence[int] | None = None) -> str:
    """Send one `iad.rescore` message to the cpu queue (any CPU worker runs it); returns its task id."""
    task_id = f"iad-rescore-{uuid.uuid4().hex[:8]}"
    queue = queue_name("cpu")
    with _connection() as conn:
        app.amqp.queues[queue](conn.default_channel).declare()
        rescore_task.apply_async(args=[list(job_ids) if job_ids else None], queue=queue, task_id=task_id,
                                 connection=conn)
    return task_id


@app.task(name="iad.rescore_annotations")
def rescore_annotations_task(set_id: int, job_ids: list[int] | None = None) -> str:
    """Re-score stored runs against an annotation set (`workers.annotations.rescore_against_set`)."""
    from workers.annotations import rescore_against_set

    items = rescore_against_set(int(set_id), job_ids)
    stored = [i for i in items if i.status == "stored"]
    for item in items:
        if item.status.startswith("skipped"):
            log.warning("rescore against set %s: job %s %s: %s", set_id, item.job_id, item.category, item.status)
    return f"re-scored {len(stored)} categor{'y' if len(stored) == 1 else 'ies'} against annotation set {set_id}"


def submit_rescore_annotations(set_id: int, job_ids: Sequence[int] | None = None) -> str:
    """Send one `iad.rescore_annotations` message to the cpu queue; returns its task id."""
    task_id = f"iad-rescore-gt-{uuid.uuid4().hex[:8]}"
    queue = queue_name("cpu")
    with _connection() as conn:
        app.amqp.queues[queue](conn.default_channel).declare()
        rescore_annotations_task.apply_async(args=[int(set_id), list(job_ids) if job_ids else None], queue=queue,
                                             task_id=task_id, connection=conn)
    return task_id


@signals.celeryd_init.connect
def _worker_conf(conf: Any, **_: object) -> None:
    # Worker-only transport settings, applied here so that a process that only submits (and may talk to
    # several brokers, as the tests do) never forwards them to the wrong transport.
    url = conf.broker_url or broker_url()
    if is_embedded_broker(url):
        # No fanout on this transport: remote control (revoke, inspect) cannot reach workers anyway.
        conf.worker_enable_remote_control = False
    elif url.startswith(("redis://", "rediss://")):
        # With acks_late an unacked message comes back after visibility_timeout; jobs can take hours.
        conf.broker_transport_options = {"visibility_timeout": 24 * 3600}


def _connection() -> Connection:
    """A connection to the broker of `IAD_BROKER_URL` as it is now (read at call time, not import time)."""
    url = broker_url()
    ensure_broker_dir(url)
    if is_embedded_broker(url):
        configure_embedded_transport()
    return app.connection_for_write(url)


def enqueue(job: Job) -> str:
    """Publish a message for a queued job on its queue and remember the message id on the job row."""
    task_id = f"iad-job-{job.id}-{uuid.uuid4().hex[:8]}"
    # Declare the queue first: on Redis a message sent to a queue no worker has declared yet would be lost.
    with _connection() as conn:
        app.amqp.queues[job.queue](conn.default_channel).declare()
        run_job.apply_async(args=[job.id], queue=job.queue, task_id=task_id, connection=conn)
    queries.set_task_id(job.id, task_id)
    return task_id


class SubmitError(RuntimeError):
    """The jobs could not be sent to the broker; they were cancelled so none waits forever."""


def _actor(actor: Any) -> Any:  # noqa: ANN401 (db.accounts.Actor)
    """The given actor, else the local user where sign-in is off (AccessDenied where it is on: never anonymous)."""
    from db import accounts

    if actor is not None:
        return actor
    if accounts.sign_in_required():
        raise accounts.AccessDenied("sign-in is required on this deployment: no anonymous actions")
    return accounts.local_actor()


def submit_jobs(
    requests: Sequence[queries.JobRequest], group_id: str | None = None, actor: Any = None  # noqa: ANN401
) -> tuple[str, list[int]]:
    """Create job rows and send one message each: the one submit path of the CLI and the dashboard.

    `actor` (`db.accounts.Actor`) must hold the launch permission; the jobs record their name and the audit
    log the submission. Returns (group id, job ids). If the broker cannot be reached the new jobs are cancelled
    at once, so no queued job is left that no message will ever start.
    """
    from db import accounts

    actor = _actor(actor)
    accounts.require(actor, "launch", "launch jobs")
    if not requests:
        raise ValueError("nothing to submit")
    group_id = group_id or queries.new_group_id()
    ids = queries.create_jobs(list(requests), group_id=group_id, launched_by=actor.name)
    accounts.audit(actor.name, "jobs submitted", f"group {group_id}",
                   {"jobs": ids, "methods": sorted({r.method for r in requests})})
    try:
        for job in sorted(queries.list_jobs(job_ids=ids, limit=None), key=lambda j: j.id):
            enqueue(job)
    except Exception as exc:
        queries.request_cancel(ids)
        raise SubmitError(
            f"could not send the jobs to the broker ({type(exc).__name__}: {exc}); jobs {ids[0]}..{ids[-1]} were cancelled"
        ) from exc
    return group_id, ids


def revoke(task_ids: Iterable[str]) -> bool:
    """Tell workers to drop these messages (only where the broker has remote control). Best effort."""
    ids = [t for t in task_ids if t]
    if not ids or not supports_remote_control():
        return False
    try:
        with _connection() as conn:
            app.control.revoke(ids, connection=conn)
        return True
    except Exception:
        log.warning("revoke failed; the cancel flag in the database still stops the jobs", exc_info=True)
        return False


def cancel_jobs(job_ids: Iterable[int], actor: Any = None) -> dict[int, str]:  # noqa: ANN401
    """Cancel on every broker: the database flag, plus a revoke of queued messages where supported. Jobs the
    actor may not manage (researchers: only their own; admins: any) are refused, not cancelled."""
    from db import accounts

    actor = _actor(actor)
    accounts.require(actor, "launch", "cancel jobs")
    job_ids = list(job_ids)
    owners = {j.id: j.launched_by for j in queries.list_jobs(job_ids=job_ids, limit=None)}
    refused = {j: f"refused: {actor.name} ({actor.role}) may not cancel job {j} of {owners[j]}"
               for j in job_ids if j in owners and not accounts.may_manage_job(actor, owners[j])}
    outcome = queries.request_cancel([j for j in job_ids if j not in refused]) if len(refused) < len(job_ids) else {}
    outcome.update(refused)
    accounts.audit(actor.name, "cancel", ", ".join(map(str, job_ids)), {"outcome": {str(k): v for k, v in outcome.items()}})
    cancelled = [j for j, o in outcome.items() if o == "cancelled"]
    if cancelled:
        revoke(job.task_id for job in queries.list_jobs(job_ids=cancelled, limit=None) if job.task_id)
    return outcome


def _ready_messages(queue: str) -> int:
    """Messages waiting in `queue` on the broker (not counting those a worker holds unacknowledged)."""
    with _connection() as conn:
        _, count, _ = app.amqp.queues[queue](conn.default_channel).queue_declare(passive=False)
    return int(count)


_suspects: dict[str, set[int]] = {}  # per queue: old queued jobs seen while the broker held no message


def recover_lost_messages(grace_s: float = 10.0) -> list[int]:
    """Re-publish queued jobs whose messages a restarted broker lost (Redis with `--save ""` forgets its
    queues). A queue counts as lost when, on two consecutive sweeps, the broker holds no message for it while
    the same jobs, queued for more than `grace_s`, are still waiting: a message on its way to a worker is
    claimed within milliseconds, so only lost messages survive the second look (workers prefetch one message,
    the running job's). A re-published job whose old message survived after all has two; the conditional claim
    (`db.queries.claim_job`) makes the second a no-op, so none runs twice. Returns the re-published job ids."""
    import datetime as dt

    from db.session import utcnow

    cutoff = utcnow() - dt.timedelta(seconds=grace_s)
    waiting: dict[str, set[int]] = {}
    jobs: dict[int, Job] = {}
    for job in queries.list_jobs(status="queued", limit=None):
        if job.created_at <= cutoff and not job.cancel_requested:
            waiting.setdefault(job.queue, set()).add(job.id)
            jobs[job.id] = job
    republished = []
    for queue in set(_suspects) | set(waiting):
        ids = waiting.get(queue, set())
        if not ids or _ready_messages(queue) > 0:
            _suspects.pop(queue, None)
            continue
        lost = ids & _suspects.get(queue, set())
        _suspects[queue] = ids - lost
        if lost:
            log.warning("queue %s: %d queued job(s) have no message on the broker (restarted without "
                        "persistence?): re-publishing them", queue, len(lost))
            for job_id in sorted(lost):
                enqueue(jobs[job_id])
                republished.append(job_id)
    return republished


def expire_stale_jobs() -> list[queries.ExpiredJob]:
    """`db.queries.expire_stale_jobs` with the ability to re-queue (when IAD_MAX_ATTEMPTS allows)."""
    expired = queries.expire_stale_jobs(requeue=enqueue)
    for item in expired:
        log.warning("job %s attempt %s: worker lost, %s", item.job_id, item.attempt, item.action)
    return expired


# --- worker process hooks --------------------------------------------------------------------------


@signals.worker_process_init.connect
def _after_fork(**_: object) -> None:
    # Prefork children must not share the parent's database connections.
    reset_after_fork()


class _Sweeper(threading.Thread):
    """Expires stale jobs periodically from every worker, so a lost worker's job never stays `running`, and
    re-publishes queued jobs whose messages a restarted broker lost (`recover_lost_messages`)."""

    def __init__(self) -> None:
        super().__init__(name="iad-lease-sweeper", daemon=True)
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = min(30.0, max(1.0, queries.lease_seconds() / 2))
        while True:  # once at startup, then every `interval`
            try:
                expire_stale_jobs()
            except Exception:
                log.exception("expiring stale jobs failed")
            try:
                recover_lost_messages(grace_s=max(2 * interval, 5.0))
            except Exception:  # the broker may be down right now; the next round tries again
                log.warning("checking the queues for lost messages failed", exc_info=True)
            if self.stopped.wait(interval):
                return


_sweeper: _Sweeper | None = None


@signals.worker_ready.connect
def _start_sweeper(**_: object) -> None:
    global _sweeper
    if _sweeper is None:
        _sweeper = _Sweeper()
        _sweeper.start()


@signals.worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    if _sweeper is not None:
        _sweeper.stopped.set()
