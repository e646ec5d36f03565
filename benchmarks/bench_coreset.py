"""Coreset selection: ours (now) vs ours before issue 16 vs the official PatchCore sampler (issue 16, goal 3:
>= 3x faster at the same coverage radius).

    python benchmarks/bench_coreset.py [--dataset mvtec --root /work/shared/data/mvtec_ad --category bottle] [--ratio 0.1]
        [--threads 2] [--repeats 1] [--sides official before ours] [--cache /tmp/bottle_features.npy]

Features: PatchCore `fast` (EfficientNet-Lite0, bundled ImageNet weights, default embedding policy) of every
training image of the category (bottle: 209 x 28 x 28 = 163,856 patches), extracted once (`--cache` keeps them).

Sides, all on the same features with the same ratio, 128-d random projection and 10 random starting points:
- `official`: the official `ApproximateGreedyCoresetSampler` (amazon-science/patchcore-inspection,
  patchcore/sampler.py) transcribed: torch `nn.Linear` projection without bias, 10 random starts, a torch
  distance column per step concatenated to the running minimum;
- `before`: `ad_core.components.coreset.approximate_greedy_coreset` as it was before issue 16 (numpy GEMV over
  every point per step), kept here verbatim;
- `before_1t`: the same with BLAS pinned to one thread (how much a busy machine slows its GEMV);
- `ours`: the current `approximate_greedy_coreset` (lazy greedy: the per-step update deferred per block of 256
  points and applied as small matrix products to the block with the largest bound; two BLAS threads).

`--dataset demo --root ~/.cache/iad-workbench/mvtec-sized-demo --category grass` measures a demo texture of
`bench_mvtec_sized.py`'s dataset (where pruning by the triangle inequality, our loop before the lazy one, failed).

Quality is the coverage radius in the full feature space: the distance of every training patch to its
nearest selected patch (faiss exact search), max and 99th percentile; lower is better. The sides run
alternately (`--repeats`); times are medians, the speed-up is official / side and before / ours.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ad_core.components import approximate_greedy_coreset  # noqa: E402


def official_sampler(features: torch.Tensor, percentage: float, seed: int) -> np.ndarray:
    """ApproximateGreedyCoresetSampler.run (official PatchCore), tqdm removed; seeded via torch and numpy."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    mapper = torch.nn.Linear(features.shape[1], 128, bias=False)
    with torch.no_grad():
        reduced = mapper(features)

    def batchwise_differences(matrix_a: torch.Tensor, matrix_b: torch.Tensor) -> torch.Tensor:
        a_times_a = matrix_a.unsqueeze(1).bmm(matrix_a.unsqueeze(2)).reshape(-1, 1)
        b_times_b = matrix_b.unsqueeze(1).bmm(matrix_b.unsqueeze(2)).reshape(1, -1)
        a_times_b = matrix_a.mm(matrix_b.T)
        return (-2 * a_times_b + a_times_a + b_times_b).clamp(0, None).sqrt()

    number_of_starting_points = int(np.clip(10, None, len(reduced)))
    start_points = np.random.choice(len(reduced), number_of_starting_points, replace=False).tolist()
    approximate_distance_matrix = batchwise_differences(reduced, reduced[start_points])
    approximate_coreset_anchor_distances = torch.mean(approximate_distance_matrix, axis=-1).reshape(-1, 1)
    coreset_indices = []
    num_coreset_samples = int(len(reduced) * percentage)
    with torch.no_grad():
        for _ in range(num_coreset_samples):
            select_idx = torch.argmax(approximate_coreset_anchor_distances).item()
            coreset_indices.append(select_idx)
            coreset_select_distance = batchwise_differences(reduced, reduced[select_idx : select_idx + 1])
            approximate_coreset_anchor_distances = torch.cat(
                [approximate_coreset_anchor_distances, coreset_select_distance], dim=-1
            )
            approximate_coreset_anchor_distances = torch.min(approximate_coreset_anchor_distances, dim=1).values.reshape(-1, 1)
    return np.array(coreset_indices)


