"""Issue 14's browser check: a 3-seed comparison on the multi-class demo, run for real (`iad submit` to the
worker of `iad up`), then the leaderboard in Chromium: the matrix with its significance marks, the "Is the
lead real?" table, the critical-difference diagram, and a hover that shows an entry against its column's
best. Screenshots go to tmp_path (and $IAD_SCREENSHOTS when set)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from jobs_helpers import wait_for
from test_browser import CHROMIUM, CHROMIUM_ARGS, REPO, Screenshots, app_url, settled  # noqa: F401  (app_url: the `iad up` fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CATEGORIES = ("brick", "grass", "gravel", "moon", "coins")
# Three PatchCore variants (memory-bank size: the paper's ablation axis), so the rank test has k = 3.
VARIANTS = ("coreset_ratio=0.1", "coreset_ratio=0.01", "coreset_ratio=0.002")


def test_leaderboard_shows_significance_and_the_cd_diagram(app_url, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    from ad_core.data import make_demo_dataset

    url, env, log_path = app_url
    for key in ("IAD_HOME", "IAD_DATABASE_URL", "IAD_ARTIFACTS"):
        monkeypatch.setenv(key, env[key])
    from db import queries

    root = make_demo_dataset(tmp_path / "demo", categories=CATEGORIES, n_train=16, n_test_good=6, n_test_defect=10,
                             image_size=64)
    for variant in VARIANTS:
        submit = subprocess.run(
            [sys.executable, "-m", "workers.cli", "submit", "--method", "patchcore", "--dataset", "demo", "--root",
             str(root), "--seeds", "0", "1", "2", "--preset", "fast", "--set", "resize=64", "--set", "crop=64",
             "--set", variant, "--group", "evidence"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )
        assert submit.returncode == 0, submit.stderr

    def finished() -> bool:
        counts = queries.job_counts(group_id="evidence")
        return counts["queued"] + counts["running"] == 0

    try:
        wait_for(finished, 900, "the comparison jobs to finish", interval=1.0)
    except AssertionError:
        raise AssertionError(f"{queries.job_counts()}\n{log_path.read_text()[-4000:]}") from None
    jobs = queries.list_jobs(group_id="evidence", limit=None)
    assert len(jobs) == len(VARIANTS) * 3 * len(CATEGORIES) and all(j.status == "succeeded" for j in jobs), [(j.id, j.status, j.error) for j in jobs]

    shot = Screenshots(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 3400})
        page.set_default_timeout(90_000)
        expect.set_options(timeout=90_000)
        page.goto(url)
        expect(page.get_by_text("Is the lead real?")).to_be_visible()
        expect(page.get_by_text("Ranks across categories")).to_be_visible()
        settled(page)
        table = page.locator("[data-testid='stTable'] table").first
        rows = table.locator("tbody tr").all_inner_texts()
        assert len(rows) == 3 and all(r.startswith("patchcore (fast) #") for r in rows), rows
        cells = table.locator("td").all_inner_texts()
        assert all(re.fullmatch(r"\d\.\d{3} ± \d\.\d{3}( [≈~]+)?", c.strip()) for c in cells), cells
        caption = page.get_by_text("mean ± std over 3 seeds").first.inner_text()
        assert "≈ best not significantly better than the second" in caption
        # The critical-difference diagram: the three variants by average rank, and the test's summary.
        cd = page.locator(".js-plotly-plot").nth(1)
        expect(cd).to_be_visible()
        names = cd.locator(".annotation-text").evaluate_all("nodes => nodes.map(n => n.textContent)")
        assert sum(n.startswith("patchcore (fast) #") for n in names) == 3, names
        expect(page.get_by_text(re.compile(r"Friedman over 5 classes and 3 methods: chi² = "))).to_be_visible()
        lead = page.get_by_text("Is the lead real?")
        lead.scroll_into_view_if_needed()
        shot(page, "14-leaderboard-significance.png")
        # Hover a diamond of the dot plot: the entry against its column's best, with the interval.
        chart = page.locator(".js-plotly-plot").first
        chart.scroll_into_view_if_needed()
        texts = []
        for point in chart.locator(".scatterlayer .trace .points path").all():
            point.hover(force=True)
            page.wait_for_timeout(150)
            texts = page.locator(".hoverlayer .hovertext").evaluate_all("nodes => nodes.map(n => n.textContent)")
            if any("best − this" in t for t in texts):
                break
        assert any("best − this: Δ" in t and "paired bootstrap" in t for t in texts), texts
        shot(page, "15-leaderboard-hover.png", wait_ms=200)
        browser.close()
