"""LTAD next to unified PatchCore on a long-tailed split of the 10-class demo, 3 seeds, through `ad_core.runner`
(the loop the workers run); prints head / medium / tail group means with `ad_core.analysis.imbalance`.

    python benchmarks/ltad_demo.py [--root DIR] [--seeds 0 1 2] [--split long_tail:exp100]
        [--methods ltad patchcore_unified] [--n-train 120] [--image-size 128] [--threads 2]
        [--set key=value ...] [--json out.json]

Demo size (documented, smaller than the default demo so that the matrix fits a busy 2-core CPU): 120
training images per class (so that exp100's head class has more than 100 images and the literature's "many"
group is not empty: 120, 72, 43, 25, 15, 9, 5, 3, 1, 1), 10 good + 20 defective test images per class, 128 px,
and both methods run with resize = crop = 128 (`--image-size`); everything else is each method's `fast`
preset (`--set` applies to LTAD only). The `fast` LTAD uses a RANDOM foundation model: its rows are labelled
with the weights source, "random foundation model (NOT pretrained)".

Groups: the long-tail literature's many > 100 / medium 20-100 / few < 20 training images per class (Liu et
al., CVPR 2019), and tertiles of the split's own counts. A class's count depends on the seed (the split ranks
classes with the run's seed), so groups are formed per seed and averaged over seeds afterwards
(`ad_core.analysis.imbalance.group_table`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def random_source(weights_source: str) -> bool:
    """Any random part (backbone or foundation model) makes a result random-weights."""
    return "NOT pretrained" in weights_source


def group_tables(rows: list[dict], metric: str, split_label: str):
    """(literature, tertiles) GroupBoards of `metric` from the per-class rows."""
    import pandas as pd

    from ad_core.analysis.imbalance import LITERATURE, TERTILES, Points, group_table

    frame = pd.DataFrame([{
        "variant": r["variant"], "method": r["method"], "preset": "fast", "config_hash": r["method"],
        "random_weights": r["random_weights"], "category": r["category"], "seed": r["seed"],
        "n_train": float(r["n_train"]), "value": r[metric], "job_id": r["job"],
    } for r in rows if r[metric] is not None])
    counts = frame.drop_duplicates(["category", "seed"])[["category", "seed", "n_train"]].reset_index(drop=True)
    points = Points(frame, counts, "demo (10 classes)", [], metric, None, None, split_label, "")
    return group_table(points, LITERATURE), group_table(points, TERTILES)


def print_board(board, title: str) -> None:
    from ad_core.analysis.imbalance import COLUMNS

    print(f"\n{title}\n  {board.grouping.describe()}")
    sizes = ", ".join(f"{g}: {lo}" + (f"-{hi}" if hi != lo else "") for g, (lo, hi) in board.group_sizes.items())
    print(f"  classes per group and seed: {sizes}")
    print(f"  {'variant':<95s}" + "".join(f"{c:>15s}" for c in COLUMNS))
    for variant in board.mean.index:
        cells = []
        for c in COLUMNS:
            m, s = board.mean.at[variant, c], board.std.at[variant, c]
            cells.append("–" if m != m else (f"{m:.3f} ± {s:.3f}" if s == s else f"{m:.3f}"))
        print(f"  {variant:<95s}" + "".join(f"{x:>15s}" for x in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="where the demo is (generated if missing)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--split", default="long_tail:exp100")
    parser.add_argument("--methods", nargs="+", default=["ltad", "patchcore_unified"])
    parser.add_argument("--n-train", type=int, default=120)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="LTAD config override key=value")
    parser.add_argument("--json", help="write the per-class results here")
    args = parser.parse_args()

    import numpy as np
    import torch

    from ad_core.data import MULTICLASS_DEMO_CATEGORIES, make_demo_dataset
    from ad_core.runner import RunSpec, run
    from ad_core.splits import SplitSpec

    torch.set_num_threads(args.threads)
    size = args.image_size
    root = Path(args.root or Path(tempfile.gettempdir()) / f"iad-demo-multiclass-n{args.n_train}-{size}px")
    start = time.perf_counter()
    root = make_demo_dataset(root, categories=MULTICLASS_DEMO_CATEGORIES, n_train=args.n_train, image_size=size)
    split = SplitSpec.parse(args.split)
    print(f"demo: {root} ({len(MULTICLASS_DEMO_CATEGORIES)} classes, {args.n_train} train images each before the "
          f"split, {size} px; generated/reused in {time.perf_counter() - start:.1f} s); split {split.label}; "
          f"{args.threads} thread(s)")
    ltad_overrides = parse_overrides(args.set)
    rows, units, total = [], [], time.perf_counter()
    print(f"{'method':<20s}{'seed':>5s}{'fit s':>9s}{'predict s':>11s}{'wall s':>9s}{'peak RSS MB':>13s}  weights")
    for job, (method, seed) in enumerate((m, s) for s in args.seeds for m in args.methods):
        overrides = {"resize": size, "crop": size, **(ltad_overrides if method == "ltad" else {})}
        spec = RunSpec(method=method, dataset="demo", root=str(root), categories=list(MULTICLASS_DEMO_CATEGORIES),
                       preset="fast", seed=seed, split=split.to_dict(), overrides=overrides)
        t0 = time.perf_counter()
        result = run(spec, keep_maps=False)
        wall = time.perf_counter() - t0
        unit = result.units[0]
        source = result.provenance["weights_source"]
        predict = sum(r.timings["predict_s"] for r in result.categories.values())
        print(f"{method:<20s}{seed:>5d}{unit.fit_s:9.1f}{predict:11.1f}{wall:9.1f}{unit.peak_rss_mb:13.0f}  {source}",
              flush=True)
        details = {k: v for k, v in unit.details.items() if k in ("variant", "tail_augmentation", "log")}
        units.append({"method": method, "seed": seed, "fit_s": unit.fit_s, "wall_s": round(wall, 1),
                      "weights_source": source, **details})
        if "tail_augmentation" in details:
            print(f"    tail augmentation: {details['tail_augmentation']['synthetic_maps']}; "
                  f"phase timings {details.get('log', {}).get('timings')}")
        variant = f"{method} [{source}]"
        for category, r in result.categories.items():
            rows.append({"job": job, "method": method, "variant": variant, "random_weights": random_source(source),
                         "seed": seed, "category": category, "n_train": r.counts["train"],
                         **{k: r.metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro")}})
    print(f"\nwhole matrix: {time.perf_counter() - total:.0f} s wall")
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        fits = [u["fit_s"] for u in units if u["method"] == method]
        print(f"{method:<20s} image AUROC {np.mean([r['image_auroc'] for r in mine]):.3f}  "
              f"pixel AUROC {np.mean([r['pixel_auroc'] for r in mine]):.3f}  "
              f"AUPRO {np.mean([r['aupro'] for r in mine]):.3f}  (mean over classes and seeds); "
              f"fit {np.mean(fits):.0f} s per seed")
    for metric in ("image_auroc", "pixel_auroc"):
        literature, tertiles = group_tables(rows, metric, split.label)
        print_board(literature, f"{metric}: mean ± std over seeds of the per-seed group mean (literature groups)")
        print_board(tertiles, f"{metric}: same, tertile groups")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "units": units}, indent=1, default=str))


if __name__ == "__main__":
    main()
