"""PatchCore's embedding size: official pooling (always 1024 + 1024) vs "never pool up" (issue 16, goal 1).

    python benchmarks/bench_embed_dim.py [--mvtec-root /work/shared/data/mvtec_ad] [--demo-root DIR]
        [--cases mvtec:bottle demo:grass demo:grass@1.0] [--threads 1] [--repeats 1] [--json out.json]

Both sides are PatchCore's `fast` preset (EfficientNet-Lite0, bundled ImageNet weights, 5 % coreset, seed 0)
through `ad_core.runner.run`, the loop the workers run; only `embed_dim_policy` differs. With Lite0 the
official code pools stages of 360 and 1008 values up to 1024 each and then to 512 each; never pooling up
stores stage 2 in its 360 values with the official distances (872 in all). A case `DATASET:CATEGORY@RATIO`
overrides the coreset ratio: `@1.0` keeps every training patch, so no random coreset draw differs between the
sides and any metric difference is the embedding's alone (the coreset's random projection has the
embedding's size, so at 5 % the two sides draw different coresets from the same seed). Every run is its own child process, and the two policies alternate (official, ours, official,
ours, ...) so that a busy machine slows both alike. Metrics are deterministic (same seed), so repeats only
refine the times; the table shows the median time per side and the ratio of medians.

Prints, per case: embedding dim, image AUROC, pixel AUROC, AUPRO (and their difference in points), fit and
predict seconds, images/s and the nearest-neighbour search's share of predict time; then, for the first case,
both policies fitted in one process and their predict alternated (`--inference-repeats`), the cleaner
speed-up on a busy machine. Acceptance (goal 1):
every metric within +-0.2 pt. The demo's hardest class for PatchCore is grass (docs/reconpatch-study.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

POLICIES = ("official", "never_pool_up")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def child(args: argparse.Namespace) -> None:
    """One PatchCore run through the runner; writes metrics, timings and the kNN search time to args.out."""
    import torch

    from ad_core.components import scoring
    from ad_core.runner import RunSpec, run

    torch.set_num_threads(args.threads)
    knn_s = [0.0]
    search = scoring.NearestNeighbourScorer.__call__

    def timed_search(self: scoring.NearestNeighbourScorer, queries):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        try:
            return search(self, queries)
        finally:
            knn_s[0] += time.perf_counter() - start

    scoring.NearestNeighbourScorer.__call__ = timed_search  # type: ignore[method-assign]
    overrides: dict[str, object] = {"embed_dim_policy": args.policy}
    if args.coreset_ratio is not None:
        overrides["coreset_ratio"] = args.coreset_ratio
    spec = RunSpec(method="patchcore", dataset=args.dataset, root=args.root, categories=[args.category],
                   preset="fast", seed=args.seed, overrides=overrides)
    result = run(spec)
    category = result.categories[args.category]
    unit = result.units[0]
    Path(args.out).write_text(json.dumps({
        "metrics": category.metrics, "timings": category.timings, "knn_s": knn_s[0],
        "fit_s": unit.fit_s, "embedding_dim": unit.details["embedding_dim"],
        "weights_source": result.provenance["weights_source"],
    }))


def time_inference(args: argparse.Namespace) -> None:
    """Both policies fitted in one process, then their predict over the test images alternated
    `args.inference_repeats` times: the speed-up without the noise of separate runs on a busy machine."""
    import torch

    from ad_core.components import scoring
    from ad_core.methods.patchcore import PatchCore
    from ad_core.runner import RunSpec, _loader

    torch.set_num_threads(args.threads)
    models, loaders = {}, {}
    for policy in POLICIES:
        spec = RunSpec(method="patchcore", dataset=args.dataset, root=args.root, categories=[args.category],
                       preset="fast", seed=args.seed, overrides={"embed_dim_policy": policy})
        plan = spec.prepare()
        torch.manual_seed(args.seed)
        model = PatchCore(plan.config)
        model.fit(_loader(spec, plan.splits[args.category].train, model.preprocess(), plan.config.batch_size,
                          train=True))
        models[policy] = model
        loaders[policy] = list(_loader(spec, plan.splits[args.category].test, model.preprocess(),
                                       plan.config.batch_size, train=False))
    times: dict[str, list[tuple[float, float]]] = {p: [] for p in POLICIES}
    search = scoring.NearestNeighbourScorer.__call__
    for _ in range(args.inference_repeats):
        for policy, model in models.items():
            knn = [0.0]

            def timed_search(self, queries, knn=knn):  # noqa: ANN001, ANN202
                start = time.perf_counter()
                try:
                    return search(self, queries)
                finally:
                    knn[0] += time.perf_counter() - start

            scoring.NearestNeighbourScorer.__call__ = timed_search  # type: ignore[method-assign]
            start = time.perf_counter()
            for batch in loaders[policy]:
                model.predict(batch["image"])
            times[policy].append((time.perf_counter() - start, knn[0]))
            scoring.NearestNeighbourScorer.__call__ = search  # type: ignore[method-assign]
    n_images = sum(len(b["image"]) for b in loaders["official"])
    print(f"\ninference on {args.dataset}:{args.category} ({n_images} test images, banks of "
          f"{len(models['official'].memory_bank):,}), {args.inference_repeats} alternating rounds, medians")
    header = f"{'policy':<15s}{'dim':>5s}{'predict s':>11s}{'img/s':>8s}{'kNN s':>8s}{'kNN %':>7s}"
    print(header)
    print("-" * len(header))
    med = {}
    for policy in POLICIES:
        predict = median([t for t, _ in times[policy]])
        knn = median([k for _, k in times[policy]])
        med[policy] = (predict, knn)
        print(f"{policy:<15s}{models[policy].features.dim:>5d}{predict:11.2f}{n_images / predict:8.2f}{knn:8.2f}"
              f"{100 * knn / predict:7.1f}")
    (p_old, k_old), (p_new, k_new) = med["official"], med["never_pool_up"]
    print(f"speed-up: predict {p_old / p_new:.2f}x, kNN search {k_old / k_new:.2f}x")


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mvtec-root", default="/work/shared/data/mvtec_ad")
    parser.add_argument("--demo-root", help="default: the generated demo under ~/.iad (or IAD_HOME)")
    parser.add_argument("--cases", nargs="+", default=["mvtec:bottle", "demo:grass", "demo:grass@1.0"],
                        help="DATASET:CATEGORY[@CORESET_RATIO]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per policy and case (interleaved)")
    parser.add_argument("--json", help="write every run's numbers here")
    parser.add_argument("--inference-repeats", type=int, default=3,
                        help="alternating predict rounds of the in-process timing on the first case (0: skip)")
    parser.add_argument("--time-inference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--category", help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--coreset-ratio", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.time_inference:
        time_inference(args)
        return

    roots = {"mvtec": args.mvtec_root}
    if any(case.startswith("demo:") for case in args.cases):
        if args.demo_root is None:
            from ad_core.data import make_demo_dataset
            from ad_core.home import demo_root

            args.demo_root = str(make_demo_dataset(demo_root()))
        roots["demo"] = args.demo_root

    runs: dict[str, dict[str, list[dict]]] = {case: {p: [] for p in POLICIES} for case in args.cases}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for case in args.cases:
                dataset, _, rest = case.partition(":")
                category, _, ratio = rest.partition("@")
                for policy in POLICIES:
                    out = Path(tmp) / "run.json"
                    command = [
                        sys.executable, __file__, "--child", "--dataset", dataset, "--root", roots[dataset],
                        "--category", category, "--policy", policy, "--seed", str(args.seed),
                        "--threads", str(args.threads), "--out", str(out),
                        *(["--coreset-ratio", ratio] if ratio else []),
                    ]  # fmt: skip
                    print(f"== {case} {policy} (repeat {repeat + 1}/{args.repeats})", flush=True)
                    subprocess.run(command, check=True)
                    runs[case][policy].append(json.loads(out.read_text()))

    print(f"\nPatchCore fast, seed {args.seed}, {args.threads} torch thread(s), {args.repeats} interleaved run(s) "
          "per side; times are medians")
    header = (f"{'case':<19s}{'policy':<15s}{'dim':>5s}{'I-AUROC':>9s}{'P-AUROC':>9s}{'AUPRO':>9s}"
              f"{'fit s':>8s}{'predict s':>11s}{'img/s':>8s}{'kNN s':>8s}{'kNN %':>7s}")
    print(header)
    print("-" * len(header))
    for case, by_policy in runs.items():
        for policy, results in by_policy.items():
            m = results[0]["metrics"]
            predict = median([r["timings"]["predict_s"] for r in results])
            knn = median([r["knn_s"] for r in results])
            fit = median([r["fit_s"] for r in results])
            print(f"{case:<19s}{policy:<15s}{results[0]['embedding_dim']:>5d}{m['image_auroc']:9.4f}"
                  f"{m['pixel_auroc']:9.4f}{m['aupro']:9.4f}{fit:8.1f}{predict:11.2f}"
                  f"{median([r['timings']['images_per_s'] for r in results]):8.2f}{knn:8.2f}{100 * knn / predict:7.1f}")
        old, new = by_policy["official"], by_policy["never_pool_up"]
        deltas = {k: 100 * (new[0]["metrics"][k] - old[0]["metrics"][k]) for k in METRICS}
        ok = all(abs(d) <= 0.2 + 1e-9 for d in deltas.values())
        speed = median([r["timings"]["predict_s"] for r in old]) / median([r["timings"]["predict_s"] for r in new])
        knn_speed = median([r["knn_s"] for r in old]) / median([r["knn_s"] for r in new])
        print(f"{case:<19s}{'Δ (pt), ratio':<15s}{'':>5s}" + "".join(f"{deltas[k]:+9.2f}" for k in METRICS)
              + f"   predict {speed:.2f}x faster, kNN {knn_speed:.2f}x; within ±0.2 pt: {'yes' if ok else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    if args.inference_repeats > 0:
        dataset, _, rest = args.cases[0].partition(":")
        subprocess.run([sys.executable, __file__, "--time-inference", "--dataset", dataset, "--root", roots[dataset],
                        "--category", rest.partition("@")[0], "--seed", str(args.seed), "--threads",
                        str(args.threads), "--inference-repeats", str(args.inference_repeats)], check=True)


if __name__ == "__main__":
    main()
