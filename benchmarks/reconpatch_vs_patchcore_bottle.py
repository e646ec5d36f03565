"""PatchCore vs ReConPatch (both preset `fast`, same seed) on MVTec AD bottle, through `ad_core.runner`.

    python benchmarks/reconpatch_vs_patchcore_bottle.py [--root /work/shared/data/mvtec_ad] [--seed 0]
        [--threads 1] [--methods patchcore reconpatch] [--set reconpatch:epochs=16 ...] [--json out.json]

Both presets use EfficientNet-Lite0 with the bundled ImageNet weights (offline). Every method runs in its
own child process so that "peak memory" (the process's peak resident set size, as recorded by the runner)
belongs to that method alone. Prints image AUROC, pixel AUROC, AUPRO, fit time, predict time and peak RSS.

Acceptance target (issue 5): ReConPatch image AUROC >= PatchCore's and pixel AUROC within 0.5 pt or better.
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

METHODS = ("patchcore", "reconpatch")


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """["reconpatch:epochs=16", ...] -> {"reconpatch": {"epochs": "16"}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        method, sep1, rest = item.partition(":")
        key, sep2, value = rest.partition("=")
        if not (sep1 and sep2) or method not in METHODS:
            raise SystemExit(f"--set expects METHOD:key=value with METHOD in {METHODS}, got {item!r}")
        out.setdefault(method, {})[key.strip()] = value.strip()
    return out


def child(args: argparse.Namespace) -> None:
    """Run one method through the runner and write its result summary to args.out."""
    import torch

    import ad_core.methods.reconpatch  # noqa: F401  (registers "reconpatch")
    from ad_core.runner import RunSpec, run

    torch.set_num_threads(args.threads)
    spec = RunSpec(
        method=args.child,
        dataset="mvtec",
        root=args.root,
        categories=[args.category],
        preset="fast",
        seed=args.seed,
        overrides=json.loads(args.overrides),
    )
    start = time.perf_counter()

    def progress(fraction: float, message: str) -> None:
        print(
            f"  [{args.child} {time.perf_counter() - start:6.1f}s {100 * fraction:5.1f}%] {message}",
            flush=True,
        )

    result = run(spec, progress=progress)
    category = result.categories[args.category]
    Path(args.out).write_text(
        json.dumps(
            {
                "metrics": category.metrics,
                "timings": category.timings,
                "config": result.config,
                "weights_source": result.provenance["weights_source"],
                "counts": category.counts,
            },
            indent=1,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/work/shared/data/mvtec_ad")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per method (1 is fastest on a busy CPU)"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--set", action="append", default=[], help="METHOD:key=value config override (repeatable)"
    )
    parser.add_argument("--json", help="write both results (metrics, timings, configs) here")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
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
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            out = Path(tmp) / f"{method}.json"
            command = [
                sys.executable, __file__, "--child", method, "--out", str(out), "--root", args.root,
                "--category", args.category, "--seed", str(args.seed), "--threads", str(args.threads),
                "--overrides", json.dumps(overrides.get(method, {})),
            ]  # fmt: skip
            print(f"== {method} (preset fast, seed {args.seed}, {args.threads} thread(s))", flush=True)
            subprocess.run(command, check=True)
            results[method] = json.loads(out.read_text())

    print(
        f"\nMVTec AD {args.category}, seed {args.seed}, weights: {next(iter(results.values()))['weights_source']}"
    )
    header = f"{'method':<12s}{'I-AUROC':>9s}{'P-AUROC':>9s}{'AUPRO':>9s}{'fit s':>9s}{'predict s':>11s}{'peak RSS MB':>13s}"
    print(header)
    print("-" * len(header))
    for method, r in results.items():
        m, t = r["metrics"], r["timings"]
        print(
            f"{method:<12s}{m['image_auroc']:9.4f}{m['pixel_auroc']:9.4f}{m['aupro']:9.4f}"
            f"{t['fit_s']:9.1f}{t['predict_s']:11.1f}{t['peak_rss_mb']:13.1f}"
        )
    if set(METHODS) <= set(results):
        pc, rc = results["patchcore"]["metrics"], results["reconpatch"]["metrics"]
        image_ok = rc["image_auroc"] >= pc["image_auroc"]
        pixel_ok = rc["pixel_auroc"] >= pc["pixel_auroc"] - 0.005
        print(
            f"\nacceptance: image AUROC >= PatchCore's: {'yes' if image_ok else 'NO'} "
            f"({rc['image_auroc'] - pc['image_auroc']:+.4f}); pixel AUROC within 0.5 pt: "
            f"{'yes' if pixel_ok else 'NO'} ({rc['pixel_auroc'] - pc['pixel_auroc']:+.4f})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
