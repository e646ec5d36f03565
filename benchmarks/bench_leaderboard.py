"""Leaderboard render time with 100k stored per-image rows (target: under 1 s of server time).

Fills a fresh database (default: SQLite in a temp folder; `--url` for PostgreSQL) through the same
`db.queries` calls a worker makes: 4 methods x 15 MVTec categories x 3 seeds = 180 jobs with all 7
metrics, category timings and ~556 per-image rows each (100k in total). Then times, after one warm-up:

- `db.results.leaderboard(...)`: the queries + the matrix (what `iad export` does);
- the LaTeX export of that matrix;
- the whole Leaderboard page as the Streamlit server runs it (`AppTest.run()` of `dashboard/app.py`:
  every query, the styled table, the efficiency table and the plotly figure).

    python benchmarks/bench_leaderboard.py [--images 100000] [--repeats 5] [--url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
              "tile", "toothbrush", "transistor", "wood", "zipper")
METHODS = {"patchcore": 0.98, "reconpatch": 0.985, "padim": 0.95, "isstad": 0.96}
SEEDS = (0, 1, 2)


def fill(n_images: int, url: str) -> tuple[int, float]:
    import numpy as np

    from ad_core.catalog import METRIC_NAMES
    from dashboard.sample_data import Image, store_job

    n_jobs = len(METHODS) * len(CATEGORIES) * len(SEEDS)
    per_job = -(-n_images // n_jobs)  # at least n_images rows in total
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    total = 0
    for method, level in METHODS.items():
        for category in CATEGORIES:
            for seed in SEEDS:
                labels = rng.random(per_job) < 0.6
                images = [Image(f"/data/mvtec/{category}/test/{'crack' if y else 'good'}/{i:04d}.png", int(y),
                                "crack" if y else "good", float(s))
                          for i, (y, s) in enumerate(zip(labels, rng.random(per_job), strict=True))]
                metrics = {m: float(np.clip(level - 0.02 * k + rng.normal(0, 0.01), 0, 1))
                           for k, m in enumerate(METRIC_NAMES)}
                store_job(method, "mvtec", "/data/mvtec", category, seed, metrics, images, preset="paper",
                          random_weights=method == "isstad", url=url)
                total += len(images)
    return total, time.perf_counter() - start


def timed(fn, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    fn()  # warm-up: imports, engine, first queries
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), max(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--url", help="database URL (default: SQLite in a temp folder)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-leaderboard-"))
    url = args.url or f"sqlite:///{tmp / 'iad.sqlite'}"
    os.environ.update(IAD_DATABASE_URL=url, IAD_HOME=str(tmp), IAD_ARTIFACTS=str(tmp / "artifacts"))

    from streamlit.testing.v1 import AppTest

    from ad_core.analysis import export
    from db import queries, results

    n, fill_s = fill(args.images, url)
    counts = queries.job_counts()
    print(f"stored {n} per-image rows in {counts['succeeded']} jobs ({fill_s:.1f} s through db.queries)")

    median, worst = timed(lambda: results.leaderboard("mvtec", "image_auroc"), args.repeats)
    board = results.leaderboard("mvtec", "image_auroc")
    print(f"leaderboard() query + matrix ({board.mean.shape[0]} rows x {board.mean.shape[1]} columns): "
          f"median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms")
    median, worst = timed(lambda: export.to_latex(board), args.repeats)
    print(f"LaTeX export: median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms")

    app = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py"), default_timeout=300)

    def page() -> None:
        app.run()
        assert not app.exception, app.exception
        assert len(app.table[0].value) == len(METHODS)

    median, worst = timed(page, args.repeats)
    verdict = "OK" if median < 1.0 else "over the 1 s target"
    print(f"Leaderboard page, full server-side run: median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms "
          f"({verdict})")


if __name__ == "__main__":
    main()
