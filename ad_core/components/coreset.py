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
) -> np.ndarray:
    """Indices of an approximate greedy k-center coreset (official PatchCore's ApproximateGreedyCoresetSampler).

    Features are projected to `projection_dim` with a random linear map; the distance of every point to the
    selected set starts as its mean distance to `start_points` random points and is updated with the distance
    to each newly selected point (the farthest one), so memory stays O(N).
    """
    n = features.shape[0]
    k = max(1, int(n * ratio))
    if k >= n:
        return np.arange(n)
    if features.shape[1] > projection_dim:
        projection = torch.randn(features.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        reduced = features @ projection.to(features.device)
    else:
        reduced = features
    # The greedy loop is a GEMV per step; numpy's BLAS path is several times faster than torch's here.
    points = np.ascontiguousarray(reduced.cpu().numpy(), dtype=np.float32)
    sq_norms = np.einsum("ij,ij->i", points, points)
    starts = torch.randperm(n, generator=generator)[: min(start_points, n)].numpy()
    # Euclidean distances to the start points, averaged: the official initialisation of the running distance.
    start_distance = np.sqrt(np.maximum(sq_norms[:, None] + sq_norms[starts][None] - 2 * points @ points[starts].T, 0))
    min_distance = start_distance.mean(1).astype(np.float32)
    # Triangle-inequality pruning (as in accelerated k-means / farthest-point sampling): a point x with running
    # distance v and an anchor a with d(x, a) <= v cannot get closer to a new centre c when d(a, c) >= 2 v,
    # since d(x, c) >= d(a, c) - d(x, a) >= v. Only the other points are measured; after the first few hundred
    # steps that is a few percent, and reading all N x 128 floats per step was what bounded the speed (memory,
    # not arithmetic). The selection is the unpruned one's: skipped points could not have changed. Anchors are
    # the start points (x's nearest one is within the mean distance v) and then the centres;
    # `anchors[owner[x]]` is x's.
    n_starts = len(starts)
    anchors = np.empty((n_starts + k, points.shape[1]), dtype=np.float32)
    anchor_sq = np.empty(n_starts + k, dtype=np.float32)
    anchors[:n_starts], anchor_sq[:n_starts] = points[starts], sq_norms[starts]
    owner = start_distance.argmin(1).astype(np.int32)
    del start_distance
    anchor_distance = np.empty(n_starts + k, dtype=np.float32)
    # Per-step buffers over all points (the pruning test is the only O(N) work left per step).
    owner_distance = np.empty(n, dtype=np.float32)
    # 2 v with a relative margin for the float32 rounding of both sides of the bound; kept up to date with v.
    slack = np.float32(2 * (1 + 1e-4))
    bound = min_distance * slack
    may_move = np.empty(n, dtype=bool)
    distance = np.empty(n, dtype=np.float32)
    selected = np.empty(k, dtype=np.int64)
    report_every = max(1, k // 50)
    # One BLAS thread: the per-step products are small (a few thousand rows once pruning starts), and
    # waking threads for each costs more than it brings; on a busy machine multi-threaded BLAS was 1.2-2.3x
    # slower here (benchmarks/bench_coreset.py).
    with threadpool_limits(limits=1, user_api="blas"):
        for i in range(k):
            idx = int(np.argmax(min_distance))
            selected[i] = idx
            centre, centre_norm = points[idx], sq_norms[idx]
            m = n_starts + i
            between = anchor_sq[:m] + centre_norm - 2 * (anchors[:m] @ centre)
            np.sqrt(np.maximum(between, 0), out=anchor_distance[:m])
            anchors[m], anchor_sq[m] = centre, centre_norm
            np.take(anchor_distance, owner, out=owner_distance)
            np.less(owner_distance, bound, out=may_move)
            candidates = np.flatnonzero(may_move)
            if len(candidates) > n // 4:  # gathering rows costs more than one pass over all of them
                np.matmul(points, centre, out=distance)
                distance *= -2
                distance += sq_norms
                distance += centre_norm
                np.maximum(distance, 0, out=distance)
                np.sqrt(distance, out=distance)
                closer = np.flatnonzero(distance < min_distance)
                min_distance[closer] = distance[closer]
                bound[closer] = distance[closer] * slack
                owner[closer] = m
            else:
                near = sq_norms[candidates] + centre_norm - 2 * (np.take(points, candidates, axis=0) @ centre)
                np.sqrt(np.maximum(near, 0, out=near), out=near)
                closer = near < min_distance[candidates]
                moved = candidates[closer]
                min_distance[moved] = near[closer]
                bound[moved] = near[closer] * slack
                owner[moved] = m
            if i % report_every == 0:
                progress(i / k, f"coreset {i}/{k}")
    return selected
