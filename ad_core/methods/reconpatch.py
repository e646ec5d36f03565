"""ReConPatch (Hyun et al., "ReConPatch: Contrastive Patch Representation Learning for Industrial Anomaly
Detection", WACV 2024). No official code exists; this follows the formulas collected in
`/work/shared/research/methods.md` §2 and reuses PatchCore's feature pipeline, coreset and scorer (from
`ad_core.components`, shared with PatchCore).

Pipeline
--------
1. Frozen PatchCore patch features p (backbone stages 2+3, 3x3 aggregation, 1024-d), computed once per class
   and cached in memory (`cache_dtype`).
2. Online network: representation layer f (linear 1024 -> `repr_dim`, 512; `ensemble_repr_dim` = 384 for
   ensemble members) and projection layer g (linear -> `proj_dim`). Target network f̄, ḡ: EMA copies
   (θ̄ <- γ θ̄ + (1 - γ) θ after every optimiser step, γ = `ema_momentum`), never receiving gradients.
3. Pseudo-labels from the target embeddings z̄ = ḡ(f̄(p)) of a batch of N patches (no gradient):
   w^P_ij = exp(-||z̄_i - z̄_j||² / σ)                                        (`pairwise_similarity`)
   N_k(i) = the k patches nearest to z̄_i in the batch, i itself included (so k - 1 others);
   w̃^C_ij = |N_k(i) ∩ N_k(j)| / |N_k(i)| if j in N_k(i) else 0;
   R(i) = {j : j in N_h(i) and i in N_h(j)}, h = round(k / 2) rounded half to even as STML's np.around
   (k = 5 -> h = 2); i in R(i) always;
   ŵ^C_ij = mean over l in R(i) of w̃^C_lj;  w^C = (ŵ^C + ŵ^Cᵀ) / 2         (`contextual_similarity`)
   w = α w^P + (1 - α) w^C, α = 0.5, k = 5                                     (`pseudo_labels`)
   N_k is the plain (not mutual) kNN set, as in the paper's formula (STML's code uses a mutual one).
4. Relaxed contrastive loss on the online embeddings z = g(f(p))               (`relaxed_contrastive_loss`):
   δ_ij = ||z_i - z_j|| / μ_i with the normalisation constant μ_i = (1/N) Σ_n ||z_i - z_n|| (the mean over
   all N batch members, the anchor's own zero distance included; not detached, as in STML);
   L = (1/N) Σ_i Σ_j [w_ij δ_ij² + (1 - w_ij) max(m - δ_ij, 0)²], margin m = 1. The j = i term is a constant
   (δ_ii = 0; it is (1 - w_ii) m²) and carries no gradient.
5. Optimiser AdamP (lr 1e-5, weight decay 1e-2) with cosine annealing (per step, to 0 at the last step).
   One *epoch* = one pass, in random order and in batches of `batch_patches`, over the cached patches of the
   training images (or over a fresh random subset of `patches_per_epoch` of them when that is > 0); a final
   partial batch is dropped.
6. Memory bank = approximate greedy coreset (`coreset_ratio` 1%) of f(p) over all training patches; scoring
   exactly as PatchCore in f-space (faiss squared L2, k = 1, image score = max, bilinear map + Gaussian σ=4).

Ensemble mode (`ensemble_backbones` non-empty): one member per backbone, each with its own features, f/g
(`ensemble_repr_dim`), memory bank and score normalisation. A fraction `holdout_fraction` of the training
images (at least 2, drawn per member) is held out of that member's training and memory bank; the member
scores them, and its image scores and anomaly maps are then normalised with the modified z-score
(s - median) / (β · MAD), β = 1.4826, MAD = *median* absolute deviation (image scores: over the held-out
images; maps: over all pixels of the held-out maps). The members' normalised scores and maps are averaged.
Each member re-normalises the input images with its own backbone's mean/std. `backbone` is ignored in
ensemble mode.

Choices for what the paper leaves open (all config fields, so every result records them):
- z̄ is L2-normalised (`normalize_target`) and σ = `similarity_sigma` = 3, STML's setting (ReConPatch builds
  on STML). On the unit sphere ||z̄_i - z̄_j||² = 2 - 2 cos ∈ [0, 4], so w^P ∈ [e^(-4/3), 1] = [0.26, 1]
  whatever the backbone's feature scale. The lower bound matters: with the mean-normalised δ the loss puts
  weakly similar pairs at δ ∝ 1/w, so labels near 0 make a few pairs run far away, the bulk of z̄ then
  contracts, every w^P rises and the labels stop carrying information. We saw exactly this on MVTec bottle
  training patches with σ = 1 (mean w^P 0.25 -> 0.9 within 256 steps at lr 7.5e-4 and 3e-4; at 1e-4 still
  rising, 0.25 -> 0.38) and with σ = the batch's mean squared distance; with σ = 3 the mean w^P stayed at
  0.62-0.67 even at the fast preset's learning rate.
- γ = `ema_momentum` = 0.999 for the paper preset: ~19k steps on MVTec bottle, so the target lags the online
  network by ~1k steps (~5% of training, ~6 epochs): slow, as the paper's stability argument asks, yet it
  follows the online network many times over. The fast preset keeps the same ~5% ratio (γ = 0.92).
- g's output size `proj_dim` = 128 (the smaller of the two values used by unofficial ports; pseudo-labels
  and the loss only need a low-dimensional space, and the N x N work does not depend on it).
- Batches: `batch_patches` = 1024 patches drawn uniformly at random over all training images and positions,
  so the kNN relations in a batch reflect the whole class's patch distribution rather than one image's
  spatial neighbourhood; the N x N pseudo-label matrices stay small (4 MB).
- f is initialised with a random orthogonal matrix (orthonormal rows): at the start f(p) is a random
  projection of PatchCore's space (JL), so training starts from PatchCore's geometry. g: PyTorch's default.

The `fast` preset deviates from the paper to fit in about two minutes on one busy CPU core (MVTec bottle,
209 x 784 patches): EfficientNet-Lite0 with the bundled ImageNet weights; 16 epochs of 16,384 random
patches each (256 steps of 1,024 instead of ~19k); lr 7.5e-4 = the paper's 1e-5 x 19,200 / 256, i.e. the
same lr x steps budget (on bottle training patches f then moves 14% away from its initialisation, which
matches an extrapolation of paper-lr runs to 19k steps, ~13-18%); γ = 0.92 (lag ~12 steps = 5% of training,
as 0.999 is for the paper schedule).

What training buys at the fast preset (`benchmarks/reconpatch_study.py`, demo grass, the demo's hardest class
for PatchCore, seed 0, full-image frame; lab note in docs/reconpatch-study.md): little or nothing. The loss on
a fixed probe batch with the initial target's pseudo-labels falls by only 0.3 % (317.0 -> 316.0; most of the
relaxed-contrastive loss is a floor that soft labels of 0.25-0.6 cannot go below), the training loss against
the moving EMA target rises (318 -> 327, the labels densify), and an untrained f (`epochs = 0`, PatchCore's
features through the orthogonal initial projection) scores as well or better at equal bank size (1 %: image
AUROC 0.900 vs 0.865, AUPRO 0.814 vs 0.816; 5 %: 0.845 vs 0.835, AUPRO 0.868 vs 0.849). lr 2.5e-4..2.5e-3 and
4..32 epochs give image AUROC 0.855-0.880 and AUPRO 0.812-0.822: no setting is distinguishable from the others
on this test set (one misranked pair moves image AUROC by 0.005), so the fast preset was kept. The paper's
gain (+0.1 pt over PatchCore on MVTec AD with WRN-50 at 120 epochs) is not reproduced at this budget.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from adamp import AdamP
from torch import nn

from ad_core.components import (
    MAD_BETA,
    NearestNeighbourScorer,
    PatchFeatures,
    Renormalised,
    approximate_greedy_coreset,
    check_patch_memory_bank,
    collect_patch_features,
    modified_z_score,
    robust_stats,
    scores_to_prediction,
)
from ad_core.data.base import Preprocess
from ad_core.methods.base import (
    AnomalyModel,
    ConfigError,
    MethodConfig,
    Prediction,
    ProgressFn,
    no_progress,
    register,
)

# ---------------------------------------------------------------------------------------------------------
# Pseudo-labels and loss (pure functions on [N, d] tensors)


def squared_distances(z: torch.Tensor) -> torch.Tensor:
    """[N, d] -> [N, N] squared Euclidean distances (exactly 0 on the diagonal, never negative)."""
    sq = (z * z).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)).clamp_min(0.0)
    return d2.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), 0.0)


def pairwise_distances(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """[N, d] -> [N, N] Euclidean distances with finite gradients (zero distances get zero gradient)."""
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    return squared_distances(z).clamp_min(eps).sqrt().masked_fill(eye, 0.0)


def pairwise_similarity(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """w^P_ij = exp(-||z_i - z_j||² / sigma)."""
    return torch.exp(-squared_distances(z) / sigma)


def knn_indices(z: torch.Tensor, k: int) -> torch.Tensor:
    """[N, k] indices of the k nearest points of every point, itself first (so k - 1 others), nearest first."""
    d2 = squared_distances(z)
    d2.fill_diagonal_(-1.0)  # self first even when duplicates exist
    return d2.topk(min(k, len(z)), dim=1, largest=False).indices


def reciprocal_half(k: int) -> int:
    """Neighbourhood size of the query expansion: round(k / 2), half to even as STML's np.around; at least 1."""
    return max(1, round(k / 2))


