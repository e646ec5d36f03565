"""The job-system commands of `iad`: submit (a matrix of jobs), jobs, cancel, worker, migrate and up.

`iad up` = migrate + local worker + dashboard. The database, the Celery app and torch are imported inside
the commands: `iad run` must not need a broker, and `iad jobs` / `--help` must not import torch.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ad_core.catalog import JOB_STATUSES, QUEUES
from ad_core.config_text import parse_overrides
from workers.cli.core import add_run_arguments, resolve_dataset


def _print_table(rows: list[dict[str, object]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


# --- iad submit ------------------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    from ad_core.splits import SplitSpec
    from workers.planner import MatrixPlan, check_names, plan_jobs

    # Validate everything before touching the database: a typo must not leave half a matrix queued.
    # Names, split and override syntax first, without torch or the database: a typo fails in a blink.
    methods = list(dict.fromkeys(args.method))
    SplitSpec.parse(args.split)
    parse_overrides(args.overrides)
    MatrixPlan(errors=check_names(methods, args.dataset, args.preset)).raise_errors(methods)
    root, categories = resolve_dataset(args.dataset, args.root, args.category)
    seeds = args.seeds or [0]
    plan = plan_jobs(
        methods, args.dataset, root, categories, seeds, split=SplitSpec.parse(args.split).to_dict(),
        preset=args.preset, device=args.device, backbone=args.backbone, weights=args.weights,
        overrides=parse_overrides(args.overrides), frame=args.frame, annotations=args.annotations,
    )
    plan.raise_errors(methods)  # ConfigError/DatasetError naming the problem (and the method)

    from db.accounts import cli_actor
    from db.session import init_db

    init_db()
    from workers.celery_app import SubmitError, submit_jobs

    try:
        group_id, ids = submit_jobs(plan.requests, group_id=args.group, actor=cli_actor())
    except SubmitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"submitted {len(ids)} job(s) in group {group_id} "
          f"({len(methods)} method(s) x {len(categories)} categor{'y' if len(categories) == 1 else 'ies'} "
          f"x {len(dict.fromkeys(seeds))} seed(s); split {SplitSpec.parse(args.split).label}; "
          f"frame {plan.requests[0].frame}"
          + (f"; ground truth {plan.requests[0].gt_version}" if args.annotations else "") + ")")
    print(" ".join(str(i) for i in ids))
    return 0


# --- iad jobs / cancel -------------------------------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace) -> int:
    from ad_core.splits import split_identity
    from db import queries
    from db.session import init_db
    from workers.celery_app import expire_stale_jobs

    init_db()
    expire_stale_jobs()
    jobs = queries.list_jobs(status=args.status, group_id=args.group, limit=args.limit)
    if not jobs:
        print("no jobs")
        return 0
    rows = [
        {
            "id": j.id, "method": j.method + (f"/{j.preset}" if j.preset else ""), "dataset": j.dataset.kind,
            "category": ",".join(j.categories), "seed": j.seed, "status": j.status,
            "split": split_identity(j.split)[1], "frame": j.frame, "progress": f"{100 * j.progress:.0f}%",
            "message": (j.message or "").replace("\n", " ")[:50], "worker": j.worker_host or "-",
            "elapsed": j.elapsed_text or "-",
        }
        for j in jobs
    ]
    _print_table(rows, list(rows[0]))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from db.accounts import cli_actor
    from db.session import init_db
    from workers.celery_app import cancel_jobs

    init_db()
    outcome = cancel_jobs(args.ids, actor=cli_actor())
    for job_id, result in outcome.items():
        print(f"{job_id}: {result}")
    return 0 if all(r != "not found" and not r.startswith("refused") for r in outcome.values()) else 1


# --- iad migrate / worker / up ----------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from db.session import current_revision, database_url, init_db
    from workers.settings import redact

    init_db()
    print(f"database {redact(database_url())} is at revision {current_revision()}")
    return 0


def worker_argv(queues: list[str], concurrency: int, loglevel: str) -> list[str]:
    from workers.settings import is_embedded_broker, queue_name

    argv = ["worker", "-Q", ",".join(queue_name(q) for q in queues), f"--loglevel={loglevel}",
            f"--hostname=iad-{os.getpid()}@%h"]
    # One job at a time runs in the worker process itself; more use prefork children.
    argv += ["--pool=solo" if concurrency == 1 else "--pool=prefork", f"--concurrency={concurrency}"]
    if is_embedded_broker():
        # No fanout on the SQLite broker: mingle/gossip would only wait for replies that never come.
        argv += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    return argv


def cmd_worker(args: argparse.Namespace) -> int:
    from db.session import database_url, init_db
    from workers.settings import broker_url, ensure_broker_dir, redact

    queues = args.queue or ["cpu"]
    if "gpu" in queues and args.concurrency > 1:
        print("warning: one job per GPU is the rule; run one `iad worker --queue gpu` per GPU with "
              "CUDA_VISIBLE_DEVICES=<index> instead of --concurrency > 1", file=sys.stderr)
    init_db()
    ensure_broker_dir()
    from workers.celery_app import app, expire_stale_jobs

    expire_stale_jobs()
    print(f"iad worker: queues {','.join(queues)}, database {redact(database_url())}, broker {redact(broker_url())}",
          flush=True)
    app.worker_main(worker_argv(queues, args.concurrency, args.loglevel))
    return 0


def dashboard_app() -> Path | None:
    path = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
    return path if path.is_file() else None


def stop_process_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM (Celery: warm shutdown, finishes the running job), then SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def cmd_up(args: argparse.Namespace) -> int:
    from db.session import database_url, init_db
    from workers.settings import redact

    init_db()
    print(f"iad up: database {redact(database_url())}", flush=True)
    from db import accounts

    if args.host not in LOCAL_HOSTS:
        # Served on the network: sign-in is required, and someone must be able to sign in.
        if not accounts.has_admin():
            print("iad up: refusing to serve the dashboard on the network without sign-in; add the first admin "
                  "with: iad users add NAME --role admin", file=sys.stderr, flush=True)
            return 2
        accounts.set_sign_in_required(True, actor="iad up")
    import torch

    queues = ["cpu", "gpu"] if torch.cuda.is_available() else ["cpu"]
    worker_cmd = [sys.executable, "-m", "workers.cli", "worker", "--queue", *queues]
    # Own process groups: Ctrl-C reaches only us, and we stop the children in order.
    procs = [subprocess.Popen(worker_cmd, start_new_session=True)]
    app_path = dashboard_app()
    if app_path is not None:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.headless", "true",
             "--server.address", args.host,
             "--server.port", str(args.port), "--browser.gatherUsageStats", "false"],
            start_new_session=True,
        ))
        print(f"iad up: dashboard on http://{'localhost' if args.host == '127.0.0.1' else args.host}:{args.port}",
              flush=True)
        if args.host not in LOCAL_HOSTS:
            print("iad up: sign-in required (served on the network); accounts: iad users list", flush=True)
        elif accounts.sign_in_required():
            print("iad up: sign-in required (set earlier; `iad users sign-in off` turns it off)", flush=True)
    else:
        print("iad up: no dashboard/app.py found; running the worker only", flush=True)
    for proc in procs:
        print(f"iad up: pid {proc.pid}", flush=True)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Shells start background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt:
    # install the handler explicitly so that SIGINT stops `iad up` however it was launched.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        # Run until Ctrl-C, or until a child dies (then stop the other one too and report its exit code).
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        code = next(proc.returncode for proc in procs if proc.poll() is not None) or 1
        print("iad up: a child process exited; stopping the others", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("iad up: stopping (the worker finishes or hands back its current job)", flush=True)
    finally:
        # Dashboard first (nothing to lose), then the worker with a warm shutdown.
        for proc in reversed(procs):
            stop_process_group(proc, args.stop_timeout)
    return code


def add_job_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="queue a matrix of jobs: methods x categories x seeds")
    add_run_arguments(p, multi=True)
    p.add_argument("--group", help="group/sweep id for the matrix (default: a new one)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="table of jobs with status and progress")
    p.add_argument("--status", choices=JOB_STATUSES)
    p.add_argument("--group", help="only jobs of this group/sweep")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("cancel", help="cancel queued or running jobs")
    p.add_argument("ids", nargs="+", type=int, metavar="ID")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("worker", help="start a Celery worker (migrates the database first)")
    p.add_argument("--queue", nargs="+", choices=QUEUES, help="queues to consume (default: cpu)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs at once (GPU workers: 1 per GPU)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("migrate", help="upgrade the database schema to the latest revision")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("up", help="migrate, then run a local worker and the dashboard (Ctrl-C stops both)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1",
                   help="address the dashboard listens on (default: this machine only; 0.0.0.0 = the network)")
    p.add_argument("--stop-timeout", type=float, default=30, help="seconds to let the worker finish on stop")
    p.set_defaults(func=cmd_up)
