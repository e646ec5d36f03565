"""Job-system settings from the environment (read at call time, so tests and `iad up` can set them).

- `IAD_BROKER_URL`: default `sqla+sqlite:///$IAD_HOME/broker.sqlite` (embedded: no server, one host);
  `redis://host:6379/N` or `amqp://user:pass@host:5672//` for several hosts.
- `IAD_QUEUE_PREFIX`: prepended to the queue names `cpu` and `gpu` (lets teams/tests share a broker).
- `IAD_HEARTBEAT_SECONDS` (default 10): how often a running task refreshes its lease.
- `IAD_PROGRESS_INTERVAL_S` (default 0.5): minimum seconds between two progress writes of a job.
- `IAD_LEASE_SECONDS` / `IAD_MAX_ATTEMPTS`: see `db.queries.expire_stale_jobs`.
- `IAD_DATA_ROOTS`: folders (separated by `os.pathsep`, ':' on Linux) that dataset roots must lie in, checked
  at submit (`workers.planner.plan_jobs`) and again by the worker before it reads anything. Unset or empty:
  no restriction (the local, single-user case). See `check_data_root`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ad_core.catalog import QUEUES
from ad_core.home import app_home


def data_roots() -> list[Path]:
    """The allowed data roots from IAD_DATA_ROOTS, resolved (symlinks and `..`); [] means no restriction."""
    raw = os.environ.get("IAD_DATA_ROOTS", "")
    return [Path(part).expanduser().resolve() for part in raw.split(os.pathsep) if part.strip()]


def check_data_root(root: str | Path) -> Path:
    """`root` resolved (symlinks and `..`); DatasetError when IAD_DATA_ROOTS is set and it lies outside.

    The resolved path is what is compared, so neither a symlink pointing out of an allowed root nor a
    `<allowed>/../elsewhere` path gets past it. Only the dataset root is checked: files inside it are read
    as they are."""
    from ad_core.errors import DatasetError

    resolved = Path(root).expanduser().resolve()
    allowed = data_roots()
    if allowed and not any(resolved.is_relative_to(base) for base in allowed):
        via = f" (resolves to {resolved})" if str(resolved) != str(Path(root).expanduser()) else ""
        raise DatasetError(
            f"dataset root {root}{via} is outside the allowed data roots "
            f"(IAD_DATA_ROOTS={os.pathsep.join(str(a) for a in allowed)}); put the dataset under one of them "
            "or add its folder to IAD_DATA_ROOTS"
        )
    return resolved


def broker_url() -> str:
    url = os.environ.get("IAD_BROKER_URL")
    if url:
        return url
    # Not created here: `ensure_broker_dir` makes the folder when a worker or a submit needs it.
    return f"sqla+sqlite:///{app_home(create=False) / 'broker.sqlite'}"


def ensure_broker_dir(url: str | None = None) -> None:
    """The embedded broker's SQLite file needs its folder to exist before kombu connects."""
    url = url or broker_url()
    if is_embedded_broker(url) and ":///" in url:
        Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)


def is_embedded_broker(url: str | None = None) -> bool:
    return (url or broker_url()).startswith(("sqla+", "sqlalchemy+"))


def supports_remote_control(url: str | None = None) -> bool:
    """The kombu SQLAlchemy transport has no fanout, so revoke/inspect never reach its workers."""
    return not is_embedded_broker(url)


def queue_prefix() -> str:
    return os.environ.get("IAD_QUEUE_PREFIX", "")


def queue_name(kind: str) -> str:
    if kind not in QUEUES:
        raise ValueError(f"unknown queue {kind!r}; use one of {', '.join(QUEUES)}")
    return queue_prefix() + kind


def queue_for_device(device: str) -> str:
    """Jobs for cuda devices go to the gpu queue, everything else to the cpu queue."""
    return queue_name("gpu" if device.startswith("cuda") else "cpu")


def heartbeat_seconds() -> float:
    return float(os.environ.get("IAD_HEARTBEAT_SECONDS", 10))


def redact(url: str) -> str:
    """URL with any password replaced, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def db_retry_seconds() -> float:
    """How long a worker keeps retrying the writes that end a job while the database is unreachable
    (IAD_DB_RETRY_SECONDS, default 120): a restart of PostgreSQL costs a wait, not a job."""
    return float(os.environ.get("IAD_DB_RETRY_SECONDS", 120))


def progress_interval() -> float:
    return float(os.environ.get("IAD_PROGRESS_INTERVAL_S", 0.5))
