"""End to end in a real browser: `iad up` (dashboard + local worker, embedded SQLite broker) and Chromium.

A newcomer's first minutes: open the app on an empty database, launch the demo comparison with one click,
watch the jobs finish, read the leaderboard, open the heatmap viewer, export. Screenshots of every step go
to tmp_path (and to $IAD_SCREENSHOTS when set). IAD_DEMO_SIZE=small keeps the demo to a few seconds of
CPU per job. Never runs `playwright install`: it drives Debian's chromium.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_helpers import free_port, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().strip() == b"ok"
    except OSError:
        return False


def settled(page) -> None:  # noqa: ANN001
    """Wait until Streamlit has finished the current script run (it shows a status widget while it runs)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)


class Screenshots:
    """`shot(page, name)`: a screenshot into tmp_path/screenshots, copied to $IAD_SCREENSHOTS when set."""

    def __init__(self, tmp_path: Path) -> None:
        self.folders = [tmp_path / "screenshots"]
        if os.environ.get("IAD_SCREENSHOTS"):
            self.folders.append(Path(os.environ["IAD_SCREENSHOTS"]))
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, page, name: str, wait_ms: int = 600) -> None:  # noqa: ANN001
        page.wait_for_timeout(wait_ms)  # let charts and images finish painting
        # Streamlit scrolls inside its own container, so the tall viewport is what gets captured.
        page.screenshot(path=str(self.folders[0] / name))
        for folder in self.folders[1:]:
            shutil.copy(self.folders[0] / name, folder / name)


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """`iad up` on a free port with a private IAD_HOME; yields (base url, env, log file)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing")
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "IAD_HOME": str(home),
        "IAD_DATABASE_URL": f"sqlite:///{home / 'iad.sqlite'}",
        "IAD_ARTIFACTS": str(home / "artifacts"),
        "IAD_QUEUE_PREFIX": f"browser-{port}-",
        "IAD_DEMO_SIZE": "small",
        "IAD_DASHBOARD_REFRESH_S": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("IAD_BROKER_URL", None)
    log_path = tmp_path / "iad-up.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "up", "--port", str(port)], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url) or proc.poll() is not None, 120, "the dashboard to answer", interval=0.5)
        assert proc.poll() is None, f"iad up exited:\n{log_path.read_text()[-3000:]}"
        yield url, env, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # iad up stops its worker and dashboard in order
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_newcomer_runs_the_demo_and_reads_the_results(app_url, tmp_path: Path, monkeypatch) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, env, log_path = app_url
    for key in ("IAD_HOME", "IAD_DATABASE_URL", "IAD_ARTIFACTS"):
        monkeypatch.setenv(key, env[key])
    from db import queries

    shot = Screenshots(tmp_path)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.set_default_timeout(90_000)
        expect.set_options(timeout=90_000)  # the first script run imports torch: slow on a busy CPU

        # 1. Empty database: the first-run offer.
        page.goto(url)
        expect(page.get_by_text("Welcome: your results database is empty")).to_be_visible()
        expect(page.get_by_text("Deploy", exact=True)).to_have_count(0)  # dashboard/.streamlit: viewer toolbar
        shot(page, "01-first-run.png")

        # 2. One click: demo data + comparison submitted; we land on the Jobs page.
        page.get_by_role("button", name="Generate demo data and launch the demo comparison").click()
        expect(page.get_by_text("Demo comparison submitted")).to_be_visible()
        n_jobs = sum(queries.job_counts().values())
        assert n_jobs >= 3

        # 3. The real worker runs them; the Jobs page refreshes itself.
        def finished() -> bool:
            counts = queries.job_counts()
            return counts["queued"] + counts["running"] == 0

        try:
            wait_for(lambda: queries.job_counts()["succeeded"] >= 1 or finished(), 150, "a first job to finish", interval=0.5)
            shot(page, "02-jobs-running.png")
            wait_for(finished, 150, "the demo jobs to finish", interval=0.5)
        except AssertionError:
            raise AssertionError(f"{queries.job_counts()}\n{log_path.read_text()[-4000:]}") from None
        failed = [j for j in queries.list_jobs(limit=None) if j.status != "succeeded"]
        assert not failed, [(j.id, j.status, j.error) for j in failed]
        expect(page.get_by_text(f"{n_jobs}").first).to_be_visible()
        page.wait_for_timeout(2500)  # one auto-refresh of the live table
        shot(page, "03-jobs-done.png")

        # 4. Leaderboard: a matrix cell with a number, and the chart.
        page.goto(url)
        table = page.locator("[data-testid='stTable'] table").first
        expect(table).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        settled(page)
        cells = table.locator("td").all_inner_texts()
        assert any(re.fullmatch(r"\d\.\d{3}( ± \d\.\d{3})?", c.strip()) for c in cells), cells
        assert table.locator("th").filter(has_text="patchcore").count() >= 1
        shot(page, "04-leaderboard.png")

        # 5. Run detail: the image, the overlay, the colour bar; and the provenance.
        page.goto(f"{url}/run_detail")
        expect(page.locator("[data-testid='stImage'] img").first).to_be_visible()
        settled(page)
        assert page.locator("[data-testid='stImage'] img").count() >= 3
        assert page.get_by_text("threshold").count() >= 1
        shot(page, "05-run-detail.png")
        page.get_by_role("tab", name="Provenance").click()
        expect(page.get_by_text("git commit")).to_be_visible()
        shot(page, "06-provenance.png")

        # 6. Export: LaTeX for the paper.
        page.goto(f"{url}/export")
        expect(page.get_by_text("\\begin{table}").first).to_be_visible()
        expect(page.get_by_role("button", name="Download LaTeX")).to_be_visible()
        settled(page)
        shot(page, "07-export.png")
        browser.close()


def test_long_tailed_runs_fill_the_imbalance_page(app_url, tmp_path: Path, monkeypatch) -> None:
    """Issue 10's acceptance path: a 2-seed exp100 run of PatchCore (per class) and unified PatchCore on the
    multi-class demo goes through `iad submit` and the worker of `iad up`; the Imbalance page then shows
    the scatter and the group table with numbers."""
    from playwright.sync_api import expect, sync_playwright

    from ad_core.data import MULTICLASS_DEMO_CATEGORIES, make_demo_dataset

    url, env, log_path = app_url
    for key in ("IAD_HOME", "IAD_DATABASE_URL", "IAD_ARTIFACTS"):
        monkeypatch.setenv(key, env[key])
    from db import queries

    root = make_demo_dataset(tmp_path / "demo-multiclass", categories=MULTICLASS_DEMO_CATEGORIES, n_train=24,
                             n_test_good=2, n_test_defect=4, image_size=64)
    submit = subprocess.run(
        [sys.executable, "-m", "workers.cli", "submit", "--method", "patchcore", "patchcore_unified", "--dataset",
         "demo", "--root", str(root), "--split", "long_tail:exp100", "--seeds", "0", "1", "--preset", "fast",
         "--set", "resize=64", "--set", "crop=64", "--group", "long-tail"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert submit.returncode == 0, submit.stderr
    ids = [int(i) for i in submit.stdout.strip().splitlines()[-1].split()]
    assert len(ids) == 10 * 2 + 2  # per class x seed, plus one unified job per seed

    def finished() -> bool:
        counts = queries.job_counts(group_id="long-tail")
        return counts["queued"] + counts["running"] == 0

    try:
        wait_for(finished, 600, "the long-tailed jobs to finish", interval=1.0)
    except AssertionError:
        raise AssertionError(f"{queries.job_counts()}\n{log_path.read_text()[-4000:]}") from None
    failed = [j for j in queries.list_jobs(group_id="long-tail", limit=None) if j.status != "succeeded"]
    assert not failed, [(j.id, j.status, j.error) for j in failed]
    unified = [j for j in queries.list_jobs(group_id="long-tail", limit=None) if j.method == "patchcore_unified"]
    assert all(len(j.categories) == 10 and len(queries.fit_units(j.id)) == 1 for j in unified)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        page.set_default_timeout(90_000)
        expect.set_options(timeout=90_000)
        page.goto(f"{url}/imbalance")
        expect(page.get_by_text("Head, medium and tail classes")).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        settled(page)
        points = page.locator(".js-plotly-plot .scatterlayer .point").count()
        assert points >= 10, points  # one marker per class (and count) per method
        table = page.locator("[data-testid='stTable'] table").first
        # Streamlit streams the page's elements: wait for the group table's cells, not only for the chart above it.
        # 2 seeds give mean ± std in every filled cell (3 only took longer: 33 jobs instead of 22).
        expect(table.locator("td").filter(has_text=re.compile(r"^\s*\d\.\d{3} ± \d\.\d{3}\s*$")).first).to_be_visible()
        assert table.locator("th").filter(has_text="patchcore_unified").count() >= 1
        page.wait_for_timeout(600)
        page.screenshot(path=str(tmp_path / "imbalance.png"))
        if os.environ.get("IAD_SCREENSHOTS"):
            shutil.copy(tmp_path / "imbalance.png", Path(os.environ["IAD_SCREENSHOTS"]) / "08-imbalance.png")
        browser.close()
