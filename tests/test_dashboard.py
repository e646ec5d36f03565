"""Dashboard pages under `streamlit.testing.v1.AppTest`: empty database, stored results, and every action.

Results are stored through `db.queries` exactly as a worker stores them (`dashboard.sample_data`); jobs
launched from the pages go through the real submit path into an embedded broker under a tmp IAD_HOME
(no worker consumes them here; `tests/test_browser.py` runs a real one).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from db import queries

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
PAGES = ("leaderboard", "imbalance", "launch", "jobs", "run_detail", "export")


@pytest.fixture
def iad_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private IAD_HOME with its own SQLite database, artifact store and embedded broker."""
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'iad.sqlite'}"
    monkeypatch.setenv("IAD_HOME", str(home))
    monkeypatch.setenv("IAD_DATABASE_URL", url)
    monkeypatch.setenv("IAD_ARTIFACTS", str(home / "artifacts"))
    monkeypatch.setenv("IAD_QUEUE_PREFIX", "dashtest-")
    monkeypatch.setenv("IAD_DEMO_SIZE", "small")
    monkeypatch.delenv("IAD_BROKER_URL", raising=False)
    yield home
    from db.session import dispose_engine

    dispose_engine(url)


def open_app(page: str = "leaderboard") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    if page != "leaderboard":
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def stored(iad_env: Path, demo_root: Path) -> dict:
    """Two pretrained methods and one random-weight method x 2 categories x 2 seeds, with maps."""
    from dashboard import sample_data

    ids = sample_data.store_synthetic_results(
        demo_root, ["brick", "grass"], methods={"patchcore": 1.5, "padim": 0.9, "isstad": 0.4}, seeds=(0, 1),
        random_methods=["isstad"],
    )
    return {"ids": ids, "root": demo_root}


# --- empty database ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_an_empty_database(iad_env: Path, page: str) -> None:
    at = open_app(page)
    assert at.title[0].value
    if page == "leaderboard":
        assert at.button(key="launch_demo").label.startswith("Generate demo data")


