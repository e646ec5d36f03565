"""Time of a full long-tailed demo matrix on this machine: PatchCore per class and unified PatchCore on the
10-class demo, split `long_tail:exp100`, 3 seeds, through `ad_core.runner` (the loop the workers run).

    python benchmarks/long_tail_demo.py [--root DIR] [--seeds 0 1 2] [--split long_tail:exp100]
        [--methods patchcore patchcore_unified] [--threads 2] [--image-size 256] [--json out.json]

The demo is generated (or reused) at the default size (40 training images per class, 10 good + 20
defective test images, 256 px). Prints per run: fit and predict time, peak RSS; then per method the mean
image/pixel AUROC over classes, and the total wall time of the matrix.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="where the 10-class demo is (generated if missing)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--split", default="long_tail:exp100")
    parser.add_argument("--methods", nargs="+", default=["patchcore", "patchcore_unified"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--json", help="write the per-class results here")
    args = parser.parse_args()

    import numpy as np
    import torch

    from ad_core.data import MULTICLASS_DEMO_CATEGORIES, make_demo_dataset
    from ad_core.runner import RunSpec, run
    from ad_core.splits import SplitSpec

    torch.set_num_threads(args.threads)
    root = Path(args.root or Path(tempfile.gettempdir()) / "iad-demo-multiclass")
    start = time.perf_counter()
    root = make_demo_dataset(root, categories=MULTICLASS_DEMO_CATEGORIES, image_size=args.image_size)
    print(f"demo: {root} ({len(MULTICLASS_DEMO_CATEGORIES)} classes, generated/reused in "
          f"{time.perf_counter() - start:.1f} s); split {SplitSpec.parse(args.split).label}; "
          f"{args.threads} thread(s)")
    rows, total = [], time.perf_counter()
    print(f"{'method':<20s}{'seed':>5s}{'fit s':>9s}{'predict s':>11s}{'wall s':>9s}{'peak RSS MB':>13s}")
    for method in args.methods:
        for seed in args.seeds:
            spec = RunSpec(method=method, dataset="demo", root=str(root), categories=list(MULTICLASS_DEMO_CATEGORIES),
                           preset="fast", seed=seed, split=SplitSpec.parse(args.split).to_dict())
            t0 = time.perf_counter()
            result = run(spec, keep_maps=False)
            wall = time.perf_counter() - t0
            fit = sum(u.fit_s for u in result.units)
            predict = sum(r.timings["predict_s"] for r in result.categories.values())
            rss = max(u.peak_rss_mb for u in result.units)
            print(f"{method:<20s}{seed:>5d}{fit:9.1f}{predict:11.1f}{wall:9.1f}{rss:13.0f}", flush=True)
            for category, r in result.categories.items():
                rows.append({"method": method, "seed": seed, "category": category, "n_train": r.counts["train"],
                             **{k: r.metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro")}})
    print(f"\nwhole matrix: {time.perf_counter() - total:.0f} s wall")
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        print(f"{method:<20s} image AUROC {np.mean([r['image_auroc'] for r in mine]):.3f}  "
              f"pixel AUROC {np.mean([r['pixel_auroc'] for r in mine]):.3f}  AUPRO {np.mean([r['aupro'] for r in mine]):.3f}"
              f"  (mean over classes and seeds)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
