"""Nearest-neighbour patch scoring against a memory bank, as the official PatchCore implementation
(amazon-science/patchcore-inspection, `patchcore/common.py` `FaissNN` + `NearestNeighbourScorer`): faiss
IndexFlatL2, so a patch score is the mean of the k *squared* L2 distances that faiss returns (the paper writes
the L2 norm; this only changes pixel maps after smoothing, not image rankings).

Used by PatchCore (in backbone feature space) and ReConPatch (in its learned representation space).
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np


class NearestNeighbourScorer:
    """faiss k-NN over a memory bank; patch score = mean of the k squared L2 distances (official code).

    `index="flat"` is exact search (official); `index="ivf"` is a faiss IVF-Flat index (approximate, sqrt(N)
    lists, `nprobe` probed) for banks of at least 4096 vectors, exact search below that.
    """

    def __init__(self, bank: np.ndarray, num_neighbors: int = 1, index: str = "flat", nprobe: int = 8):
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.num_neighbors = min(num_neighbors, len(bank))
        dim = bank.shape[1]
        if index == "ivf" and len(bank) >= 4096:
            nlist = int(math.sqrt(len(bank)))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
            self.index.train(bank)
            self.index.nprobe = nprobe
        else:
            self.index = faiss.IndexFlatL2(dim)
        self.index.add(bank)

    def __call__(self, queries: np.ndarray) -> np.ndarray:
        distances, _ = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), self.num_neighbors)
        return distances.mean(axis=1)


def check_patch_memory_bank(config: Any) -> None:
    """ConfigError on bad values of the fields every patch-feature + memory-bank method shares
    (coreset_ratio, patch_size, num_neighbors, nn_index, stages, embed_dim_policy), with the same messages for each
    method."""
    from ad_core.components.features import EMBED_DIM_POLICIES
    from ad_core.errors import ConfigError

    if not 0 < config.coreset_ratio <= 1:
        raise ConfigError(f"coreset_ratio must be in (0, 1], got {config.coreset_ratio}")
    if config.patch_size < 1 or config.patch_size % 2 == 0:
        raise ConfigError(f"patch_size must be a positive odd number, got {config.patch_size}")
    if config.num_neighbors < 1:
        raise ConfigError(f"num_neighbors must be >= 1, got {config.num_neighbors}")
    if config.nn_index not in ("flat", "ivf"):
        raise ConfigError(f"nn_index must be 'flat' or 'ivf', got {config.nn_index!r}")
    if not config.stages:
        raise ConfigError("stages must name at least one backbone stage")
    if config.embed_dim_policy not in EMBED_DIM_POLICIES:
        raise ConfigError(f"embed_dim_policy must be one of {EMBED_DIM_POLICIES}, got {config.embed_dim_policy!r}")
