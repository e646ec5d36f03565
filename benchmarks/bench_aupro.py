"""Time AUPRO and the pixel metrics on a test set the size of MVTec AD (1,725 maps of 256x256).

    python benchmarks/bench_aupro.py [--n 1725 --size 256 --decimals 3]

Maps are float32 noise with higher scores on random elliptical blobs (seeded); `--decimals` rounds the
scores to create heavy ties. Prints seconds per metric, the extra memory each one allocated at its peak
(tracemalloc, which numpy reports its arrays to) and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from ad_core import metrics  # noqa: E402


def make_test_set(
    n_images: int, size: int, seed: int, anomalous_fraction: float = 0.7
) -> tuple[np.ndarray, np.ndarray]:
    """Blob masks [N, H, W] bool and float32 maps [N, H, W]; about 30% of the images are anomaly-free."""
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
    return masks, maps


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1725, help="number of maps")
    parser.add_argument("--size", type=int, default=256, help="map height and width")
    parser.add_argument("--fpr-limit", type=float, default=0.3)
    parser.add_argument("--decimals", type=int, default=None, help="round scores to create ties")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    masks, maps = make_test_set(args.n, args.size, args.seed)
    if args.decimals is not None:
        np.round(maps, args.decimals, out=maps)
    n_pixels = masks.size
    print(
        f"{args.n} maps of {args.size}x{args.size} = {n_pixels / 1e6:.1f}M pixels, "
        f"{masks.mean():.2%} anomalous, {len(np.unique(maps[:50])):,} distinct scores in the first 50 maps; "
        f"generated in {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_mib():.0f} MiB"
    )

    timed("aupro", lambda: metrics.aupro(masks, maps, args.fpr_limit))
    timed("pixel_auroc", lambda: metrics.pixel_auroc(masks, maps))
    timed("pixel_ap", lambda: metrics.pixel_ap(masks, maps))
    timed("pixel_f1_max", lambda: metrics.pixel_f1_max(masks, maps))
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2))
    timed("compute_all", lambda: metrics.compute_all(labels, scores, masks, maps, args.fpr_limit))
    print(
        f"peak RSS of the process: {peak_rss_mib():.0f} MiB (inputs: {(maps.nbytes + masks.nbytes) / 2**20:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
