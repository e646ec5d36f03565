"""Dashboard evidence under `streamlit.testing.v1.AppTest`: the run detail page's bundle button and metric
version selector (after `iad rescore`), and the leaderboard's "Paper vs reproduced" section."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db import queries

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")


@pytest.fixture
def iad_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'iad.sqlite'}"
    monkeypatch.setenv("IAD_HOME", str(home))
    monkeypatch.setenv("IAD_DATABASE_URL", url)
    monkeypatch.setenv("IAD_ARTIFACTS", str(home / "artifacts"))
    monkeypatch.setenv("IAD_QUEUE_PREFIX", "evidencetest-")
    monkeypatch.delenv("IAD_BROKER_URL", raising=False)
    yield home
    from db.session import dispose_engine

    dispose_engine(url)


def test_run_detail_offers_the_bundle_and_leaderboard_the_paper_section(
    iad_env: Path, demo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ad_core.metrics
    from ad_core.catalog import METRIC_VERSION
    from ad_core.reproduce import bundle_bytes
    from db.evidence import stored_run
    from workers.jobs import execute_job
    from workers.planner import plan_jobs
    from workers.rescore import rescore

    plan = plan_jobs(["patchcore"], "demo", str(demo_root), ["grass"], [0], preset="fast",
                     overrides={"resize": 64, "crop": 64, "coreset_ratio": 0.1})
    assert plan.ok, plan.errors
    (job_id,) = queries.create_jobs(plan.requests)
    with monkeypatch.context() as mp:
        mp.setattr(ad_core.metrics, "METRIC_VERSION", "iad-metrics-old")
        assert execute_job(job_id) == "succeeded"
    assert [i.status for i in rescore()] == ["stored"]

    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    # Leaderboard: the paper section (the demo dataset has no paper numbers: it says so).
    expander = next(e for e in at.expander if e.label == "Paper vs reproduced")
    assert "holds no Image AUROC numbers for demo" in expander.info[0].value

    at.switch_page("pages/run_detail.py").run()
    assert not at.exception, at.exception
    [button] = [b for b in at.download_button if b.label == "Download reproducibility bundle"]
    assert button.key == f"bundle_{job_id}"
    versions = at.selectbox(key="detail_metric_version")
    assert versions.options == [METRIC_VERSION, "iad-metrics-old"] and versions.value == METRIC_VERSION
    assert any(f"Metric version {METRIC_VERSION}" in c.value for c in at.caption)
    versions.set_value("iad-metrics-old").run()
    assert not at.exception and any("Metric version iad-metrics-old" in c.value for c in at.caption)
    # What the button serves when clicked: the job's bundle.
    with zipfile.ZipFile(BytesIO(bundle_bytes(stored_run(job_id)))) as zf:
        assert {"manifest.json", "config.json", "splits/grass.txt", "scores/grass.csv"} <= set(zf.namelist())
