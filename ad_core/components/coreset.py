"""Approximate greedy coreset subsampling (k-center), as the official PatchCore implementation's
`ApproximateGreedyCoresetSampler` (amazon-science/patchcore-inspection, `patchcore/sampler.py`).

Used by PatchCore and ReConPatch to reduce their memory banks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from threadpoolctl import threadpool_limits

if TYPE_CHECKING:
    from ad_core.methods.base import ProgressFn


def _no_progress(fraction: float, message: str) -> None:
    """Default progress callback: ignore."""


def approximate_greedy_coreset(
    features: torch.Tensor,
    ratio: float,
    projection_dim: int = 128,
    start_points: int = 10,
    generator: torch.Generator | None = None,
    progress: ProgressFn = _no_progress,
    device: str | torch.device = "cpu",
    block_size: int = 256,
    blas_threads: int | None = None,
) -> np.ndarray:
    """Indices of an approximate greedy k-center coreset (official PatchCore's ApproximateGreedyCoresetSampler).

    Features are projected to `projection_dim` with a random linear map; the distance of every point to the
    selected set starts as its mean distance to `start_points` random points and is updated with the distance
    to each newly selected point (the farthest one), so memory stays O(N).

    On the CPU the loop is numpy with the updates deferred per block of `block_size` points and applied as
    small matrix products (`_lazy_greedy`), on `blas_threads` BLAS threads (default: min(2, torch's); only
    measured on 2 cores). On a GPU `device` it is the official dense update in torch on that device
    (`greedy_on_device`): one matrix-vector product per step over all points, tens of microseconds there, with
    no host synchronisation inside the loop. Both select what the official loop selects up to float32
    near-ties, which the order of the float operations decides.
    """
    n = features.shape[0]
    k = max(1, int(n * ratio))
    if k >= n:
        return np.arange(n)
    device = torch.device(device)
    if features.shape[1] > projection_dim:
        projection = torch.randn(features.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        reduced = features.to(device) @ projection.to(device)
    else:
        reduced = features.to(device)
    starts = torch.randperm(n, generator=generator)[: min(start_points, n)]
    if device.type != "cpu":
        return greedy_on_device(reduced.float(), starts.to(device), k, progress)
    points = np.ascontiguousarray(reduced.numpy(), dtype=np.float32)
    sq_norms = np.einsum("ij,ij->i", points, points)
    starts = starts.numpy()
    # Euclidean distances to the start points, averaged: the official initialisation of the running distance.
    start_distance = np.sqrt(np.maximum(sq_norms[:, None] + sq_norms[starts][None] - 2 * points @ points[starts].T, 0))
    min_distance = start_distance.mean(1).astype(np.float32)
    del start_distance
    with threadpool_limits(limits=blas_threads or min(2, torch.get_num_threads()), user_api="blas"):
        return _lazy_greedy(points, sq_norms, min_distance, k, block_size, progress)


def _lazy_greedy(points: np.ndarray, sq_norms: np.ndarray, min_distance: np.ndarray, k: int, block_size: int,
                 progress: ProgressFn) -> np.ndarray:
    """The greedy loop with the distance updates deferred per block of points (lazy evaluation).

    The official loop lowers every point's running distance v with the new centre at each step: a
    matrix-vector product over all N x 128 floats per step, bound by memory bandwidth. Here the points are cut
    into blocks of `block_size`; each block remembers how many centres it has applied, and `upper[b]`, the
    largest v in block b when it was last brought up to date, bounds its v from above (v only decreases).
    The next centre is the farthest point: bring the block with the largest bound up to date (one small
    matrix product with all its pending centres, a GEMM that reuses the block from cache); once the block
    with the largest bound is up to date, its largest v is the global maximum (every other block's v is at
    most its bound). About 3 blocks are refreshed per step, each with a few hundred pending centres, so each
    (point, centre) distance is still computed once, but at GEMM instead of GEMV speed. Exact ties go to the lowest
    index, as `np.argmax` over all points; the selection is the dense loop's up to float32 near-ties, which
    the order of the products decides (bottle, 10 %: the same set of 16,385 patches, a few hundred adjacent
    pairs taken in the other order; benchmarks/bench_coreset.py).
    """
    n = len(points)
    edges = np.arange(0, n + block_size, block_size).clip(max=n)
    block_starts, ends = edges[:-1], edges[1:]
    upper = np.maximum.reduceat(min_distance, block_starts)
    applied = np.zeros(len(block_starts), dtype=np.int64)  # centres applied to each block
    centres = np.empty((k, points.shape[1]), dtype=np.float32)
    centre_sq = np.empty(k, dtype=np.float32)
    selected = np.empty(k, dtype=np.int64)
    report_every = max(1, k // 50)
    for i in range(k):
        while True:
            b = int(np.argmax(upper))
            if applied[b] == i:
                break
            lo, hi, first = block_starts[b], ends[b], applied[b]
            squared = points[lo:hi] @ centres[first:i].T  # [block, pending]
            squared *= -2
            squared += centre_sq[first:i]
            nearest = squared.min(1)
            nearest += sq_norms[lo:hi]
            np.sqrt(np.maximum(nearest, 0, out=nearest), out=nearest)
            block = min_distance[lo:hi]
            np.minimum(block, nearest, out=block)
            upper[b] = block.max()
            applied[b] = i
        idx = int(block_starts[b] + np.argmax(min_distance[block_starts[b] : ends[b]]))
        selected[i] = idx
        centres[i], centre_sq[i] = points[idx], sq_norms[idx]
        if i % report_every == 0:
            progress(i / k, f"coreset {i}/{k}")
    return selected


def greedy_on_device(points: torch.Tensor, starts: torch.Tensor, k: int,
                     progress: ProgressFn = _no_progress) -> np.ndarray:
    """The official dense greedy loop in torch on `points`' device (a GPU's): running distance = mean distance
    to `starts`, then k times: take the farthest point, lower every point's distance to it. Indices stay on
    the device until the end (`argmax` with keepdim and `index_select` need no host round trip per step)."""
    sq_norms = (points * points).sum(1)

    def distances_to(rows: torch.Tensor) -> torch.Tensor:  # [N, len(rows)] Euclidean
        between = torch.addmm(sq_norms[:, None] + sq_norms[rows][None], points, points[rows].T, alpha=-2)
        return between.clamp_(min=0).sqrt_()

    min_distance = distances_to(starts).mean(1)
    selected = torch.empty(k, dtype=torch.long, device=points.device)
    report_every = max(1, k // 50)
    for i in range(k):
        idx = torch.argmax(min_distance, dim=0, keepdim=True)
        selected[i : i + 1] = idx
        torch.minimum(min_distance, distances_to(idx)[:, 0], out=min_distance)
        if i % report_every == 0:
            progress(i / k, f"coreset {i}/{k}")
    return selected.cpu().numpy()
