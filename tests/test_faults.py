"""Fault campaign (issue 17), on real worker processes: SIGKILL at each phase of a job; Redis restarted while
jobs are queued and running.

The worker is stopped at a known point by `workers.faults` (IAD_FAULT_PAUSE=<phase> pauses it there and
touches a marker file), killed with SIGKILL, and a fresh worker takes over. With IAD_MAX_ATTEMPTS=1 the job
ends failed ("worker lost"), with 2 it runs again and succeeds; either way its result rows exist exactly once
or not at all, no map file of a dead attempt is left, and no temporary (half-written) file remains.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
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


@contextmanager
def private_redis(port: int, workdir: Path) -> Iterator[Callable[[], None]]:
    """A Redis server of our own (no persistence, as the project's machines run it); yields `restart()`,
    which kills it with SIGKILL and starts an empty one on the same port."""
    import redis

    procs: list[subprocess.Popen] = []

    def start() -> None:
        procs.append(subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(workdir)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        h.wait_for(lambda: _pings(redis.Redis(port=port)), 20, "redis-server to answer", interval=0.1)

    def restart() -> None:
        procs[-1].kill()
        procs[-1].wait()
        start()

    if shutil.which("redis-server") is None:
        h.missing("redis-server is missing (apt-get install redis-server)")
    start()
    try:
        yield restart
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _pings(client) -> bool:  # noqa: ANN001
    try:
        return bool(client.ping())
    except Exception:
        return False


def _broker_restarted_mid_run(broker_url: str, restart: Callable[[], None], resources: ExitStack, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    """One job fitting (paused there 6 s), three queued; `restart()` the broker; every job must succeed exactly
    once with its rows stored once. Returns the worker's log."""
    st = h.make_stack("broker-restart", tmp_path / "home", f"sqlite:///{tmp_path / 'iad.sqlite'}", broker_url,
                      prefix="fault-", IAD_FAULT_PAUSE="fitting", IAD_FAULT_MARKER=str(tmp_path / "paused"),
                      IAD_FAULT_PAUSE_S="6")
    resources.callback(st.close)
    tiny = h.make_tiny_demo(tmp_path / "tiny")
    worker = st.start_worker()
    st.wait_ready(worker)
    common = ["--method", "patchcore", "--dataset", "demo", "--root", str(tiny), *h.TINY_ARGS]
    [running] = h.submit(st, monkeypatch, capsys, *common, "--category", "brick")
    h.wait_for((tmp_path / "paused").exists, 90, "the first job to be fitting")
    queued = h.submit(st, monkeypatch, capsys, *common, "--category", "grass", "--seeds", "0", "1", "2")
    restart()
    jobs = h.wait_final(st, [running, *queued], timeout=150)
    assert {j: jobs[j].status for j in jobs} == dict.fromkeys(jobs, "succeeded"), h.read_log(worker)[-3000:]
    assert {jobs[j].attempts for j in jobs} == {1}  # none ran twice
    for job_id in jobs:
        assert queries.result_counts(job_id, url=st.db_url) == ROWS
    log = h.read_log(worker)
    assert log.count("'succeeded'") == 4
    return log


@pytest.mark.redis
def test_redis_restarted_while_jobs_are_queued_and_running(tmp_path: Path, monkeypatch, capsys) -> None:
    """SIGKILL Redis (no persistence: its queues vanish) while one job runs and three wait; an empty Redis
    comes back on the same port. The worker reconnects, the running job finishes, the lost messages are
    re-published (`recover_lost_messages`), and every job runs exactly once."""
    port = h.free_port()
    with ExitStack() as resources:
        restart = resources.enter_context(private_redis(port, tmp_path))
        log = _broker_restarted_mid_run(f"redis://127.0.0.1:{port}/0", restart, resources, tmp_path, monkeypatch,
                                        capsys)
        assert "re-publishing them" in log  # the messages were lost, and recovered


@contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (needs the right to mount, as root in the project's containers)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        h.missing(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): no way to fill a disk safely")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_artifact_store_fails_the_job_clearly_and_keeps_nothing(tmp_path: Path, monkeypatch) -> None:
    from ad_core.runner import RunSpec
    from workers.jobs import execute_job

    url = f"sqlite:///{tmp_path / 'iad.sqlite'}"
    tiny = h.make_tiny_demo(tmp_path / "tiny")
    spec = RunSpec(method="patchcore", dataset="demo", root=str(tiny), categories=["brick"],
                   backbone="tf_efficientnet_lite0", weights="random", overrides={"crop": 64, "resize": 64})
    request = queries.JobRequest("patchcore", "demo", str(tiny), ["brick"], spec.validate().to_dict())
    with small_filesystem(tmp_path / "full", "24k") as store:
        monkeypatch.setenv("IAD_ARTIFACTS", str(store))
        [job_id] = queries.create_jobs([request], url=url)
        assert execute_job(job_id, url=url) == "failed"
        job = queries.get_job(job_id, url=url)
        assert (f"ArtifactStoreFull: the artifact store {store} (IAD_ARTIFACTS) is full while writing the maps of "
                "brick: free space there") in job.message, job.message
        assert queries.result_counts(job_id, url=url) == NO_ROWS
        assert [p for p in store.rglob("*") if p.is_file()] == []  # no map and no temporary file
    monkeypatch.setenv("IAD_ARTIFACTS", str(tmp_path / "roomy"))  # the same job with room: nothing else broke
    [again] = queries.create_jobs([request], url=url)
    assert execute_job(again, url=url) == "succeeded"
    assert queries.result_counts(again, url=url) == ROWS


PG_BIN = Path("/usr/lib/postgresql") / (sorted(os.listdir("/usr/lib/postgresql"))[-1] if Path(
    "/usr/lib/postgresql").is_dir() else "none") / "bin"


@contextmanager
def private_postgres(port: int) -> Iterator[Callable[[float], None]]:
    """A PostgreSQL cluster of our own on `port` (initdb as the postgres user: the server refuses root); yields
    `restart(down_s)`, a fast shutdown, `down_s` seconds away, and a start."""
    if not (PG_BIN / "initdb").exists():
        h.missing(f"PostgreSQL's binaries are missing under {PG_BIN}")
    # Outside pytest's tmp folder, which only root may enter.
    workdir = Path(tempfile.mkdtemp(prefix="iad-pg-"))
    shutil.chown(workdir, "postgres")
    data = workdir / "pgdata"

    def as_postgres(*argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=120)

    as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(workdir / "pg.log"), "start"]
    stop = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
    as_postgres(*start)

    def restart(down_s: float) -> None:
        as_postgres(*stop)
        time.sleep(down_s)
        as_postgres(*start)

    try:
        yield restart
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", *stop], capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.postgres
@pytest.mark.parametrize("phase", ["fitting", "writing"])
def test_postgres_restarted_mid_run(phase: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """The results database goes away for 6 s while a job fits, or just as it stores its results (the worker
    resumes from its pause 2 s into the outage), and comes back: progress is skipped meanwhile, the final
    transaction is retried until the database answers, the job succeeds once, and a job queued meanwhile runs."""
    port = h.free_port()
    with ExitStack() as resources:
        restart = resources.enter_context(private_postgres(port))
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        st = h.make_stack("postgres", tmp_path / "home", url, IAD_FAULT_PAUSE=phase,
                          IAD_FAULT_MARKER=str(tmp_path / "paused"), IAD_FAULT_PAUSE_S="2",
                          IAD_LEASE_SECONDS="30")
        resources.callback(st.close)
        tiny = h.make_tiny_demo(tmp_path / "tiny")
        worker = st.start_worker()
        st.wait_ready(worker)
        common = ["--method", "patchcore", "--dataset", "demo", "--root", str(tiny), *h.TINY_ARGS]
        [running] = h.submit(st, monkeypatch, capsys, *common, "--category", "brick")
        [queued] = h.submit(st, monkeypatch, capsys, *common, "--category", "grass")
        h.wait_for((tmp_path / "paused").exists, 90, f"the first job to reach {phase}")
        restart(6.0)
        jobs = h.wait_final(st, [running, queued], timeout=120)
        assert {j: jobs[j].status for j in jobs} == dict.fromkeys(jobs, "succeeded"), h.read_log(worker)[-3000:]
        assert {jobs[j].attempts for j in jobs} == {1}
        for job_id in jobs:
            assert queries.result_counts(job_id, url=st.db_url) == ROWS
        log = h.read_log(worker)
        assert "the database is unreachable" in log  # the outage was seen, and ridden out
        if phase == "writing":
            assert f"job {running}: storing results: the database is unreachable" in log


@contextmanager
def private_rabbitmq(port: int) -> Iterator[Callable[[], None]]:
    """A RabbitMQ node of our own (name, port, data folder) next to the project's; yields `restart()`: stop the
    node and start it again on the same data (durable queues, persistent messages survive)."""
    if shutil.which("rabbitmq-server") is None:
        h.missing("rabbitmq-server is missing")
    base = Path(tempfile.mkdtemp(prefix="iad-rabbit-"))
    (base / "plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n")
    subprocess.run(["chown", "-R", "rabbitmq", str(base)], check=False)
    node = f"iadtest{port}@localhost"
    env = {**os.environ, "RABBITMQ_NODENAME": node, "RABBITMQ_NODE_PORT": str(port),
           "RABBITMQ_DIST_PORT": str(port + 10000), "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
           "RABBITMQ_LOG_BASE": str(base / "log"), "RABBITMQ_PID_FILE": str(base / "pid"),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "plugins"), "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf")}

    def start() -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, capture_output=True, timeout=60)
        subprocess.run(["rabbitmqctl", "-n", node, "wait", str(base / "pid"), "--timeout", "60"], env=env, check=True,
                       capture_output=True, timeout=90)

    def stop() -> None:
        subprocess.run(["rabbitmqctl", "-n", node, "stop"], env=env, capture_output=True, timeout=60)

    def restart() -> None:
        stop()
        start()

    start()
    try:
        yield restart
    finally:
        stop()
        shutil.rmtree(base, ignore_errors=True)


def test_rabbitmq_restarted_while_jobs_are_queued_and_running(tmp_path: Path, monkeypatch, capsys) -> None:
    """RabbitMQ stops and starts again while one job runs and three wait: durable queues and persistent
    messages bring the waiting jobs back, the running job's unacknowledged message is delivered again and
    skipped at claim time, and every job runs exactly once."""
    port = h.free_port() % 20000 + 20000  # the distribution port (+10000) must stay a valid port
    with ExitStack() as resources:
        restart = resources.enter_context(private_rabbitmq(port))
        _broker_restarted_mid_run(f"amqp://guest:guest@127.0.0.1:{port}//", restart, resources, tmp_path,
                                  monkeypatch, capsys)
