"""Helpers and fixtures for the database and job-system tests: real servers, real worker processes.

- `db_url`: a fresh database per test, on SQLite (tmp file) and PostgreSQL (a unique `iad_test_<hex>`
  database on 127.0.0.1:5432, dropped afterwards).
- `redis_db`: an empty Redis database index whose keys are deleted afterwards.
- `Stack`: IAD_HOME + database + broker + queue prefix for one test, with `iad` subprocesses (workers,
  submit) launched against it and helpers to poll the job rows.

A missing PostgreSQL/Redis server skips those tests locally but fails them in CI (env CI set).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from db.session import dispose_engine

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RABBIT_HOST, RABBIT_PORT = "127.0.0.1", 5672
REPO_ROOT = Path(__file__).resolve().parent.parent
IAD = [sys.executable, "-m", "workers.cli"]

# Tiny demo data: every PatchCore job on it takes well under a second once the worker has imported torch.
TINY_DEMO = {"seed": 0, "n_train": 6, "n_test_good": 3, "n_test_defect": 4, "image_size": 64}
TINY_CATEGORIES = ("brick", "grass")
TINY_ARGS = ["--backbone", "tf_efficientnet_lite0", "--weights", "random",
             "--set", "crop=64", "--set", "resize=64", "--set", "batch_size=2"]
# A job that runs long enough (~15 s alone on a CPU core) to be cancelled or killed in the middle.
SLOW_DEMO = {"seed": 1, "n_train": 16, "n_test_good": 2, "n_test_defect": 2, "image_size": 256}
SLOW_ARGS = ["--backbone", "tf_efficientnet_lite0", "--weights", "random",
             "--set", "crop=256", "--set", "resize=256", "--set", "coreset_ratio=0.25"]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def missing(message: str) -> None:
    """What a test does when a server, binary or capability it needs is absent: skip locally, fail in CI."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_server(name: str, host: str, port: int) -> None:
    """Skip locally when a server is down; in CI a missing server is a failure, not a skip."""
    if not _reachable(host, port):
        missing(f"{name} is not reachable on {host}:{port} (start one there; `.ci/run` starts PostgreSQL, Redis and "
                "RabbitMQ when they are installed)")


# --- databases ------------------------------------------------------------------------------------------


@dataclass
class PostgresDatabase:
    name: str

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql)


@contextlib.contextmanager
def postgres_database() -> Iterator[PostgresDatabase]:
    """A new, empty PostgreSQL database, dropped (with its connections) afterwards."""
    require_server("PostgreSQL", PG_HOST, PG_PORT)
    db = PostgresDatabase(f"iad_test_{uuid.uuid4().hex[:12]}")
    _pg_admin(f'CREATE DATABASE "{db.name}"')
    try:
        yield db
    finally:
        dispose_engine(db.url)
        _pg_admin(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


@pytest.fixture
def postgres_db() -> Iterator[PostgresDatabase]:
    with postgres_database() as db:
        yield db


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: SQLite file or PostgreSQL database (the same tests run on both)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'iad.sqlite'}"
        yield url
        dispose_engine(url)
    else:
        yield request.getfixturevalue("postgres_db").url


# --- redis ----------------------------------------------------------------------------------------------------


@dataclass
class RedisDatabase:
    index: int
    prefix: str

    @property
    def url(self) -> str:
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.index}"


@contextlib.contextmanager
def redis_database() -> Iterator[RedisDatabase]:
    """An unused Redis database index (empty when we take it); every key created in it is deleted after."""
    require_server("Redis", REDIS_HOST, REDIS_PORT)
    import redis

    marker = f"iad-test-claim-{uuid.uuid4().hex}"
    for index in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index)
        # Take an index only if it is empty; the marker keeps other test runs away from it meanwhile.
        if client.dbsize() == 0 and client.set(marker, "1", nx=True) and client.dbsize() == 1:
            break
        client.delete(marker)
        client.close()
    else:
        pytest.skip("no empty Redis database index left")
    try:
        yield RedisDatabase(index, f"t{uuid.uuid4().hex[:8]}-")
    finally:
        for key in client.scan_iter(count=1000):  # everything in our index was created by this test
            client.delete(key)
        client.close()


@pytest.fixture
def redis_db() -> Iterator[RedisDatabase]:
    with redis_database() as db:
        yield db


