"""Time AUPRO and the pixel metrics on a test set the size of MVTec AD (1,725 maps of 256x256), and AUPRO
against the official MVTec AD evaluation code (issue 16, goal 4: >= 20x faster at the same value, 1e-9).

    python benchmarks/bench_aupro.py [--n 1725 --size 256 --decimals 3] [--maps blobs smooth]
        [--repeats 1] [--skip-official] [--skip-pixel-metrics]

Ground truth: random elliptical blobs (seeded) on about 70 % of the images. Maps (float32, `--maps`):
- `blobs`: white noise with higher scores on the blobs (every pixel independent);
- `smooth`: realistic continuous maps as PatchCore writes them: noise plus a blob-shaped bump, Gaussian
  filtered with sigma 4 (spatially correlated, practically every score distinct, defects' edges blurred).
`--decimals` rounds the scores to create heavy ties.

The official side is a transcription of `compute_pro` (pro_curve_util.py) and `trapezoid` (generic_util.py)
of the MVTec AD evaluation code (mvtec.com, "evaluation code" of MVTec AD / MVTec LOCO), with its
prints removed; the AUPRO it reports is trapezoid(fprs, pros, x_max=limit) / limit. The two sides run
alternately (`--repeats`), so a busy machine slows both alike; the table shows medians and their ratio.
Then: seconds per pixel metric, the extra memory each one allocated at its peak (tracemalloc, which numpy
reports its arrays to) and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import bisect
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from ad_core import metrics  # noqa: E402


def make_test_set(
    n_images: int, size: int, seed: int, anomalous_fraction: float = 0.7, kind: str = "blobs"
) -> tuple[np.ndarray, np.ndarray]:
    """Blob masks [N, H, W] bool and float32 maps [N, H, W] of `kind` (see the module docstring); about 30%
    of the images are anomaly-free."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=bool)
    maps = np.empty((n_images, size, size), dtype=np.float32)
    yy, xx = np.ogrid[:size, :size]
    for mask, anomaly_map in zip(masks, maps, strict=True):
        if rng.random() < anomalous_fraction:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(0, size, 2)
                ry, rx = rng.uniform(2, size / 10, 2)
                mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        anomaly_map[:] = rng.standard_normal((size, size), dtype=np.float32)
        anomaly_map += mask * np.float32(rng.uniform(0.5, 3))
        if kind == "smooth":
            # Correlated noise as after PatchCore's smoothing; scaled back to unit-ish spread.
            ndimage.gaussian_filter(anomaly_map * np.float32(8), sigma=4, output=anomaly_map)
    return masks, maps


# --- the official MVTec AD evaluation code (compute_pro and trapezoid), transcribed -------------------------