def before_sampler(features: torch.Tensor, ratio: float, seed: int) -> np.ndarray:
    """`approximate_greedy_coreset` before issue 16 (commit a49e9f2), verbatim but for the progress calls."""
    generator = torch.Generator().manual_seed(seed)
    n = features.shape[0]
    k = max(1, int(n * ratio))
    projection_dim = 128
    projection = torch.randn(features.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
    reduced = features @ projection
    points = np.ascontiguousarray(reduced.cpu().numpy(), dtype=np.float32)
    sq_norms = np.einsum("ij,ij->i", points, points)
    starts = torch.randperm(n, generator=generator)[: min(10, n)].numpy()
    start_sq = sq_norms[:, None] + sq_norms[starts][None] - 2 * points @ points[starts].T
    min_distance = np.sqrt(np.maximum(start_sq, 0)).mean(1).astype(np.float32)
    distance = np.empty(n, dtype=np.float32)
    selected = np.empty(k, dtype=np.int64)
    for i in range(k):
        idx = int(np.argmax(min_distance))
        selected[i] = idx
        np.matmul(points, points[idx], out=distance)
        distance *= -2
        distance += sq_norms
        distance += sq_norms[idx]
        np.maximum(distance, 0, out=distance)
        np.sqrt(distance, out=distance)
        np.minimum(min_distance, distance, out=min_distance)
    return selected


def before_one_thread_sampler(features: torch.Tensor, ratio: float, seed: int) -> np.ndarray:
    """`before` with BLAS pinned to one thread (its per-step GEMV over all points is memory-bound)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return before_sampler(features, ratio, seed)


def ours_sampler(features: torch.Tensor, ratio: float, seed: int) -> np.ndarray:
    return approximate_greedy_coreset(features, ratio, 128, 10, generator=torch.Generator().manual_seed(seed))


SIDES = {"official": official_sampler, "before": before_sampler, "before_1t": before_one_thread_sampler,
         "ours": ours_sampler}


def coverage(features: np.ndarray, selected: np.ndarray) -> tuple[float, float]:
    """(max, p99) over all features of the L2 distance to the nearest selected feature (exact, faiss)."""
    import faiss

    index = faiss.IndexFlatL2(features.shape[1])
    index.add(np.ascontiguousarray(features[selected]))
    squared, _ = index.search(features, 1)
    distance = np.sqrt(np.maximum(squared[:, 0], 0))
    return float(distance.max()), float(np.percentile(distance, 99))


def extract(dataset: str, root: str, category: str) -> np.ndarray:
    from ad_core.components import collect_patch_features
    from ad_core.methods.patchcore import PatchCore
    from ad_core.runner import RunSpec, _loader

    spec = RunSpec(method="patchcore", dataset=dataset, root=root, categories=[category], preset="fast")
    plan = spec.prepare()
    model = PatchCore(plan.config)
    loader = _loader(spec, plan.splits[category].train, model.preprocess(), plan.config.batch_size, train=True)
    return collect_patch_features(model.features, loader).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mvtec", help="mvtec | demo | folder (a dataset kind)")
    parser.add_argument("--root", default="/work/shared/data/mvtec_ad")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    parser.add_argument("--cache", help="npy file for the features (read if it exists, else written)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.cache and Path(args.cache).is_file():
        features = np.load(args.cache)
    else:
        start = time.perf_counter()
        features = extract(args.dataset, args.root, args.category)
        print(f"features extracted in {time.perf_counter() - start:.1f} s", flush=True)
        if args.cache:
            np.save(args.cache, features)
    features = np.ascontiguousarray(features, dtype=np.float32)
    tensor = torch.from_numpy(features)
    print(f"{args.category}: {features.shape[0]:,} patches x {features.shape[1]} dims, ratio {args.ratio}, "
          f"{args.threads} thread(s)", flush=True)

    times: dict[str, list[float]] = {side: [] for side in args.sides}
    selections: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for side in args.sides:
            start = time.perf_counter()
            selections[side] = SIDES[side](tensor, args.ratio, args.seed)
            times[side].append(time.perf_counter() - start)
            print(f"  {side}: {times[side][-1]:.1f} s", flush=True)

    header = f"{'side':<11s}{'k':>8s}{'time s':>9s}{'vs official':>13s}{'vs before':>11s}{'max dist':>11s}{'p99 dist':>11s}"
    print("\n" + header)
    print("-" * len(header))
    med = {side: statistics.median(t) for side, t in times.items()}
    for side in args.sides:
        radius, p99 = coverage(features, selections[side])
        vs_official = f"{med['official'] / med[side]:.2f}x" if "official" in med else "-"
        vs_before = f"{med['before'] / med[side]:.2f}x" if "before" in med else "-"
        print(f"{side:<11s}{len(selections[side]):>8d}{med[side]:9.1f}{vs_official:>13s}{vs_before:>11s}"
              f"{radius:11.3f}{p99:11.3f}")
    if {"before", "ours"} <= set(selections):
        same = np.array_equal(np.sort(selections["before"]), np.sort(selections["ours"]))
        print(f"\nours selects {'the same' if same else 'other'} patches as before "
              f"({len(np.intersect1d(selections['before'], selections['ours']))} of {len(selections['ours'])} in common)")


if __name__ == "__main__":
    main()
