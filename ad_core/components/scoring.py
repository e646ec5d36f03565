"""Nearest-neighbour patch scoring against a memory bank, as the official PatchCore implementation
(amazon-science/patchcore-inspection, `patchcore/common.py` `FaissNN` + `NearestNeighbourScorer`): faiss
IndexFlatL2, so a patch score is the mean of the k *squared* L2 distances that faiss returns (the paper writes
the L2 norm; this only changes pixel maps after smoothing, not image rankings).

Used by PatchCore (in backbone feature space) and ReConPatch (in its learned representation space).

The search (`nn_index` in both configs; issue 16, goal 2; `benchmarks/bench_knn.py` measures them):

- `flat`: exact search (official), the default for published numbers.
- `pca_refine`: two stages, `faiss.index_factory(d, "PCA{p},Flat,RFlat")`: candidates are the
  `refine_factor * k` nearest bank vectors in the bank's top-`pca_dim` principal components, re-ranked
  with exact distances in the full space. A returned distance is always a true distance to some bank
  vector, so an approximate score can only be too high, never too low.
- `ivf`: faiss IVF-Flat, sqrt(N) lists of which `nprobe` are searched.

The approximate ones fall back to exact search for banks under `APPROXIMATE_MIN_BANK` vectors (there is
nothing to gain) and when `pca_dim` is not below the dimension; `describe()` says what actually ran, and
`scorer_label` names the configured search for tables.

Where the search runs: on a CPU model, faiss. On a GPU model, exact search runs on the GPU (`TorchFlatL2`:
the same squared-L2 expansion as faiss' IndexFlatL2, ||q||^2 + ||b||^2 - 2 q.b, in float32 matmuls with TF32
off), so the patch features never leave the GPU and the kNN does not idle it: for a WideResNet-50 bank of
16k x 1024 a search is ~26 GFLOP per image, by estimate ~25 ms on a 16-core CPU, tens of times the GPU's backbone
time (not measured: no GPU was lent when this was written). The approximate
indexes stay on faiss' CPU search (faiss-gpu is not a dependency), as their description says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

NN_INDEXES = ("flat", "pca_refine", "ivf")
# Below this many bank vectors an approximate index saves nothing over exact search (and IVF's k-means has
# too few points per list).
APPROXIMATE_MIN_BANK = 4096


class TorchFlatL2:
    """Exact k-NN in torch on the bank's device, with faiss' `search(queries, k) -> (distances, indices)` shape:
    squared L2 distances as IndexFlatL2 computes them for batched queries (||q||^2 + ||b||^2 - 2 q.b, clamped
    at 0), queries in chunks of `chunk` rows so that the [chunk, N] distance block stays small."""

    def __init__(self, bank: torch.Tensor, chunk: int = 4096):
        self.bank = bank.float().contiguous()
        self.bank_sq = (self.bank * self.bank).sum(1)
        self.chunk = chunk

    @torch.inference_mode()
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        queries = queries.to(self.bank.device, torch.float32)
        distances, indices = [], []
        # TF32 would round the products to 10 mantissa bits: off, as faiss computes in full float32.
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            for start in range(0, len(queries), self.chunk):
                q = queries[start : start + self.chunk]
                block = torch.addmm(self.bank_sq[None], q, self.bank.T, alpha=-2)
                block += (q * q).sum(1, keepdim=True)
                values, where = torch.topk(block, k, dim=1, largest=False)
                distances.append(values.clamp_(min=0))
                indices.append(where)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        return torch.cat(distances), torch.cat(indices)


class NearestNeighbourScorer:
    """k-NN over a memory bank (faiss; exact search of a GPU model in torch on its GPU); patch score = mean of
    the k squared L2 distances (official code).

    `index` is one of `NN_INDEXES` (see the module docstring); `nprobe` is IVF's, `pca_dim` and
    `refine_factor` are `pca_refine`'s; `device` is the model's."""

    def __init__(self, bank: np.ndarray, num_neighbors: int = 1, index: str = "flat", nprobe: int = 8,
                 pca_dim: int = 128, refine_factor: int = 8, device: str | torch.device = "cpu"):
        import faiss  # here, not at module level: `scorer_label` is used on the fast CLI / db paths

        bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.num_neighbors = min(num_neighbors, len(bank))
        self.torch_index: TorchFlatL2 | None = None
        dim = bank.shape[1]
        approximate = len(bank) >= APPROXIMATE_MIN_BANK
        on_gpu = torch.device(device).type != "cpu"
        cpu_note = f" (faiss on the CPU, the model on {device})" if on_gpu else ""
        if index == "flat" and on_gpu:
            self.torch_index = TorchFlatL2(torch.from_numpy(bank).to(device))
            self.description = f"exact (torch on {device})"
            return
        if index == "ivf" and approximate:
            nlist = int(math.sqrt(len(bank)))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
            self.index.train(bank)
            self.index.nprobe = nprobe
            self.description = f"faiss IVF-Flat ({nlist} lists, nprobe {nprobe}; approximate){cpu_note}"
        elif index == "pca_refine" and approximate and pca_dim < dim:
            self.index = faiss.index_factory(dim, f"PCA{pca_dim},Flat,RFlat")
            self.index.train(bank)
            faiss.downcast_index(self.index).k_factor = refine_factor
            self.description = (f"PCA-{pca_dim} candidates, exact re-rank of {refine_factor}x{self.num_neighbors} "
                                f"(faiss PCA,Flat,RFlat; approximate){cpu_note}")
        else:
            self.index = faiss.IndexFlatL2(dim)
            fallback = f" ({index} requested; bank of {len(bank)} is searched exactly)" if index != "flat" else ""
            self.description = f"exact (faiss IndexFlatL2){fallback}{cpu_note}"
        self.index.add(bank)

    def __call__(self, queries: np.ndarray | torch.Tensor) -> np.ndarray:
        """Patch scores [Q] of queries [Q, D] (numpy or a torch tensor on any device)."""
        if self.torch_index is not None:
            distances, _ = self.torch_index.search(torch.as_tensor(queries), self.num_neighbors)
            return distances.mean(dim=1).cpu().numpy()
        if isinstance(queries, torch.Tensor):
            queries = queries.cpu().numpy()
        distances, _ = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), self.num_neighbors)
        return distances.mean(axis=1)

    @classmethod
    def from_config(cls, bank: np.ndarray, config: Any, device: str | torch.device = "cpu") -> NearestNeighbourScorer:
        """The scorer a patch-memory-bank config asks for (`nn_index` and its parameters) for a model on
        `device`."""
        return cls(bank, config.num_neighbors, config.nn_index, config.ivf_nprobe, config.nn_pca_dim,
                   config.nn_refine_factor, device=device)


def scorer_label(config: Mapping[str, Any] | None) -> str | None:
    """Short name of the nearest-neighbour search a stored config asks for ("exact", "PCA-128 + re-rank x8",
    "IVF nprobe 8"); None for methods without a memory bank. Configs from before `nn_index` existed were
    exact."""
    if not config or "coreset_ratio" not in config:
        return None
    index = config.get("nn_index", "flat")
    k = config.get("num_neighbors", 1)
    suffix = f", k={k}" if k != 1 else ""
    if index == "pca_refine":
        return f"PCA-{config.get('nn_pca_dim', 128)} + re-rank x{config.get('nn_refine_factor', 8)}{suffix}"
    if index == "ivf":
        return f"IVF nprobe {config.get('ivf_nprobe', 8)}{suffix}"
    return f"exact{suffix}"


def check_patch_memory_bank(config: Any) -> None:
    """ConfigError on bad values of the fields every patch-feature + memory-bank method shares
    (coreset_ratio, patch_size, num_neighbors, nn_index and its parameters, stages, embed_dim_policy), with the same messages for each
    method."""
    from ad_core.components.features import EMBED_DIM_POLICIES
    from ad_core.errors import ConfigError

    if not 0 < config.coreset_ratio <= 1:
        raise ConfigError(f"coreset_ratio must be in (0, 1], got {config.coreset_ratio}")
    if config.patch_size < 1 or config.patch_size % 2 == 0:
        raise ConfigError(f"patch_size must be a positive odd number, got {config.patch_size}")
    if config.num_neighbors < 1:
        raise ConfigError(f"num_neighbors must be >= 1, got {config.num_neighbors}")
    if config.nn_index not in NN_INDEXES:
        raise ConfigError(f"nn_index must be one of {', '.join(NN_INDEXES)}, got {config.nn_index!r}")
    if config.ivf_nprobe < 1 or config.nn_pca_dim < 1 or config.nn_refine_factor < 1:
        raise ConfigError("ivf_nprobe, nn_pca_dim and nn_refine_factor must be >= 1, got "
                          f"{config.ivf_nprobe}, {config.nn_pca_dim}, {config.nn_refine_factor}")
    if not config.stages:
        raise ConfigError("stages must name at least one backbone stage")
    if config.embed_dim_policy not in EMBED_DIM_POLICIES:
        raise ConfigError(f"embed_dim_policy must be one of {EMBED_DIM_POLICIES}, got {config.embed_dim_policy!r}")
