"""Does ReConPatch's representation learning earn its place? A controlled study on one category.

    python benchmarks/reconpatch_study.py [--dataset demo --root DIR --category grass] [--seed 0] [--threads 2]
        [--variants pc_5 pc_1 rc_1 rc_5 rc_1_untrained ...] [--frame full:256] [--json out.json]

Variants (every one the `fast` preset of its method, bundled EfficientNet-Lite0 weights, one seed, through
`ad_core.runner.run`, the loop the workers run):

- `pc_5`: PatchCore fast (5 % coreset); `pc_1`: PatchCore at ReConPatch's 1 % (equal memory-bank size);
- `rc_1`: ReConPatch fast (1 % coreset of f(p)); `rc_5`: ReConPatch at PatchCore fast's 5 %;
- `rc_1_untrained`: ReConPatch with epochs = 0, i.e. f stays at its orthogonal initialisation (a random
  projection of PatchCore's space): the difference to `rc_1` is what training f adds;
- `rc_1_lr*`, `rc_1_e*`: learning-rate and epoch-count variants used to choose the `fast` preset.

Per ReConPatch variant it prints the mean relaxed-contrastive loss of the first and last epoch, and the loss
on a fixed probe batch with the initial target's pseudo-labels before and after training. The training loss is
measured against pseudo-labels from the moving EMA target, so it is not a fixed objective (it can rise while the
labels densify); the probe loss is.

The default category is the demo's hardest class for PatchCore (grass); the `fast` preset is chosen here and
then checked on MVTec AD bottle (the acceptance test's category) without further change.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "pc_5": ("patchcore", {}),
    "pc_1": ("patchcore", {"coreset_ratio": 0.01}),
    "rc_1": ("reconpatch", {}),
    "rc_5": ("reconpatch", {"coreset_ratio": 0.05}),
    "rc_1_untrained": ("reconpatch", {"epochs": 0}),
    "rc_5_untrained": ("reconpatch", {"epochs": 0, "coreset_ratio": 0.05}),
    "rc_1_lr2.5e-4": ("reconpatch", {"lr": 2.5e-4}),
    "rc_1_lr2.5e-3": ("reconpatch", {"lr": 2.5e-3}),
    "rc_1_e32": ("reconpatch", {"epochs": 32}),
    "rc_1_e4": ("reconpatch", {"epochs": 4}),
}
DEFAULT_VARIANTS = ("pc_5", "pc_1", "rc_1", "rc_5", "rc_1_untrained", "rc_5_untrained")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--root", help="dataset root (default for demo: a generated demo under ~/.iad or IAD_HOME)")
    parser.add_argument("--category", default="grass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frame", default=None, help="evaluation frame (default: the runner's default)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", help="write every variant's metrics, timings and loss history here")
    args = parser.parse_args()

    import torch

    from ad_core.runner import RunSpec, run

    torch.set_num_threads(args.threads)
    root = args.root
    if root is None and args.dataset == "demo":
        from ad_core.data import make_demo_dataset
        from ad_core.home import demo_root

        root = str(make_demo_dataset(demo_root()))
    if root is None:
        raise SystemExit("--root is required for a dataset other than the demo")

    results: dict[str, dict] = {}
    for name in args.variants:
        method, overrides = VARIANTS[name]
        extra = {} if args.frame is None else {"frame": args.frame}
        spec = RunSpec(method=method, dataset=args.dataset, root=root, categories=[args.category], preset="fast",
                       seed=args.seed, overrides=dict(overrides), **extra)
        start = time.perf_counter()
        result = run(spec)
        wall = time.perf_counter() - start
        cat = result.categories[args.category]
        curve = result.units[0].details.get("history", []) if result.units else []
        history = [h["loss"] for h in curve if h["epoch"] > 0]
        probe = [h["probe_loss"] for h in curve]
        results[name] = {"method": method, "overrides": overrides, "metrics": cat.metrics, "timings": cat.timings,
                         "wall_s": wall, "loss": history, "probe_loss": probe, "weights_source": result.provenance["weights_source"],
                         "frame": cat.frame}
        m = cat.metrics
        loss = (f" loss {history[0]:.2f} -> {history[-1]:.2f} (min {min(history):.2f}); probe {probe[0]:.2f} -> "
                f"{probe[-1]:.2f}" if history else "")
        print(f"{name:<16s} I-AUROC {m['image_auroc']:.4f}  P-AUROC {m['pixel_auroc']:.4f}  AUPRO {m['aupro']:.4f}"
              f"  {wall:6.1f} s{loss}", flush=True)

    print(f"\n{args.dataset} {args.category}, seed {args.seed}, frame {next(iter(results.values()))['frame']}, "
          f"weights {next(iter(results.values()))['weights_source']}")
    print("| variant | method | overrides | image AUROC | pixel AUROC | AUPRO | train loss epoch 1 → last | "
          "probe loss before → after | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        m, loss = r["metrics"], r["loss"]
        losses = f"{loss[0]:.2f} → {loss[-1]:.2f}" if loss else "–"
        probes = f"{r['probe_loss'][0]:.2f} → {r['probe_loss'][-1]:.2f}" if r["probe_loss"] else "–"
        print(f"| {name} | {r['method']} | {json.dumps(r['overrides'])} | {m['image_auroc']:.4f} | "
              f"{m['pixel_auroc']:.4f} | {m['aupro']:.4f} | {losses} | {probes} | {r['wall_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