def official_compute_pro(anomaly_maps: np.ndarray, ground_truth_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MVTec AD evaluation code, pro_curve_util.compute_pro, as published (prints removed)."""
    structure = np.ones((3, 3), dtype=int)
    num_ok_pixels = 0
    num_gt_regions = 0
    shape = (len(anomaly_maps), anomaly_maps[0].shape[0], anomaly_maps[0].shape[1])
    fp_changes = np.zeros(shape, dtype=np.uint32)
    assert shape[0] * shape[1] * shape[2] < np.iinfo(fp_changes.dtype).max
    pro_changes = np.zeros(shape, dtype=np.float64)
    for gt_ind, gt_map in enumerate(ground_truth_maps):
        labeled, n_components = ndimage.label(gt_map, structure)
        num_gt_regions += n_components
        ok_mask = labeled == 0
        num_ok_pixels_in_map = np.sum(ok_mask)
        num_ok_pixels += num_ok_pixels_in_map
        fp_change = np.zeros_like(gt_map, dtype=fp_changes.dtype)
        fp_change[ok_mask] = 1
        pro_change = np.zeros_like(gt_map, dtype=np.float64)
        for k in range(n_components):
            region_mask = labeled == (k + 1)
            region_size = np.sum(region_mask)
            pro_change[region_mask] = 1.0 / region_size
        fp_changes[gt_ind, :, :] = fp_change
        pro_changes[gt_ind, :, :] = pro_change
    anomaly_scores_flat = np.array(anomaly_maps).ravel()
    fp_changes_flat = fp_changes.ravel()
    pro_changes_flat = pro_changes.ravel()
    sort_idxs = np.argsort(anomaly_scores_flat).astype(np.uint32)[::-1]
    np.take(anomaly_scores_flat, sort_idxs, out=anomaly_scores_flat)
    anomaly_scores_sorted = anomaly_scores_flat
    np.take(fp_changes_flat, sort_idxs, out=fp_changes_flat)
    fp_changes_sorted = fp_changes_flat
    np.take(pro_changes_flat, sort_idxs, out=pro_changes_flat)
    pro_changes_sorted = pro_changes_flat
    del sort_idxs
    np.cumsum(fp_changes_sorted, out=fp_changes_sorted)
    fp_changes_sorted = fp_changes_sorted.astype(np.float32, copy=False)
    np.divide(fp_changes_sorted, num_ok_pixels, out=fp_changes_sorted)
    fprs = fp_changes_sorted
    np.cumsum(pro_changes_sorted, out=pro_changes_sorted)
    np.divide(pro_changes_sorted, num_gt_regions, out=pro_changes_sorted)
    pros = pro_changes_sorted
    keep_mask = np.append(np.diff(anomaly_scores_sorted) != 0, np.True_)
    del anomaly_scores_sorted
    fprs = fprs[keep_mask]
    pros = pros[keep_mask]
    del keep_mask
    np.clip(fprs, a_min=None, a_max=1.0, out=fprs)
    np.clip(pros, a_min=None, a_max=1.0, out=pros)
    zero = np.array([0.0])
    one = np.array([1.0])
    return np.concatenate((zero, fprs, one)), np.concatenate((zero, pros, one))


def official_trapezoid(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """MVTec AD evaluation code, generic_util.trapezoid, as published (prints removed)."""
    x = np.array(x)
    y = np.array(y)
    finite_mask = np.logical_and(np.isfinite(x), np.isfinite(y))
    x = x[finite_mask]
    y = y[finite_mask]
    correction = 0.0
    if x_max is not None:
        if x_max not in x:
            ins = bisect.bisect(x, x_max)
            assert 0 < ins < len(x)
            y_interp = y[ins - 1] + ((y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1]))
            correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
        mask = x <= x_max
        x = x[mask]
        y = y[mask]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def official_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    fprs, pros = official_compute_pro(maps, masks)
    return official_trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(name: str, fn: Callable[[], object]) -> object:
    tracemalloc.start()
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    shown = value if isinstance(value, dict) else f"{value:.6f}"
    print(f"{name:<14} {seconds:7.2f} s   +{peak_bytes / 2**20:7.0f} MiB peak   {shown}")
    return value


def seconds(fn: Callable[[], float]) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1725, help="number of maps")
    parser.add_argument("--size", type=int, default=256, help="map height and width")
    parser.add_argument("--fpr-limit", type=float, default=0.3)
    parser.add_argument("--decimals", type=int, default=None, help="round scores to create ties")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--maps", nargs="+", default=["blobs", "smooth"], choices=["blobs", "smooth"])
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per side")
    parser.add_argument("--skip-official", action="store_true", help="only time ours")
    parser.add_argument("--skip-pixel-metrics", action="store_true", help="only the AUPRO comparison")
    args = parser.parse_args()

    rows = []
    for kind in args.maps:
        start = time.perf_counter()
        masks, maps = make_test_set(args.n, args.size, args.seed, kind=kind)
        if args.decimals is not None:
            np.round(maps, args.decimals, out=maps)
        print(
            f"{kind}: {args.n} maps of {args.size}x{args.size} = {masks.size / 1e6:.1f}M pixels, "
            f"{masks.mean():.2%} anomalous, {len(np.unique(maps[:50])):,} distinct scores in the first 50 maps; "
            f"generated in {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_mib():.0f} MiB", flush=True
        )
        ours_s, official_s = [], []
        for _ in range(args.repeats):
            took, ours = seconds(lambda m=masks, a=maps: metrics.aupro(m, a, args.fpr_limit))
            ours_s.append(took)
            if not args.skip_official:
                took, official = seconds(lambda m=masks, a=maps: official_aupro(m, a, args.fpr_limit))
                official_s.append(took)
            print(f"  ours {ours_s[-1]:.2f} s" + (f", official {official_s[-1]:.2f} s" if official_s else ""),
                  flush=True)
        rows.append((kind, ours, statistics.median(ours_s),
                     official if official_s else None, statistics.median(official_s) if official_s else None))
        if kind == args.maps[-1] and not args.skip_pixel_metrics:
            pixel_metrics(masks, maps, args.fpr_limit)

    print(f"\nAUPRO@{args.fpr_limit} on {args.n} maps of {args.size}x{args.size}"
          f"{'' if args.decimals is None else f', scores rounded to {args.decimals} decimals'}; "
          f"median of {args.repeats} alternating run(s)")
    header = f"{'maps':<8s}{'ours s':>8s}{'official s':>12s}{'speed-up':>10s}{'ours AUPRO':>14s}{'|ours - official|':>19s}"
    print(header)
    print("-" * len(header))
    for kind, ours, ours_t, official, official_t in rows:
        if official is None:
            print(f"{kind:<8s}{ours_t:8.2f}{'-':>12s}{'-':>10s}{ours:14.10f}{'-':>19s}")
        else:
            print(f"{kind:<8s}{ours_t:8.2f}{official_t:12.2f}{official_t / ours_t:9.1f}x{ours:14.10f}"
                  f"{abs(ours - official):19.2e}")


def pixel_metrics(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> None:
    """Seconds and peak extra memory of every pixel metric and of compute_all."""
    print("\npixel metrics (last map kind):")
    timed("aupro", lambda: metrics.aupro(masks, maps, fpr_limit))
    timed("pixel_auroc", lambda: metrics.pixel_auroc(masks, maps))
    timed("pixel_ap", lambda: metrics.pixel_ap(masks, maps))
    timed("pixel_f1_max", lambda: metrics.pixel_f1_max(masks, maps))
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2))
    timed("compute_all", lambda: metrics.compute_all(labels, scores, masks, maps, fpr_limit))
    print(
        f"peak RSS of the process: {peak_rss_mib():.0f} MiB (inputs: {(maps.nbytes + masks.nbytes) / 2**20:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
