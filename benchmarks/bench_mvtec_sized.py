"""The whole benchmark on one machine: PatchCore over 15 classes of MVTec AD's own sizes (issue 16, goal 5).

    python benchmarks/bench_mvtec_sized.py [--root DIR] [--scorer flat|pca_refine|ivf] [--threads 2]
        [--preset fast] [--device cpu|cuda] [--coreset-ratio R] [--categories N] [--json out.json]

MVTec AD itself is not on this machine (only bottle), so the demo generator makes 15 classes of real photos
with synthetic defects and exact masks, each with the image counts of one MVTec AD class (train / test good
/ test defective, e.g. bottle 209 / 20 / 63, hazelnut 391 / 40 / 70; 3,629 training and 1,725 test images
in all), at 256 px like the MVTec AD preprocessing. The dataset is generated once under `--root` (default
`~/.cache/iad-workbench/mvtec-sized-demo`); generation is not part of the benchmark time.

The run is ONE `ad_core.runner.run` over the 15 classes, the loop the workers run: per class a fit (patch
features, coreset) and an evaluation (scoring the test images, then every metric including AUPRO in the
256x256 evaluation frame). Per-stage times come from wrapping the stage functions: `collect_patch_features`
(features), `approximate_greedy_coreset` (coreset), `PatchCore.predict` (inference: backbone + kNN, with the
kNN search timed separately) and `metrics.compute_all` (metrics); "other" is the rest of the wall time (image
decoding, map framing). The goal: under 20 minutes on the 2-core CPU machine with the `fast` preset.

On a GPU worker (`--device cuda --preset paper`: WideResNet-50) the same matrix runs with a sampler of
`nvidia-smi` utilisation (every 0.5 s) and reports mean/median GPU utilisation and img/s per stage.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# MVTec AD (Bergmann et al., CVPR 2019 / IJCV 2021): per class, training images and test good / defective.
MVTEC_AD_SIZES = {
    "bottle": (209, 20, 63), "cable": (224, 58, 92), "capsule": (219, 23, 109), "carpet": (280, 28, 89),
    "grid": (264, 21, 57), "hazelnut": (391, 40, 70), "leather": (245, 32, 92), "metal_nut": (220, 22, 93),
    "pill": (267, 26, 141), "screw": (320, 41, 119), "tile": (230, 33, 84), "toothbrush": (60, 12, 30),
    "transistor": (213, 60, 40), "wood": (247, 19, 60), "zipper": (240, 32, 119),
}


def make_dataset(root: Path, n_categories: int) -> tuple[Path, dict[str, str]]:
    """The 15 photo classes with MVTec AD's counts, in MVTec AD's class order; returns (root, photo -> MVTec
    class whose counts it has) for the first `n_categories` (all 15 are generated, so that a quick check
    with fewer classes uses the same dataset)."""
    from ad_core.data import DEMO_PHOTO_CATEGORIES, make_demo_dataset

    pairs = dict(zip(DEMO_PHOTO_CATEGORIES, MVTEC_AD_SIZES, strict=True))
    sizes = {photo: MVTEC_AD_SIZES[mvtec] for photo, mvtec in pairs.items()}
    start = time.perf_counter()
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        if time.perf_counter() - last[0] > 10:
            last[0] = time.perf_counter()
            print(f"  generating: {100 * fraction:.0f} % ({message})", flush=True)

    made = make_demo_dataset(root, categories=tuple(pairs), image_size=256,
                             n_train={c: s[0] for c, s in sizes.items()},
                             n_test_good={c: s[1] for c, s in sizes.items()},
                             n_test_defect={c: s[2] for c, s in sizes.items()}, progress=progress)
    print(f"dataset: {made} ({time.perf_counter() - start:.0f} s to generate or find)", flush=True)
    return made, dict(list(pairs.items())[:n_categories])


class StageClock:
    """Accumulates wall seconds per (stage, category) by wrapping functions; `category` is set by the run's
    progress messages (they start with the class name)."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.category = "?"

    def wrap(self, owner: Any, name: str, stage: str) -> Callable[[], None]:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[self.category][stage] += time.perf_counter() - start

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)