def contextual_similarity(z: torch.Tensor, k: int) -> torch.Tensor:
    """w^C: kNN-overlap similarity with k/2-reciprocal query expansion, symmetrised (see the module docstring)."""
    n = len(z)
    nbr = knn_indices(z, k)  # N_k(i), self included
    k = nbr.shape[1]
    member = torch.zeros(n, n, dtype=z.dtype, device=z.device).scatter_(1, nbr, 1.0)  # [i, j] = j in N_k(i)
    # |N_k(i) ∩ N_k(j)| for j = nbr[i, a]: how many of i's neighbours are also neighbours of j.
    overlap = member[nbr[:, :, None], nbr[:, None, :]].sum(-1)  # [N, k]
    w_tilde = torch.zeros(n, n, dtype=z.dtype, device=z.device).scatter_(1, nbr, overlap / k)
    half = nbr[:, : reciprocal_half(k)]  # N_h(i)
    member_half = torch.zeros(n, n, dtype=torch.bool, device=z.device).scatter_(1, half, True)
    # l = half[i, a] is in R(i) when i is also in N_h(l).
    reciprocal = member_half[half, torch.arange(n, device=z.device)[:, None]].to(z.dtype)  # [N, h]
    w_hat = (w_tilde[half] * reciprocal[:, :, None]).sum(1) / reciprocal.sum(1, keepdim=True)
    return 0.5 * (w_hat + w_hat.T)


