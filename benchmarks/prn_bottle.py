"""PRN vs PatchCore (both preset `fast`, bundled EfficientNet-Lite0 weights) on MVTec AD bottle with the DRA
few-shot split `few_shot:k=10` (general setting), seeds 0 1 2, through `ad_core.runner.run`.

    python benchmarks/prn_bottle.py [--root /work/shared/data/mvtec_ad] [--seeds 0 1 2] [--threads 1]
        [--methods prn patchcore] [--split few_shot:k=10] [--set prn:epochs=8 ...] [--json out.json]

For every seed both methods run on the same split (the seed draws the 10 labelled anomalies, which leave the
test set; PatchCore, a one-class method, simply does not see them). Every (method, seed) runs in its own
child process so that "peak RSS" belongs to that run alone. Prints image AUROC, pixel AUROC, AUPRO, fit time
(wall), the child's CPU time and peak RSS per run, then mean ± std (sample std, n - 1) over the seeds.

Note: the pixel metrics are computed in the runner's default evaluation frame (`ad_core.frame`, full:256: the
full image at 256 x 256 px for both methods; PRN fast's 128 px map is upsampled into it, PatchCore's 224 px crop
of a 256 px resize is pasted back with its cut-away border at the image's lowest score), against masks resized
with nearest neighbour, as every leaderboard entry is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METHODS = ("prn", "patchcore")
COLUMNS = (("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("aupro", "AUPRO"))


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """["prn:epochs=8", ...] -> {"prn": {"epochs": "8"}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        method, sep1, rest = item.partition(":")
        key, sep2, value = rest.partition("=")
        if not (sep1 and sep2) or method not in METHODS:
            raise SystemExit(f"--set expects METHOD:key=value with METHOD in {METHODS}, got {item!r}")
        out.setdefault(method, {})[key.strip()] = value.strip()
    return out


def child(args: argparse.Namespace) -> None:
    """Run one method and seed through the runner and write its summary to args.out."""
    import torch

    from ad_core.runner import RunSpec, run
    from ad_core.splits import SplitSpec

    torch.set_num_threads(args.threads)
    spec = RunSpec(
        method=args.child, dataset="mvtec", root=args.root, categories=[args.category], preset="fast",
        seed=args.seed, overrides=json.loads(args.overrides), split=SplitSpec.parse(args.split).to_dict(),
    )  # fmt: skip
    start, cpu = time.perf_counter(), time.process_time()

    def progress(fraction: float, message: str) -> None:
        print(f"  [{args.child} s{args.seed} {time.perf_counter() - start:6.1f}s {100 * fraction:5.1f}%] {message}", flush=True)

    result = run(spec, progress=progress)
    category = result.categories[args.category]
    Path(args.out).write_text(json.dumps({
        "metrics": category.metrics,
        "timings": category.timings,
        "cpu_s": round(time.process_time() - cpu, 1),
        "config": result.config,
        "weights_source": result.provenance["weights_source"],
        "counts": category.counts,
        "train_anomalies": category.train_anomalies,
        "split": category.split,
        "details": result.units[0].details,
    }, indent=1, default=str))  # fmt: skip


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return mean, std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/work/shared/data/mvtec_ad")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--split", default="few_shot:k=10")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1 = the one-core budget)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--set", action="append", default=[], help="METHOD:key=value config override (repeatable)")
    parser.add_argument("--json", help="write every run's summary here")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.root)
    if root.name == args.category and (root / "train").is_dir():
        args.root = str(root.parent)
    if args.child:
        child(args)
        return

    overrides = parse_overrides(args.set)
    results: dict[str, dict[int, dict]] = {m: {} for m in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for method in args.methods:
                out = Path(tmp) / f"{method}_{seed}.json"
                command = [
                    sys.executable, __file__, "--child", method, "--out", str(out), "--root", args.root,
                    "--category", args.category, "--seed", str(seed), "--threads", str(args.threads),
                    "--split", args.split, "--overrides", json.dumps(overrides.get(method, {})),
                ]  # fmt: skip
                print(f"== {method} seed {seed} (preset fast, {args.split}, {args.threads} thread(s))", flush=True)
                subprocess.run(command, check=True)
                results[method][seed] = json.loads(out.read_text())

    first = next(iter(next(iter(results.values())).values()))
    print(f"\nMVTec AD {args.category}, split {args.split}, seeds {args.seeds}, weights: {first['weights_source']}")
    print(f"test images per seed: {first['counts']['test']} ({first['counts']['test_anomalous']} anomalous)")
    header = f"{'method':<10s}{'seed':>6s}" + "".join(f"{label:>10s}" for _, label in COLUMNS)
    header += f"{'fit s':>9s}{'CPU s':>9s}{'peak RSS MB':>13s}"
    print(header)
    print("-" * len(header))
    for method, by_seed in results.items():
        for seed, r in by_seed.items():
            m, t = r["metrics"], r["timings"]
            print(f"{method:<10s}{seed:>6d}" + "".join(f"{m[key]:10.4f}" for key, _ in COLUMNS)
                  + f"{t['fit_s']:9.1f}{r['cpu_s']:9.1f}{t['peak_rss_mb']:13.1f}")  # fmt: skip
    print("-" * len(header))
    for method, by_seed in results.items():
        runs = list(by_seed.values())
        cells = []
        for key, _ in COLUMNS:
            mean, std = mean_std([r["metrics"][key] for r in runs])
            cells.append(f"{mean:.4f}±{std:.4f}")
        fit = mean_std([r["timings"]["fit_s"] for r in runs])
        cpu = mean_std([r["cpu_s"] for r in runs])
        rss = max(r["timings"]["peak_rss_mb"] for r in runs)
        print(f"{method:<10s}{'mean':>6s} " + " ".join(f"{c:>15s}" for c in cells)
              + f"  fit {fit[0]:.0f}±{fit[1]:.0f} s, CPU {cpu[0]:.0f}±{cpu[1]:.0f} s, peak RSS <= {rss:.0f} MB")  # fmt: skip
    if {"prn", "patchcore"} <= set(results):
        for key, label in COLUMNS[1:]:
            diff = [results["prn"][s]["metrics"][key] - results["patchcore"][s]["metrics"][key] for s in args.seeds]
            mean, std = mean_std(diff)
            print(f"PRN - PatchCore {label}: {mean:+.4f} ± {std:.4f} (per seed: {', '.join(f'{d:+.4f}' for d in diff)})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