class GpuSampler(threading.Thread):
    """nvidia-smi utilisation every `interval` s while the run lasts (GPU workers only)."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples, self.stopped = interval, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                util, memory = out.stdout.splitlines()[0].split(",")
                self.samples.append((float(util), float(memory)))
            self.stopped.wait(self.interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("~/.cache/iad-workbench/mvtec-sized-demo").expanduser())
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--scorer", default="flat", help="PatchCore nn_index (flat = exact)")
    parser.add_argument("--coreset-ratio", type=float, help="default: the preset's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--categories", type=int, default=15, help="the first N classes only (a quick check)")
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args()

    import torch

    from ad_core import metrics
    from ad_core.components import scoring
    from ad_core.methods import patchcore
    from ad_core.runner import RunSpec, run

    torch.set_num_threads(args.threads)
    root, pairs = make_dataset(args.root, args.categories)
    overrides: dict[str, Any] = {"nn_index": args.scorer}
    if args.coreset_ratio is not None:
        overrides["coreset_ratio"] = args.coreset_ratio
    spec = RunSpec(method="patchcore", dataset="demo", root=str(root), categories=list(pairs), preset=args.preset,
                   device=args.device, overrides=overrides)
    clock = StageClock()
    restore = [
        clock.wrap(patchcore, "collect_patch_features", "features"),
        clock.wrap(patchcore, "approximate_greedy_coreset", "coreset"),
        clock.wrap(patchcore.PatchCore, "predict", "inference"),
        clock.wrap(scoring.NearestNeighbourScorer, "__call__", "knn"),
        clock.wrap(metrics, "compute_all", "metrics"),
    ]
    last_print = [0.0]

    def progress(fraction: float, message: str) -> None:
        name = message.split(":", 1)[0]
        if name in pairs:
            clock.category = name
        if time.perf_counter() - last_print[0] > 30:
            last_print[0] = time.perf_counter()
            print(f"  {100 * fraction:5.1f} % {message}", flush=True)

    sampler = GpuSampler() if args.device.startswith("cuda") and shutil.which("nvidia-smi") else None
    if sampler:
        sampler.start()
    start = time.perf_counter()
    result = run(spec, progress, keep_maps=False)
    wall = time.perf_counter() - start
    if sampler:
        sampler.stopped.set()
        sampler.join()
    for undo in restore:
        undo()

    stages = ("features", "coreset", "inference", "knn", "metrics")
    print(f"\nPatchCore {args.preset} ({result.config['backbone']}, coreset {result.config['coreset_ratio']}, "
          f"scorer {args.scorer}), {args.threads} threads, device {args.device}; "
          f"{len(pairs)} classes of MVTec AD's sizes at 256 px")
    header = ("| class (sizes of) | train | test | features s | coreset s | inference s (kNN s) | metrics s | "
              "other s | total s | img/s | image AUROC | pixel AUROC | AUPRO |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    rows, totals = [], defaultdict(float)
    for photo, mvtec in pairs.items():
        cat = result.categories[photo]
        t = {s: clock.seconds[photo].get(s, 0.0) for s in stages}
        total = cat.timings["fit_s"] + cat.timings["predict_s"] + t["metrics"]
        other = total - t["features"] - t["coreset"] - t["inference"] - t["metrics"]
        for key, value in (*t.items(), ("other", other), ("total", total)):
            totals[key] += value
        totals["train"] += cat.counts["train"]
        totals["test"] += cat.counts["test"]
        m = cat.metrics
        rows.append({"class": photo, "sizes_of": mvtec, **t, "other": other, "total": total, **cat.counts,
                     "images_per_s": cat.timings["images_per_s"], "metrics": m})
        print(f"| {photo} ({mvtec}) | {cat.counts['train']} | {cat.counts['test']} | {t['features']:.1f} | "
              f"{t['coreset']:.1f} | {t['inference']:.1f} ({t['knn']:.1f}) | {t['metrics']:.1f} | {other:.1f} | "
              f"{total:.1f} | {cat.timings['images_per_s']:.1f} | {m['image_auroc']:.3f} | {m['pixel_auroc']:.3f} | "
              f"{m['aupro']:.3f} |")
    mean = {k: statistics.mean(r["metrics"][k] for r in rows) for k in ("image_auroc", "pixel_auroc", "aupro")}
    print(f"| **all** | {totals['train']:.0f} | {totals['test']:.0f} | {totals['features']:.0f} | "
          f"{totals['coreset']:.0f} | {totals['inference']:.0f} ({totals['knn']:.0f}) | {totals['metrics']:.0f} | "
          f"{totals['other']:.0f} | {totals['total']:.0f} | {totals['test'] / totals['inference']:.1f} | "
          f"{mean['image_auroc']:.3f} | {mean['pixel_auroc']:.3f} | {mean['aupro']:.3f} |")
    print(f"\nwall clock of the run: {wall:.0f} s ({wall / 60:.1f} min; goal on 2 CPU cores: < 20 min); "
          f"peak RSS {max(u.peak_rss_mb for u in result.units):.0f} MB")
    gpu = None
    if sampler:
        utils = [u for u, _ in sampler.samples]
        gpu = {"samples": len(utils), "mean_util": statistics.mean(utils) if utils else None,
               "median_util": statistics.median(utils) if utils else None,
               "max_memory_mb": max((m for _, m in sampler.samples), default=None)}
        print(f"GPU utilisation: mean {gpu['mean_util']:.0f} %, median {gpu['median_util']:.0f} % over "
              f"{gpu['samples']} samples; max memory {gpu['max_memory_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"wall_s": wall, "config": result.config, "rows": rows,
                                               "totals": totals, "gpu": gpu, "threads": args.threads}, indent=2))


if __name__ == "__main__":
    main()