def pseudo_labels(z: torch.Tensor, sigma: float, k: int, alpha: float) -> torch.Tensor:
    """w = alpha * w^P + (1 - alpha) * w^C on target embeddings z (no gradient needed)."""
    return alpha * pairwise_similarity(z, sigma) + (1.0 - alpha) * contextual_similarity(z, k)


def relaxed_contrastive_loss(z: torch.Tensor, w: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """(1/N) Σ_i Σ_j [w_ij δ_ij² + (1 - w_ij) max(margin - δ_ij, 0)²], δ_ij = ||z_i - z_j|| / μ_i.

    μ_i = (1/N) Σ_n ||z_i - z_n|| is the anchor's mean distance over all N batch members (its own zero
    distance included).
    """
    d = pairwise_distances(z)
    delta = d / d.mean(dim=1, keepdim=True).clamp_min(1e-12)
    per_pair = w * delta.pow(2) + (1.0 - w) * F.relu(margin - delta).pow(2)
    return per_pair.sum(1).mean()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """θ̄ <- momentum · θ̄ + (1 - momentum) · θ, parameter by parameter."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class ReConPatchConfig(MethodConfig):
    """ReConPatch hyperparameters. The PatchCore-like fields (patch features, coreset, scorer, map smoothing)
    are declared here with their own defaults, so that changing a PatchCore default never changes ReConPatch.
    """

    # --- frozen patch features (PatchCore's, `ad_core.components.PatchFeatures`) ---
    # torchvision's ImageNet weights, as official PatchCore (timm's default tag, racm_in1k, is another training).
    backbone: str = "wide_resnet50_2.tv_in1k"
    weights: str = "imagenet"
    stages: tuple[int, ...] = (2, 3)
    patch_size: int = 3
    pretrain_embed_dim: int = 1024
    target_embed_dim: int = 1024
    # PatchCore's option (see its docstring); "official" here because f's input size and every ReConPatch
    # number so far (docs/reconpatch-study.md) come from the official 1024 + 1024 pooling.
    embed_dim_policy: str = "official"
    # --- memory bank and scoring (in f-space) ---
    coreset_ratio: float = 0.01
    coreset_projection_dim: int = 128
    coreset_start_points: int = 10
    num_neighbors: int = 1
    sigma: float = 4.0
    # "flat" = exact search | "pca_refine" | "ivf" (approximate; ad_core/components/scoring.py).
    nn_index: str = "flat"
    ivf_nprobe: int = 8
    nn_pca_dim: int = 128
    nn_refine_factor: int = 8
    # --- representation learning ---
    repr_dim: int = 512
    ensemble_repr_dim: int = 384
    proj_dim: int = 128
    epochs: int = 120  # 0 = ablation: f and g stay at their initialisation (f: a random orthogonal projection)
    batch_patches: int = 1024
    patches_per_epoch: int = 0  # 0 = every cached patch once per epoch
    lr: float = 1e-5
    weight_decay: float = 1e-2
    ema_momentum: float = 0.999
    similarity_sigma: float = 3.0
    normalize_target: bool = True
    alpha: float = 0.5
    knn_k: int = 5
    margin: float = 1.0
    cache_dtype: str = "float32"  # "float32" | "float16": storage of the cached patch features
    ensemble_backbones: tuple[str, ...] = ()
    holdout_fraction: float = 0.1
    mad_beta: float = MAD_BETA

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU demo (deviates from the paper; see the module docstring): bundled EfficientNet-Lite0 weights,
        # 16 x 16,384 random patches, lr scaled to the step count, faster EMA.
        "fast": {
            "backbone": "tf_efficientnet_lite0",
            "weights": "bundled",
            "epochs": 16,
            "patches_per_epoch": 16384,
            "lr": 7.5e-4,
            "ema_momentum": 0.92,
        },
        # The paper's ensemble (WRN-101 + ResNeXt-101 + DenseNet-201, 384-d f, 60 epochs, lr 1e-6) at 320 px
        # with the official PatchCore ensemble geometry (Resize 366, CenterCrop 320).
        "ensemble": {
            # Tags pinned to torchvision's weights (official PatchCore's ensemble; timm's defaults today, but a
            # timm release that changes a default must not change these results silently).
            "backbone": "wide_resnet101_2.tv_in1k",
            "ensemble_backbones": ("wide_resnet101_2.tv_in1k", "resnext101_32x8d.tv_in1k", "densenet201.tv_in1k"),
            "epochs": 60,
            "lr": 1e-6,
            "resize": 366,
            "crop": 320,
        },
    }

    def validate(self) -> None:
        super().validate()
        check_patch_memory_bank(self)
        for name in ("repr_dim", "ensemble_repr_dim", "proj_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0 (0 = untrained f, an ablation), got {self.epochs}")
        if self.knn_k < 1:
            raise ConfigError(f"knn_k must be >= 1, got {self.knn_k}")
        if self.batch_patches <= self.knn_k:
            raise ConfigError(
                f"batch_patches ({self.batch_patches}) must be larger than knn_k ({self.knn_k})"
            )
        if self.patches_per_epoch < 0:
            raise ConfigError(
                f"patches_per_epoch must be >= 0 (0 = all patches), got {self.patches_per_epoch}"
            )
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if not 0 <= self.ema_momentum < 1:
            raise ConfigError(f"ema_momentum must be in [0, 1), got {self.ema_momentum}")
        if self.similarity_sigma <= 0:
            raise ConfigError(f"similarity_sigma must be > 0, got {self.similarity_sigma}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.margin <= 0:
            raise ConfigError(f"margin must be > 0, got {self.margin}")
        if self.cache_dtype not in ("float32", "float16"):
            raise ConfigError(f"cache_dtype must be 'float32' or 'float16', got {self.cache_dtype!r}")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.mad_beta <= 0:
            raise ConfigError(f"mad_beta must be > 0, got {self.mad_beta}")
        if len(set(self.ensemble_backbones)) != len(self.ensemble_backbones):
            raise ConfigError(f"ensemble_backbones has duplicates: {self.ensemble_backbones}")
        if len(self.ensemble_backbones) == 1:
            raise ConfigError(
                "ensemble_backbones needs at least 2 backbones (leave it empty for a single model)"
            )

    def backbone_names(self) -> tuple[str, ...]:
        return self.ensemble_backbones or (self.backbone,)

    def holdout_size(self, n_images: int) -> int:
        """Training images an ensemble member holds out to fit its score normalisation (at least 2)."""
        return max(2, round(self.holdout_fraction * n_images))


# ---------------------------------------------------------------------------------------------------------
# Model


class _Member:
    """One backbone: frozen patch features, trainable f/g, their EMA targets, memory bank, score statistics."""

    def __init__(self, config: ReConPatchConfig, backbone: str, repr_dim: int, device: torch.device):
        self.config = dataclasses.replace(config, backbone=backbone)
        self.features = PatchFeatures(
            backbone,
            config.weights,
            stages=config.stages,
            patch_size=config.patch_size,
            pretrain_embed_dim=config.pretrain_embed_dim,
            target_embed_dim=config.target_embed_dim,
            embed_dim_policy=config.embed_dim_policy,
            device=device,
        )
        self.f = nn.Linear(self.features.dim, repr_dim).to(device)
        nn.init.orthogonal_(self.f.weight)
        self.g = nn.Linear(repr_dim, config.proj_dim).to(device)
        self.f_target = copy.deepcopy(self.f).requires_grad_(False)
        self.g_target = copy.deepcopy(self.g).requires_grad_(False)
        self.memory_bank: np.ndarray | None = None
        self.scorer: NearestNeighbourScorer | None = None
        self.norm: dict[str, float] | None = None  # median/MAD of image scores and map pixels (ensembles)

    @property
    def preprocess(self) -> Preprocess:
        bb = self.features.backbone
        return Preprocess(resize=self.config.resize, crop=self.config.crop, mean=bb.mean, std=bb.std)

    def set_bank(self, bank: np.ndarray) -> None:
        self.memory_bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.scorer = NearestNeighbourScorer.from_config(self.memory_bank, self.config)

    @torch.no_grad()
    def embed(self, features: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """f(p) for [M, D] features (any float dtype), in chunks -> [M, repr_dim] float32 on the CPU."""
        device = self.f.weight.device
        return torch.cat(
            [self.f(features[i : i + chunk].to(device).float()).cpu() for i in range(0, len(features), chunk)]
        )

    def patch_scores(self, grid: torch.Tensor) -> torch.Tensor:
        """[B, h, w, D] patch features -> [B, h, w] nearest-neighbour scores in f-space."""
        if self.scorer is None:
            raise RuntimeError("ReConPatch.predict called before fit/load")
        b, h, w, d = grid.shape
        scores = self.scorer(self.embed(grid.reshape(-1, d)).numpy())
        return torch.from_numpy(scores.reshape(b, h, w))


@register
class ReConPatch(AnomalyModel):
    name = "reconpatch"
    Config = ReConPatchConfig

    def __init__(self, config: ReConPatchConfig, device: str | torch.device = "cpu"):
        super().__init__(config, device)
        ensemble = bool(config.ensemble_backbones)
        backbones = config.ensemble_backbones if ensemble else (config.backbone,)
        repr_dim = config.ensemble_repr_dim if ensemble else config.repr_dim
        self.members = [_Member(config, name, repr_dim, self.device) for name in backbones]
        self.weights_source = "; ".join(
            dict.fromkeys(m.features.backbone.weights_source for m in self.members)
        )
        # Per member and epoch: mean training loss, the fixed-probe loss (epoch 0: before training), lr.
        self.history: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}

    @classmethod
    def check_data(cls, config: ReConPatchConfig, train_counts: dict[str, dict[str, int]]) -> None:
        if not config.ensemble_backbones:
            return
        for category, counts in train_counts.items():
            n = counts["train"] - counts.get("train_anomalous", 0)
            n_hold = config.holdout_size(n)
            if n - n_hold < 1:
                raise ConfigError(
                    f"ReConPatch ensemble holds out {n_hold} of the {n} normal training images of {category} "
                    f"(holdout_fraction={config.holdout_fraction}, at least 2) and needs at least one left to "
                    "train on; use more training images or a single backbone"
                )

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    def preprocess(self) -> Preprocess:
        return self.members[0].preprocess

    # --- training ----------------------------------------------------------------------------------
    def fit(self, train_loader: torch.utils.data.DataLoader, progress: ProgressFn = no_progress) -> None:
        generator = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**63)
        self.history, self.timings = [], {}
        n_members = len(self.members)
        for index, member in enumerate(self.members):
            lo, span = index / n_members, 1.0 / n_members

            def sub(a: float, b: float, lo: float = lo, span: float = span) -> ProgressFn:
                return lambda f, m: progress(lo + span * (a + (b - a) * f), m)

            self._fit_member(index, member, train_loader, generator, sub)
        progress(1.0, f"ReConPatch fitted ({n_members} member(s)): {self.timings}")

    def _fit_member(self, index: int, member: _Member, loader: Any, generator: torch.Generator, sub) -> None:
        c = self.config
        tag = f"[{member.config.backbone}] " if self.is_ensemble else ""
        start = time.perf_counter()
        images = Renormalised(loader, self.preprocess(), member.preprocess)
        flat = collect_patch_features(member.features, images, sub(0.0, 0.2))
        n_images = images.images
        per_image = len(flat) // max(n_images, 1)
        side = math.isqrt(per_image)
        if n_images == 0 or per_image * n_images != len(flat) or side * side != per_image:
            raise RuntimeError(f"cannot split {len(flat)} patch features into {n_images} square grids")
        cache = flat.to(torch.float16) if c.cache_dtype == "float16" else flat
        del flat
        grids = cache.reshape(n_images, per_image, -1)
        self._add_time(f"{tag}features_s", start)

        held_out = None
        if self.is_ensemble:
            n_hold = c.holdout_size(n_images)
            if n_images - n_hold < 1:
                raise ValueError(
                    f"ensemble mode holds out {n_hold} images; {n_images} training images are too few"
                )
            order = torch.randperm(n_images, generator=generator)
            held_out = grids[order[:n_hold]]
            train = grids[order[n_hold:]].reshape(-1, grids.shape[-1])
        else:
            train = cache
        del grids, cache

        start = time.perf_counter()
        self._train(index, member, train, generator, sub(0.2, 0.8), tag)
        self._add_time(f"{tag}train_s", start)

        start = time.perf_counter()
        embedded = member.embed(train)
        keep = approximate_greedy_coreset(
            embedded,
            c.coreset_ratio,
            c.coreset_projection_dim,
            c.coreset_start_points,
            generator,
            sub(0.8, 0.97),
        )
        member.set_bank(embedded[keep].numpy())
        del embedded, train
        self._add_time(f"{tag}coreset_s", start)

        if held_out is not None:
            grid = held_out.reshape(len(held_out), side, side, -1)
            prediction = scores_to_prediction(member.patch_scores(grid), (c.crop, c.crop), c.sigma)
            image_median, image_mad = robust_stats(prediction.image_scores)
            map_median, map_mad = robust_stats(prediction.anomaly_maps)
            member.norm = {
                "image_median": image_median,
                "image_mad": image_mad,
                "map_median": map_median,
                "map_mad": map_mad,
                "held_out_images": len(held_out),
            }
        sub(0.97, 1.0)(1.0, f"{tag}memory bank: {len(keep)} patches")

    def _add_time(self, key: str, start: float) -> None:
        self.timings[key] = round(time.perf_counter() - start, 3)

    def _train(
        self,
        index: int,
        member: _Member,
        features: torch.Tensor,
        generator: torch.Generator,
        progress,
        tag: str,
    ) -> None:
        c = self.config
        if c.epochs == 0:  # the untrained-f ablation: PatchCore's features through f's initial projection
            progress(1.0, f"{tag}epochs = 0: f keeps its initialisation (no representation learning)")
            return
        n = len(features)
        per_epoch = min(c.patches_per_epoch, n) if c.patches_per_epoch > 0 else n
        batch = min(c.batch_patches, per_epoch)
        if batch <= c.knn_k:
            raise ValueError(f"only {per_epoch} patches per epoch; need more than knn_k = {c.knn_k}")
        steps_per_epoch = per_epoch // batch
        total = c.epochs * steps_per_epoch
        params = [*member.f.parameters(), *member.g.parameters()]
        optimizer = AdamP(params, lr=c.lr, weight_decay=c.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        device = member.f.weight.device
        # A fixed probe: one batch with the pseudo-labels of the initial target. The training loss is measured
        # against labels from the moving EMA target, so it is no fixed objective (it can rise while the
        # labels densify); the probe loss shows whether the optimiser lowers the loss on fixed labels.
        probe_draw = torch.Generator().manual_seed(generator.initial_seed() + 1)  # leaves training's draws alone
        probe = features[torch.randperm(n, generator=probe_draw)[:batch]].to(device).float()
        with torch.no_grad():
            probe_target = member.g_target(member.f_target(probe))
            if c.normalize_target:
                probe_target = F.normalize(probe_target, dim=1)
            probe_w = pseudo_labels(probe_target, c.similarity_sigma, c.knn_k, c.alpha)

        def probe_loss() -> float:
            with torch.no_grad():
                return float(relaxed_contrastive_loss(member.g(member.f(probe)), probe_w, c.margin))

        self.history.append({"member": index, "epoch": 0, "loss": None, "probe_loss": probe_loss(), "lr": None})
        step = 0
        for epoch in range(c.epochs):
            order = torch.randperm(n, generator=generator)[:per_epoch]
            losses = []
            lr = optimizer.param_groups[0]["lr"]
            for s in range(steps_per_epoch):
                p = features[order[s * batch : (s + 1) * batch]].to(device).float()
                with torch.no_grad():
                    z_target = member.g_target(member.f_target(p))
                    if c.normalize_target:
                        z_target = F.normalize(z_target, dim=1)
                    w = pseudo_labels(z_target, c.similarity_sigma, c.knn_k, c.alpha)
                loss = relaxed_contrastive_loss(member.g(member.f(p)), w, c.margin)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                ema_update(member.f_target, member.f, c.ema_momentum)
                ema_update(member.g_target, member.g, c.ema_momentum)
                losses.append(float(loss.detach()))
                step += 1
            mean_loss = float(np.mean(losses))
            fixed = probe_loss()
            self.history.append({"member": index, "epoch": epoch + 1, "loss": mean_loss, "probe_loss": fixed, "lr": lr})
            progress(step / total, f"{tag}epoch {epoch + 1}/{c.epochs}: loss {mean_loss:.4f} (probe {fixed:.4f})")

    # --- inference ---------------------------------------------------------------------------------
    def predict(self, images: torch.Tensor) -> Prediction:
        size = tuple(images.shape[-2:])
        if not self.is_ensemble:
            member = self.members[0]
            return scores_to_prediction(member.patch_scores(member.features(images)), size, self.config.sigma)
        scores, maps = [], []
        for member in self.members:
            if member.norm is None:
                raise RuntimeError(
                    "ReConPatch ensemble member has no normalisation statistics (fit/load first)"
                )
            converted = Renormalised(None, self.preprocess(), member.preprocess).convert(images)
            pred = scores_to_prediction(
                member.patch_scores(member.features(converted)), size, self.config.sigma
            )
            n, beta = member.norm, self.config.mad_beta
            scores.append(modified_z_score(pred.image_scores, n["image_median"], n["image_mad"], beta))
            maps.append(modified_z_score(pred.anomaly_maps, n["map_median"], n["map_mad"], beta))
        return Prediction(
            image_scores=np.mean(scores, axis=0).astype(np.float32),
            anomaly_maps=np.mean(maps, axis=0).astype(np.float32),
        )

    def describe(self) -> dict[str, Any]:
        """The base description plus the training curve (per member and epoch: mean relaxed-contrastive loss
        and lr), so that a stored result shows whether representation learning moved at all."""
        # The members share the config, hence the search; what ran is the first fitted member's.
        scorer = next((m.scorer.description for m in self.members if m.scorer is not None), None)
        return {**super().describe(), "history": list(self.history), "scorer": scorer}

    # --- persistence -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "members": [
                {
                    "backbone": m.config.backbone,
                    "f": {k: v.detach().cpu() for k, v in m.f.state_dict().items()},
                    "g": {k: v.detach().cpu() for k, v in m.g.state_dict().items()},
                    "memory_bank": m.memory_bank,
                    "norm": m.norm,
                }
                for m in self.members
            ],
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        members = state["members"]
        names = [m["backbone"] for m in members]
        if names != [m.config.backbone for m in self.members]:
            raise ValueError(
                f"saved members {names} do not match the config's {[m.config.backbone for m in self.members]}"
            )
        for member, saved in zip(self.members, members, strict=True):
            member.f.load_state_dict(saved["f"])
            member.g.load_state_dict(saved["g"])
            member.f_target.load_state_dict(saved["f"])
            member.g_target.load_state_dict(saved["g"])
            member.set_bank(saved["memory_bank"])
            member.norm = saved["norm"]
        self.history = list(state.get("history", []))


@register
class ReConPatchUnified(ReConPatch):
    """ReConPatch's "unified" multi-class baseline: f/g trained and one memory bank built over the normal
    patches of every class of the run; class-agnostic scoring (the class of a test image is not used)."""

    name = "reconpatch_unified"
    learning_type = "multi_class"

    def predict(self, images: torch.Tensor, categories: list[str] | None = None) -> Prediction:
        return super().predict(images)
