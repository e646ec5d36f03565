"""Approximate greedy coreset subsampling (k-center), as the official PatchCore implementation's
`ApproximateGreedyCoresetSampler` (amazon-science/patchcore-inspection, `patchcore/sampler.py`).

Used by PatchCore and ReConPatch to reduce their memory banks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

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
    start_sq = sq_norms[:, None] + sq_norms[starts][None] - 2 * points @ points[starts].T
    min_distance = np.sqrt(np.maximum(start_sq, 0)).mean(1).astype(np.float32)
    distance = np.empty(n, dtype=np.float32)
    selected = np.empty(k, dtype=np.int64)
    report_every = max(1, k // 50)
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
        if i % report_every == 0:
            progress(i / k, f"coreset {i}/{k}")
    return selected