def test_the_first_run_offer_says_how_long_the_demo_takes(iad_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IAD_DEMO_SIZE", "default")
    text = " ".join(m.value for m in open_app().markdown)
    assert "about 15 minutes" in text and "within minutes" not in text


def test_first_run_button_generates_the_demo_and_queues_the_comparison(iad_env: Path) -> None:
    from dashboard import state

    at = open_app()
    at.button(key="launch_demo").click().run()
    assert not at.exception, at.exception
    assert "Demo comparison submitted" in at.success[0].value  # landed on the Jobs page
    jobs = queries.list_jobs(limit=None)
    methods = state.demo_methods()
    assert len(jobs) == 3 * len(methods)
    assert {j.status for j in jobs} == {"queued"}
    assert all(j.task_id for j in jobs), "every job was published to the broker"
    assert {j.preset for j in jobs} == {"fast"} and {j.seed for j in jobs} == {0}
    assert {c for j in jobs for c in j.categories} == {"brick", "grass", "gravel"}
    assert (state.demo_root() / "dataset.json").is_file()


# --- stored results -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_stored_results(stored: dict, page: str) -> None:
    at = open_app(page)
    assert not at.error
    assert not any(b.key == "launch_demo" for b in at.button), "no first-run offer once there are results"


def test_a_real_job_run_in_process_shows_up_everywhere(iad_env: Path, demo_root: Path) -> None:
    """One tiny real PatchCore job through the worker's own code path, then the pages that read it."""
    from dashboard import state
    from workers.jobs import execute_job

    plan = state.plan_jobs(["patchcore"], "demo", str(demo_root), ["grass"], [0], preset="fast",
                             weights="random", overrides={"resize": 64, "crop": 64, "coreset_ratio": 0.1})
    assert plan.ok, plan.errors
    (job_id,) = queries.create_jobs(plan.requests)
    assert execute_job(job_id) == "succeeded"
    at = open_app()
    assert list(at.table[0].value.index) == ["patchcore (fast) ⚠ random weights"]
    at.switch_page("pages/run_detail.py").run()
    assert not at.exception and len(at.image) >= 3
    assert at.table[0].value["value"]["random weights"] == "yes"
    assert at.table[0].value["value"]["evaluation frame"].startswith("full:256 (every method scored on the full")


def _plotly_array(value: object) -> object:
    """Plotly's JSON stores numeric arrays as {"dtype", "bdata" (base64)}: decode those to a list."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return value


def test_leaderboard_shows_the_matrix_efficiency_and_chart(stored: dict) -> None:
    at = open_app()
    table = at.table[0].value
    assert list(table.columns) == ["brick", "grass", "mean"]
    assert len(table) == 3  # one row per method
    random_rows = [r for r in table.index if "random weights" in r]
    assert random_rows == ["isstad (fast) ⚠ random weights"]
    assert table.index[-1] == random_rows[0], "random-weight rows come last"
    cell = table.loc["patchcore (fast)", "brick"]
    assert "±" in cell and float(cell.split("±")[0]) > 0.5
    assert at.warning and "random weights" in at.warning[0].value
    # The chart is a dot plot: per variant one dot per seed and column, and the mean with ± std whiskers.
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    traces = {(t["name"], "seeds" if t.get("showlegend") is False else "mean"): {k: _plotly_array(v) for k, v in t.items()}
              for t in spec["data"]}
    assert {t["type"] for t in spec["data"]} == {"scatter"} and len(traces) == 2 * len(table)
    assert spec["layout"]["xaxis"]["ticktext"] == ["brick", "grass", "mean"]
    low, high = spec["layout"]["yaxis"]["range"]
    assert 0.3 < low < high <= 1.01, "the axis spans the values, not 0 to 1"
    for label in table.index:
        seeds, mean = traces[(label, "seeds")], traces[(label, "mean")]
        assert sorted((c, int(s)) for c, s in seeds["customdata"]) == [
            (c, s) for c in ("brick", "grass", "mean") for s in (0, 1)]
        assert [c for c, _ in mean["customdata"]] == ["brick", "grass", "mean"] and mean["error_y"]["visible"]
        assert [round(x) for x in mean["x"]] == [0, 1, 2]  # one column each, the ticks name them
        assert float(table.loc[label, "brick"].split("±")[0].rstrip(" ≈~")) == pytest.approx(mean["y"][0], abs=5e-4)
    # Hover: each pretrained entry against its column's best, with the paired-bootstrap interval.
    hovers = {label: [h for _, h in traces[(label, "mean")]["customdata"]] for label in table.index}
    for k in range(3):  # per column: one best, the other pretrained entry against it
        pretrained = sorted(hovers[label][k] for label in ("patchcore (fast)", "padim (fast)"))
        assert pretrained[0] == "best in this column", pretrained
        assert pretrained[1].startswith("best − this: Δ +") and "paired bootstrap" in pretrained[1], pretrained
    assert hovers["isstad (fast) ⚠ random weights"] == [""] * 3  # random weights: not ranked, not compared
    efficiency = at.dataframe[0].value
    assert {"images/s", "fit s / category", "kNN search"} <= set(efficiency.columns)
    assert efficiency["images/s"].notna().all()
    assert "mean ± std over 2 seeds" in at.caption[0].value


def test_leaderboard_filters_and_orientation(stored: dict) -> None:
    at = open_app()
    at.multiselect(key="lb_methods").select("patchcore").run()
    at.toggle(key="lb_transpose").set_value(True).run()
    assert not at.exception
    table = at.table[0].value
    assert list(table.index) == ["brick", "grass", "mean"]
    assert list(table.columns) == ["patchcore (fast)"]
    at.selectbox(key="lb_metric").select("pixel_auroc").run()
    assert "Pixel AUROC" in at.caption[0].value
    at.toggle(key="lb_random").set_value(False).run()
    assert not at.warning


def test_export_page_offers_latex_csv_and_markdown(stored: dict) -> None:
    at = open_app("export")
    latex = at.code[0].value
    assert latex.count(r"\begin{table}") == 1 and r"\toprule" in latex and r"\textbf{" in latex
    assert [b.label for b in at.get("download_button")] == ["Download LaTeX", "Download CSV", "Download Markdown"]
    assert at.code[-1].value.startswith("iad export --dataset demo")


def test_export_page_follows_the_leaderboard_view(stored: dict) -> None:
    at = open_app()
    at.multiselect(key="lb_methods").select("padim").run()
    at.switch_page("pages/export.py").run()
    latex = at.code[0].value
    assert "padim" in latex and "patchcore" not in latex


def test_run_detail_shows_metrics_images_and_provenance(stored: dict) -> None:
    at = open_app("run_detail")
    assert len(at.image) >= 3  # image + overlay + colour bar
    frames = [d.value for d in at.dataframe]
    images = next(f for f in frames if "score" in f.columns)
    assert images["score"].is_monotonic_decreasing and {"good", "anomalous"} == set(images["label"])
    assert any("Image AUROC" in f.columns for f in frames)
    provenance = at.table[0].value["value"]
    assert provenance["metric version"] == "iad-metrics-2" and provenance["git commit"] == "synthetic"
    # Other methods scored the same image: the comparison panels render side by side.
    assert at.multiselect(key="detail_compare").value
    at.slider(key="detail_opacity").set_value(0.9).run()
    at.radio(key="detail_anchor").set_value("p99").run()
    assert not at.exception


def test_run_detail_writes_scores_in_fixed_point_and_labels_good_images_once(iad_env: Path, demo_root: Path) -> None:
    from ad_core.data import load_split
    from dashboard import sample_data

    test = load_split("demo", demo_root, "brick").test
    scores = [12345.678 if s.label else 2345.6 + i for i, s in enumerate(test)]  # scientific under :.4g
    maps = np.stack([np.full((128, 128), v, dtype=np.float32) for v in scores])
    images = [sample_data.Image(s.path, s.label, s.defect_type, v) for s, v in zip(test, scores, strict=True)]
    sample_data.store_job("patchcore", "demo", str(demo_root), "brick", 0, {"image_auroc": 1.0}, images, maps)
    at = open_app("run_detail")
    panel = next(m.value for m in at.markdown if "good images score as high" in m.value)
    assert panel.startswith("**anomalous (") and "score **12346**" in panel and "e+" not in panel
    assert not any("e+0" in c.value for c in at.caption)
    good = next(s.path for s in test if s.label == 0)
    at.selectbox(key="detail_image").set_value(good).run()
    panel = next(m.value for m in at.markdown if "good images score as high" in m.value)
    assert panel.startswith("**good**  \n") and "good (good)" not in panel
    # A CPU run has no GPU memory: the column is left out instead of showing None.
    timings = next(d.value for d in at.dataframe if "fit s" in d.value.columns)
    assert "peak GPU MB" not in timings.columns and any("CPU run" in c.value for c in at.caption)


def test_run_detail_compares_two_runs_with_intervals(stored: dict) -> None:
    at = open_app("run_detail")
    job = at.selectbox(key="detail_job").value
    other = at.selectbox(key="compare_with").value
    table = next(d.value for d in at.dataframe if "interval" in d.value.columns)
    assert list(table["metric_label"]) == ["Image AUROC", "Image AP", "Image F1-max"]
    assert table["interval"].str.fullmatch(r"\[[+-]\d\.\d{4}, [+-]\d\.\d{4}\]").all()
    assert any(f"iad compare {job} {other}" in c.value for c in at.caption)
    at.toggle(key="compare_pixel").set_value(True).run()
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "interval" in d.value.columns)
    assert list(table["metric_label"])[-2:] == ["Pixel AUROC", "AUPRO@0.3"]
    assert (table["note"] == "").all()


def test_leaderboard_draws_the_critical_difference_diagram(iad_env: Path, demo_root: Path) -> None:
    from dashboard import sample_data

    sample_data.store_synthetic_results(demo_root, ["brick", "grass", "gravel"],
                                        methods={"patchcore": 1.5, "padim": 0.9, "cfa": 0.5}, seeds=(0, 1))
    at = open_app()
    assert at.get("plotly_chart")[1].proto.spec  # the CD diagram after the dot plot
    spec = json.loads(at.get("plotly_chart")[1].proto.spec)
    labels = [a["text"] for a in spec["layout"]["annotations"] if "(" in a["text"]]
    assert sorted(label.rsplit(" (", 1)[0] for label in labels) == ["cfa (fast)", "padim (fast)", "patchcore (fast)"]
    assert any("Friedman over 3 classes and 3 methods" in c.value and "Nemenyi CD" in c.value for c in at.caption)
    at.radio(key="lb_posthoc").set_value("wilcoxon-holm").run()
    assert any("Holm's correction" in c.value for c in at.caption)
    lead = next(d.value for d in at.dataframe if "second" in d.value.columns)
    assert list(lead["column"]) == ["brick", "grass", "gravel", "mean"]


def test_run_detail_opens_the_job_of_the_query_parameter(stored: dict) -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    job_id = stored["ids"][3]
    at.switch_page("pages/run_detail.py")
    at.query_params["job"] = str(job_id)
    at.run()
    assert at.selectbox(key="detail_job").value == job_id


# --- actions ---------------------------------------------------------------------------------------------------


def test_launch_validates_inline_and_creates_jobs(iad_env: Path, demo_root: Path) -> None:
    at = open_app("launch")
    at.selectbox(key="launch_kind").select("demo").run()
    at.text_input(key="launch_root_demo").input(str(demo_root)).run()
    assert at.multiselect(key="launch_methods").value == ["patchcore"]  # the baseline is the default
    # A valid root pre-selects all of its categories.
    assert at.multiselect(key=f"launch_categories_demo_{demo_root}").value == ["brick", "grass", "gravel"]
    at.multiselect(key=f"launch_categories_demo_{demo_root}").set_value([]).run()
    assert any("Launch is disabled: choose at least one category" in c.value for c in at.caption)
    at.multiselect(key=f"launch_categories_demo_{demo_root}").set_value(["brick", "grass"]).run()
    at.text_input(key="launch_seeds").input("0-2").run()
    assert any("= 6 job(s)" in m.value for m in at.markdown)

    # A bad config value fails RunSpec.validate: the message is shown and nothing is created.
    at.text_area(key="launch_overrides").input("coreset_ratio=7").run()
    at.button(key="launch_submit").click().run()
    assert at.error and "coreset_ratio" in at.error[0].value
    assert sum(queries.job_counts().values()) == 0

    at.text_area(key="launch_overrides").input("").run()
    assert at.radio(key="launch_frame").value == "full:256"  # the common frame is the default
    at.radio(key="launch_frame").set_value("native").run()
    at.button(key="launch_submit").click().run()
    assert not at.exception and not at.error
    assert "Submitted 6 job(s)" in at.success[0].value
    jobs = queries.list_jobs(limit=None)
    assert sorted((j.categories[0], j.seed) for j in jobs) == [(c, s) for c in ("brick", "grass") for s in range(3)]
    assert {j.frame for j in jobs} == {"native"}
    assert len({j.group_id for j in jobs}) == 1 and all(j.task_id for j in jobs)


def test_launch_rejects_bad_seeds_and_missing_roots(iad_env: Path) -> None:
    at = open_app("launch")
    at.selectbox(key="launch_kind").select("mvtec").run()
    at.text_input(key="launch_root_mvtec").input("/nonexistent/mvtec").run()
    assert at.error and "/nonexistent/mvtec" in at.error[0].value
    at.text_input(key="launch_seeds").input("one").run()
    assert any("seeds" in e.value for e in at.error)


def _submit(n: int = 2, **kw) -> tuple[str, list[int]]:
    from dashboard import state

    requests = [queries.JobRequest(method="patchcore", dataset="demo", root="/data/demo", categories=[c],
                                   config={"crop": 64}, preset="fast", seed=0, **kw)
                for c in ("brick", "grass", "gravel")[:n]]
    return state.submit_matrix(requests)


def test_jobs_page_cancels_queued_and_running_jobs(iad_env: Path) -> None:
    group, ids = _submit(2)
    job = queries.claim_job(ids[1], host="w", device="cpu")  # the second one is running
    assert job is not None and queries.report_progress(ids[1], job.attempts, 0.4875, "fitting")
    at = open_app("jobs")
    table = at.dataframe[0].value
    assert set(table["id"]) == set(ids) and {"progress", "worker", "elapsed"} <= set(table.columns)
    # Whole percent on a 0-100 scale, so that "49%" sits next to "0%" and "100%", never "48.75%".
    assert dict(zip(table["id"], table["progress"], strict=True)) == {ids[0]: 0, ids[1]: 49}
    assert list(table.columns[:7]) == ["id", "status", "progress", "method", "categories", "seed", "elapsed"]
    assert list(table["detail"]) == ["", ""], "no link (and no 'None') before a job succeeds"
    assert "attempts" not in table.columns and table["worker"].tolist() == ["w · cpu", "cpu"]
    at.multiselect(key="jobs_selected").set_value(ids).run()
    at.button(key="jobs_cancel").click().run()
    assert not at.exception
    jobs = {j.id: j for j in queries.list_jobs(job_ids=ids, limit=None)}
    assert jobs[ids[0]].status == "cancelled"
    assert jobs[ids[1]].status == "running" and jobs[ids[1]].cancel_requested
    assert f"#{ids[1]}: cancelling" in at.success[0].value


def test_jobs_page_shows_errors_and_reruns_missing_cells(iad_env: Path) -> None:
    group, ids = _submit(3)
    job = queries.claim_job(ids[0], host="w", device="cpu")
    queries.fail_job(ids[0], job.attempts, "ValueError: boom\n\nTraceback ...")
    queries.request_cancel([ids[1]])
    at = open_app("jobs")
    at.selectbox(key="jobs_group").select(group).run()
    assert any("boom" in c.value for c in at.code)
    assert at.table, "the matrix view of the group"
    button = at.button(key="jobs_missing")
    assert button.label == "Re-run missing cells (2)"
    button.click().run()
    assert not at.exception
    jobs = queries.list_jobs(group_id=group, limit=None)
    assert len(jobs) == 5
    new = [j for j in jobs if j.id not in ids]
    assert sorted(j.categories[0] for j in new) == ["brick", "grass"] and {j.status for j in new} == {"queued"}
    assert at.button(key="jobs_missing").label == "Re-run missing cells (0)"


def test_jobs_page_reruns_selected_jobs(iad_env: Path) -> None:
    group, ids = _submit(1)
    queries.request_cancel(ids)
    at = open_app("jobs")
    at.multiselect(key="jobs_selected").set_value(ids).run()
    at.button(key="jobs_rerun").click().run()
    assert not at.exception
    jobs = queries.list_jobs(group_id=group, limit=None)
    assert len(jobs) == 2 and jobs[0].status == "queued" and jobs[0].config == {"crop": 64}


def test_submit_cancels_the_jobs_when_the_broker_is_unreachable(iad_env: Path, monkeypatch) -> None:
    from dashboard import state

    def unreachable(job: object) -> str:
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    monkeypatch.setattr("workers.celery_app.enqueue", unreachable)
    with pytest.raises(state.SubmitError, match="were cancelled"):
        _submit(1)
    assert {j.status for j in queries.list_jobs(limit=None)} == {"cancelled"}


def test_parse_seeds() -> None:
    from dashboard.state import parse_seeds

    assert parse_seeds("0 1, 2") == [0, 1, 2]
    assert parse_seeds("3-5 4") == [3, 4, 5]
    for bad in ("", "a", "-1", "5-2"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_heatmap_colours_are_anchored_to_good_images() -> None:
    """A good image stays calm and a defect lights up; per-image min-max would paint both hot."""
    from dashboard import heatmap

    rng = np.random.default_rng(0)
    maps = rng.normal(1.0, 0.05, size=(6, 32, 32)).astype(np.float32)
    maps[4:, 10:20, 10:20] += 1.0  # two anomalous images
    labels = np.array([0, 0, 0, 0, 1, 1])
    scale = heatmap.normal_scale(maps, labels, "max")
    assert scale.from_normals and scale.threshold == pytest.approx(maps[:4].max())
    good, bad = scale.normalise(maps[0]), scale.normalise(maps[4])
    assert good.max() <= heatmap.THRESHOLD_POSITION + 1e-6
    assert (bad[10:20, 10:20] == 1.0).all()
    per_image = (maps[0] - maps[0].min()) / (maps[0].max() - maps[0].min())
    assert per_image.max() == 1.0  # what the anchored scale avoids
    image = np.full((32, 32, 3), 128, np.uint8)
    assert np.abs(heatmap.overlay(image, maps[0], scale, 0.0).astype(int) - 128).max() == 0
    assert heatmap.outline(np.pad(np.ones((4, 4), bool), 2)).sum() == 12
    assert heatmap.normal_scale(maps[4:], labels[4:], "p99").from_normals is False


def test_a_multi_class_jobs_categories_stay_short_in_tables() -> None:
    from dashboard.ui import categories_text

    assert categories_text(["brick", "grass", "gravel", "moon"]) == "brick, grass, gravel, moon"
    ten = ["brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble", "ihc", "moon"]
    assert categories_text(ten) == "10 classes: brick, camera, chelsea, …"


def test_an_unreachable_database_shows_one_message_not_a_traceback(iad_env: Path, monkeypatch) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("IAD_DATABASE_URL", f"postgresql+psycopg://iad:secret@127.0.0.1:{port}/iad")
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    [error] = at.error
    assert error.value.startswith(f"The results database postgresql+psycopg://iad:***@127.0.0.1:{port}/iad is "
                                  "unreachable (connection failed")
    assert "reloads by itself" in error.value and "secret" not in error.value
    assert any("next check in 5 s" in c.value for c in at.caption)
