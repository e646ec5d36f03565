"""`iad submit` validates everything up front: bad input fails with one clear line, exit code 2, no jobs.

Also: a good submission creates the whole method x category x seed matrix and one broker message per
job; `iad jobs` and `iad cancel` on queued jobs. Embedded broker (SQLite file) only: no worker needed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import jobs_helpers as h
import pytest
from sqlalchemy import create_engine, text

from db import queries


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return h.make_tiny_demo(tmp_path_factory.mktemp("tiny") / "demo")


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> h.Stack:
    st = h.make_stack("submit", tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'iad.sqlite'}")
    st.apply_env(monkeypatch)
    return st


def _iad(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from workers.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _broker_messages(st: h.Stack) -> int:
    engine = create_engine(f"sqlite:///{st.home / 'broker.sqlite'}")
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM kombu_message")).scalar_one()
    finally:
        engine.dispose()


BAD_INPUT = [  # (arguments replaced in a valid command line, what the one-line error must say)
    ({"--root": ["/nonexistent/demo"]}, "dataset root /nonexistent/demo does not exist"),
    ({"--method": ["patchcore", "nosuchmethod"]}, "unknown method 'nosuchmethod'"),
    ({"--set": ["coreset_ratio=2"]}, "coreset_ratio must be in (0, 1]"),
    ({"--method": ["patchcore", "reconpatch"], "--set": ["coreset_ratio=2"]}, "patchcore: coreset_ratio must be in"),
    ({"--set": ["coreset_ratio=abc"]}, "coreset_ratio expects float, got 'abc'"),
    ({"--set": ["no_such_field=1"]}, "unknown config field(s) ['no_such_field']"),
    ({"--set": ["crop"]}, "--set expects key=value, got 'crop'"),
    ({"--category": ["brick", "carpet"]}, "carpet"),
    ({"--preset": ["turbo"]}, "unknown preset 'turbo'"),
    ({"--weights": ["/nonexistent/weights.pth"]}, "weights file /nonexistent/weights.pth does not exist"),
    ({"--device": ["tpu"]}, "device must be 'cpu' or 'cuda[:N]'"),
    ({"--seeds": ["0", "-1"]}, "seeds must be >= 0"),
    ({"--backbone": ["tf_efficientnet_lit0"]}, "unknown timm backbone 'tf_efficientnet_lit0'; did you mean tf_efficientnet_lite0"),
    ({"--method": ["reconpatch"], "--set": ["ensemble_backbones=resnet18,tf_efficientnet_lite0", "holdout_fraction=0.99"]},
     "ReConPatch ensemble holds out 6 of the 6 normal training images of brick"),
    ({"--split": ["few_shot:k=9"]}, "few_shot k=9: demo/brick has only 4 anomalous test image(s)"),
    ({"--split": ["few_shot:k=2,setting=easy"]}, "few_shot setting must be 'general' or 'hard'"),
    ({"--split": ["fewshot:k=2"]}, "unknown split kind 'fewshot'; available: standard, few_shot, long_tail"),
    ({"--split": ["long_tail:zipf"]}, "long_tail name 'zipf' not understood"),
    ({"--frame": ["crop"]}, "unknown evaluation frame 'crop'; use 'full' (= full:256), 'full:N' or 'native'"),
]


def _argv(root: Path, change: dict[str, list[str]]) -> list[str]:
    args = {"--method": ["patchcore"], "--dataset": ["demo"], "--root": [str(root)], "--category": ["brick", "grass"],
            "--backbone": ["tf_efficientnet_lite0"], "--weights": ["random"], **change}
    argv = ["submit"]
    for flag, values in args.items():
        argv += [x for v in values for x in (flag, v)] if flag == "--set" else [flag, *values]
    return argv


@pytest.mark.parametrize("change,message", BAD_INPUT, ids=[next(iter(c)) + f"-{i}" for i, (c, _) in enumerate(BAD_INPUT)])
def test_bad_input_fails_at_submit_time_and_creates_no_jobs(
    stack: h.Stack, tiny_root: Path, capsys: pytest.CaptureFixture, change: dict[str, list[str]], message: str
) -> None:
    code, out, err = _iad(capsys, *_argv(tiny_root, change))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert queries.list_jobs(limit=None) == []
    assert not (stack.home / "broker.sqlite").exists()  # nothing was sent either


def test_a_valid_matrix_creates_one_job_per_method_category_seed(
    stack: h.Stack, tiny_root: Path, capsys: pytest.CaptureFixture
) -> None:
    # Repeated options accumulate, as users expect (--seeds 0 --seeds 1 2 = seeds 0 1 2).
    code, out, err = _iad(capsys, "submit", "--method", "patchcore", "--dataset", "demo", "--root", str(tiny_root),
                          "--seeds", "0", "--seeds", "1", "2", "--group", "sweep-1", *h.TINY_ARGS)
    assert code == 0, err
    ids = [int(i) for i in out.strip().splitlines()[-1].split()]
    assert "submitted 6 job(s) in group sweep-1" in out and len(ids) == 6
    jobs = queries.list_jobs(group_id="sweep-1", limit=None)
    assert sorted((j.categories[0], j.seed) for j in jobs) == [(c, s) for c in h.TINY_CATEGORIES for s in (0, 1, 2)]
    job = jobs[0]
    assert (job.status, job.queue, job.device, job.dataset.root) == ("queued", "cpu", "cpu", str(tiny_root))
    assert job.config["crop"] == 64 and job.config["backbone"] == "tf_efficientnet_lite0" and job.task_id
    assert job.frame == "full:256" and "frame full:256" in out  # the default evaluation frame, recorded
    assert job.launched_by and job.max_attempts == 1
    assert _broker_messages(stack) == 6

    code, out, _ = _iad(capsys, "jobs", "--status", "queued")
    rows = out.strip().splitlines()
    assert code == 0 and [row.split()[5] for row in rows[1:]] == ["queued"] * 6

    code, out, _ = _iad(capsys, "cancel", str(ids[0]), str(ids[1]), "999999")
    assert code == 1 and out.splitlines() == [f"{ids[0]}: cancelled", f"{ids[1]}: cancelled", "999999: not found"]
    assert queries.job_counts(group_id="sweep-1") == {"queued": 4, "running": 0, "succeeded": 0, "failed": 0,
                                                      "cancelled": 2}


def test_cuda_jobs_go_to_the_gpu_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.settings import queue_for_device

    monkeypatch.setenv("IAD_QUEUE_PREFIX", "team-a.")
    assert [queue_for_device(d) for d in ("cpu", "cuda", "cuda:1")] == ["team-a.cpu", "team-a.gpu", "team-a.gpu"]


def test_repeated_method_options_accumulate(stack: h.Stack, tiny_root: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _iad(capsys, "submit", "--method", "patchcore", "--method", "reconpatch", "--dataset", "demo",
                          "--root", str(tiny_root), "--category", "brick", "--category", "grass", "--group", "both",
                          *h.TINY_ARGS)
    assert code == 0, err
    assert sorted((j.method, j.categories[0]) for j in queries.list_jobs(group_id="both", limit=None)) == [
        (m, c) for m in ("patchcore", "reconpatch") for c in ("brick", "grass")]


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
def test_output_into_a_closed_pipe_exits_quietly(stack: h.Stack, unbuffered: str) -> None:
    """`iad jobs | head`: the reader is gone before `iad` writes; no BrokenPipeError traceback, exit 141."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    env = {**stack.env, "PYTHONUNBUFFERED": unbuffered}
    if not unbuffered:
        env.pop("PYTHONUNBUFFERED")
    try:
        proc = subprocess.run([*h.IAD, "jobs"], env=env, cwd=stack.home, stdout=write_fd, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write_fd)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_migrate_command(stack: h.Stack, capsys: pytest.CaptureFixture) -> None:
    from db.session import head_revision

    code, out, _ = _iad(capsys, "migrate")
    assert code == 0 and out.strip().endswith(f"is at revision {head_revision()}")