@contextlib.contextmanager
def rabbitmq_broker() -> Iterator[tuple[str, str]]:
    """(broker url, queue prefix) on the local RabbitMQ; this test's queues and exchanges are deleted after."""
    require_server("RabbitMQ", RABBIT_HOST, RABBIT_PORT)
    from kombu import Connection, Exchange, Queue

    url = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}//"
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    try:
        yield url, prefix
    finally:
        with Connection(url) as conn:
            channel = conn.channel()
            for name in (prefix + "cpu", prefix + "gpu"):
                with contextlib.suppress(Exception):
                    Queue(name, Exchange(name), routing_key=name, channel=channel).delete()
                with contextlib.suppress(Exception):
                    Exchange(name, channel=channel).delete()
                channel = conn.channel()  # a failed delete closes the channel


# --- stacks of processes ---------------------------------------------------------------------------------------


@dataclass
class Stack:
    """One isolated installation: IAD_HOME, database, broker and queue prefix; runs `iad` processes."""

    name: str
    home: Path
    db_url: str
    broker_url: str | None
    prefix: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "IAD_HOME": str(self.home),
            "IAD_DATABASE_URL": self.db_url,
            "IAD_ARTIFACTS": str(self.home / "artifacts"),
            "IAD_QUEUE_PREFIX": self.prefix,
            "IAD_LEASE_SECONDS": "4",
            "IAD_HEARTBEAT_SECONDS": "1",
            # Tiny jobs last a fraction of a second: report progress often enough to see it move.
            "IAD_PROGRESS_INTERVAL_S": "0.02",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        if self.broker_url:
            env["IAD_BROKER_URL"] = self.broker_url
        else:
            env.pop("IAD_BROKER_URL", None)  # the embedded default under IAD_HOME
        return env

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    def apply_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this (test) process at the stack, for in-process `workers.cli.main` calls."""
        for key, value in self.env.items():
            if key.startswith("IAD_"):
                monkeypatch.setenv(key, value)
        if not self.broker_url:
            monkeypatch.delenv("IAD_BROKER_URL", raising=False)

    def iad(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*IAD, *args], env=self.env, cwd=self.home, capture_output=True, text=True,
                              timeout=timeout)

    def start_worker(self, *args: str, log_name: str | None = None) -> subprocess.Popen:
        log_path = self.home / (log_name or f"worker-{len(self.procs)}.log")
        handle = open(log_path, "w")  # noqa: SIM115 (kept open for the process' lifetime)
        proc = subprocess.Popen([*IAD, "worker", *args], env=self.env, cwd=self.home, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_path = log_path  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen, timeout: float = 90) -> None:
        wait_for(lambda: " ready." in read_log(proc) or proc.poll() is not None, timeout, "worker ready")
        assert proc.poll() is None, f"worker exited early:\n{read_log(proc)[-3000:]}"

    def stop(self, proc: subprocess.Popen, timeout: float = 20) -> None:
        from workers.cli import stop_process_group

        stop_process_group(proc, timeout)

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        dispose_engine(self.db_url)


def read_log(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_final(stack: Stack, job_ids: list[int], timeout: float, seen: dict[int, set[float]] | None = None) -> dict:
    """Poll until every job is final; record the progress values seen on the way. Returns id -> Job."""
    from db import queries

    jobs: dict = {}

    def done() -> bool:
        jobs.clear()
        jobs.update({j.id: j for j in queries.list_jobs(job_ids=job_ids, limit=None, url=stack.db_url)})
        if seen is not None:
            for job in jobs.values():
                seen.setdefault(job.id, set()).add(round(job.progress, 4))
        return len(jobs) == len(job_ids) and all(j.is_final for j in jobs.values())

    try:
        wait_for(done, timeout, f"jobs {job_ids} to finish", interval=0.05)
    except AssertionError:
        states = {j.id: (j.status, round(j.progress, 2), j.message) for j in jobs.values()}
        logs = "\n".join(read_log(p)[-2000:] for p in stack.procs)
        raise AssertionError(f"jobs did not finish: {states}\n{logs}") from None
    return jobs


def submit(stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> list[int]:
    """`iad submit ...` in this process (saves a torch import per call); returns the new job ids."""
    from workers.cli import main

    stack.apply_env(monkeypatch)
    capsys.readouterr()
    code = main(["submit", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return [int(i) for i in out.out.strip().splitlines()[-1].split()]


def make_stack(name: str, home: Path, db_url: str, broker_url: str | None = None, prefix: str = "",
               **extra_env: str) -> Stack:
    home.mkdir(parents=True, exist_ok=True)
    return Stack(name=name, home=home, db_url=db_url, broker_url=broker_url, prefix=prefix, extra_env=extra_env)


def make_tiny_demo(root: Path) -> Path:
    from ad_core.data import make_demo_dataset

    return make_demo_dataset(root, categories=TINY_CATEGORIES, **TINY_DEMO)


def make_slow_demo(root: Path) -> Path:
    from ad_core.data import make_demo_dataset

    return make_demo_dataset(root, categories=("gravel",), **SLOW_DEMO)
