"""PatchCore's nearest-neighbour search: exact vs the approximate scorers, speed against metric change
(issue 16, goal 2).

    python benchmarks/bench_knn.py [--mvtec-root /work/shared/data/mvtec_ad] [--demo-root DIR]
        [--cases mvtec:bottle@0.1 mvtec:bottle demo:grass@1.0] [--scorers flat pca_refine ivf ...]
        [--threads 2] [--repeats 2] [--json out.json]

Per case, PatchCore's `fast` preset (EfficientNet-Lite0, bundled ImageNet weights, seed 0; `@RATIO` sets the
coreset ratio, default 5 %) is fitted ONCE with `ad_core.runner.fit_unit`; then every scorer is put on that
same memory bank (`nn_index` and its parameters, `PatchCore._set_bank`) and the test images are scored with
`ad_core.runner.evaluate_category`, the loop the workers run, so metrics are computed in the run's
evaluation frame with the stored metric code. Scorers alternate within each round (flat, pca_refine, ivf,
flat, ...) so that a busy machine slows all alike; times are medians over rounds. A scorer spec is
`NAME[:key=value,...]`, e.g. `pca_refine:nn_pca_dim=32,nn_refine_factor=8` or `ivf:ivf_nprobe=16`.

Prints per case and scorer: what ran (the scorer's own description), predict s, img/s, kNN search s and its
share, the speed-up over exact, and image AUROC / pixel AUROC / AUPRO with their change in points.
Acceptance (goal 2): a scorer replaces exact only where every metric stays within +-0.2 pt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRICS = ("image_auroc", "pixel_auroc", "aupro")
DEFAULT_SCORERS = ("flat", "pca_refine", "pca_refine:nn_pca_dim=64,nn_refine_factor=16",
                   "pca_refine:nn_pca_dim=32,nn_refine_factor=16", "ivf", "ivf:ivf_nprobe=16")


def parse_scorer(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition(":")
    overrides: dict[str, Any] = {"nn_index": name}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = int(value)
    return text, overrides


def parse_case(text: str, mvtec_root: str, demo_root: str) -> tuple[str, str, str, float | None]:
    dataset, _, rest = text.partition(":")
    category, _, ratio = rest.partition("@")
    root = {"mvtec": mvtec_root, "demo": demo_root}[dataset]
    return dataset, root, category, float(ratio) if ratio else None


def run_case(dataset: str, root: str, category: str, ratio: float | None, scorers: list[str],
             repeats: int, threads: int) -> dict[str, Any]:
    import torch

    from ad_core.components import scoring
    from ad_core.runner import RunSpec, evaluate_category, fit_unit, plan_fit_units

    torch.set_num_threads(threads)
    overrides = {} if ratio is None else {"coreset_ratio": ratio}
    spec = RunSpec(method="patchcore", dataset=dataset, root=root, categories=[category], preset="fast",
                   overrides=overrides)
    plan = spec.prepare()
    unit = plan_fit_units("one_class", [category])[0]
    model, fitted = fit_unit(spec, plan, unit)
    bank = model.memory_bank
    search = scoring.NearestNeighbourScorer.__call__
    knn = [0.0]

    def timed_search(self: scoring.NearestNeighbourScorer, queries: Any) -> Any:
        start = time.perf_counter()
        try:
            return search(self, queries)
        finally:
            knn[0] += time.perf_counter() - start

    scoring.NearestNeighbourScorer.__call__ = timed_search  # type: ignore[method-assign]
    rows: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for text in scorers:
            _, values = parse_scorer(text)
            model.config = dataclasses.replace(plan.config, **values)
            model.config.validate()
            start = time.perf_counter()
            model._set_bank(bank)
            build_s = time.perf_counter() - start
            knn[0] = 0.0
            result = evaluate_category(spec, plan, model, category)
            row = rows.setdefault(text, {"scorer": model.scorer.description, "metrics": result.metrics,
                                         "n_images": len(result.images), "predict_s": [], "knn_s": [], "build_s": []})
            row["predict_s"].append(result.timings["predict_s"])
            row["knn_s"].append(knn[0])
            row["build_s"].append(build_s)
    scoring.NearestNeighbourScorer.__call__ = search  # type: ignore[method-assign]
    return {"case": f"{dataset}:{category}" + (f"@{ratio}" if ratio else ""), "bank": len(bank),
            "dim": int(bank.shape[1]),
            "fit_s": fitted.fit_s, "rows": rows}


def print_case(case: dict[str, Any]) -> None:
    rows = case["rows"]
    first = next(iter(rows.values()))
    print(f"\n{case['case']}: bank {case['bank']:,} x {case['dim']}, {first['n_images']} test images, "
          f"fit {case['fit_s']:.0f} s; medians over {len(first['predict_s'])} rounds")
    header = ("| scorer | predict s | img/s | kNN s | kNN % | kNN speed-up | build s | "
              + " | ".join(f"{m} (Δ pt)" for m in METRICS) + " |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    exact = rows.get("flat")
    for text, row in rows.items():
        predict, knn = statistics.median(row["predict_s"]), statistics.median(row["knn_s"])
        speed = "" if exact is None else f"{statistics.median(exact['knn_s']) / knn:.2f}x"
        cells = []
        for m in METRICS:
            value = row["metrics"].get(m)
            delta = "" if exact is None or value is None else f" ({100 * (value - exact['metrics'][m]):+.2f})"
            cells.append("–" if value is None else f"{value:.4f}{delta}")
        print(f"| {text} ({row['scorer']}) | {predict:.2f} | {row['n_images'] / predict:.1f} | {knn:.2f} | "
              f"{100 * knn / predict:.0f} % | {speed} | {statistics.median(row['build_s']):.2f} | "
              + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mvtec-root", default="/work/shared/data/mvtec_ad")
    parser.add_argument("--demo-root", help="default: the generated demo under ~/.iad (or IAD_HOME)")
    parser.add_argument("--cases", nargs="+", default=["mvtec:bottle@0.1", "mvtec:bottle", "demo:grass@1.0"])
    parser.add_argument("--scorers", nargs="+", default=list(DEFAULT_SCORERS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args()
    if "flat" not in args.scorers:
        args.scorers.insert(0, "flat")  # the reference every other row is compared with
    demo_root = args.demo_root
    if demo_root is None and any(c.startswith("demo:") for c in args.cases):
        from ad_core.data import make_demo_dataset
        from ad_core.home import demo_root as default_demo_root

        demo_root = str(make_demo_dataset(default_demo_root()))
    cases = []
    for text in args.cases:
        case = run_case(*parse_case(text, args.mvtec_root, demo_root or ""), args.scorers, args.repeats,
                        args.threads)
        print_case(case)
        cases.append(case)
    if args.json:
        Path(args.json).write_text(json.dumps(cases, indent=2))


if __name__ == "__main__":
    main()
