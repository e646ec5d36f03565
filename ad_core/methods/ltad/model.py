"""LTAD (Ho, Peng, Vasconcelos, "Long-Tailed Anomaly Detection with Learnable Class Names", CVPR 2024, arXiv
2403.20236): one model for all classes of a long-tailed training set, unsupervised, class-aware at test time.

No official code is public, nor the paper's body here: what is known (abstract, project-page and Fig. 3
captions, secondary summaries) is in `../shared/research/methods.md` §5. Everything else is our choice, a
config field, and listed below.

Pipeline
--------
0. Patch features p of every training image (frozen; `patch_source`): the foundation model's image encoder
   (ViT patch tokens after `foundation_blocks`, concatenated and average-pooled to `feature_dim`), or a timm
   backbone's PatchCore features (`ad_core.components.PatchFeatures`); average-pooled to a
   `token_grid` x `token_grid` grid and L2-normalised per patch (`feature_norm`).
1. Phase 1a — pseudo class names: per class c, `n_name_tokens` learned token embeddings s_c spliced into
   `class_prompt` ("a photo of a {}."). The frozen text encoder T maps the prompt to t_c; the names are learned
   by softmax classification of the frozen global image embeddings E(x) over the classes
   (logits cos(E(x), t_c) / `name_temperature`; class-balanced cross-entropy when `class_balanced`).
   Phase 1b — feature synthesis: a conditional VAE over feature maps (`ad_core.methods.ltad.vae`), conditioned
   on t_c, trained on the real maps; it then synthesises maps for the tail classes (see "tail augmentation").
2. Phase 2 — on real + synthetic maps: the transformer reconstruction module Π (`networks.ReconstructionModule`,
   UniAD-style) learns to reconstruct clean tokens from jittered ones (loss ||Π(p~) - p||^2); the patch
   projection P (`networks.PatchProjection`) maps patches into the joint space, trained as a binary classifier
   against t_{n,c} = T(`normal_prompt` with s_c) and t_{a,c} = T(`abnormal_prompt` with s_c): normal patches
   -> normal, pseudo-anomalous patches (the same patches plus Gaussian noise of relative norm `sem_noise`,
   re-normalised) -> abnormal.
3. Scoring, class-aware: S(p, c) = S_rec(p) + λ · S_sem(p, c) per patch, with S_rec(p) = ||Π(p) - p||^2 and
   S_sem(p, c) = softmax(cos(P(p), t_{n,c}) / τ, cos(P(p), t_{a,c}) / τ)[abnormal]. The class c of a test image
   comes from the split; a class that was not in training is an error. Image score = max over patches;
   anomaly map = bilinear upsampling + Gaussian σ = `sigma` (as PatchCore, `scores_to_prediction`).

Tail augmentation (`tail_augmentation`): the classes named in `augment_classes`, or, when none are named,
every class with fewer than `augment_below` training images, get `augment_to` - n_c synthetic feature maps.
`describe()` records which classes got how many.

Weights: `foundation` = "open_clip:<arch>:<pretrained tag | checkpoint path | random>"
(`ad_core.methods.ltad.foundation`). With `random` every result says "random foundation model (NOT
pretrained)" in its weights source; λ = 0 is labelled "semantic branch disabled (λ = 0)" there too.

Choices (paper / what we do / why); every one is a config field unless marked fixed
----------------------------------------------------------------------------------------------------------------
| topic | paper says | we do | why |
|---|---|---|---|
| foundation model | pretrained foundation model, image encoder E and text encoder T; ALIGN per a secondary summary (unconfirmed) | open_clip CLIP (`foundation`): paper preset `open_clip:ViT-B-16:openai`; fast preset `open_clip:ViT-B-32:random` (labelled) | open_clip is a maintained library with pretrained tags and offline checkpoint paths; ALIGN is not in open_clip (transformers is refused with a clear error); no foundation weights are reachable on our CPU machines |
| patch features p | "patch features", image features f_real from E | paper preset: ViT-B-16 tokens after blocks 6, 9, 12, concatenated, pooled to 1024-d, 14x14; fast: EfficientNet-Lite0 (bundled ImageNet weights) PatchCore features, stages 2+3, 384-d, pooled to 14x14 (`patch_source`, `foundation_blocks`, `feature_dim`, `token_grid`) | the caption names E as the feature source; on CPU with a random foundation model, E's tokens would make the reconstruction branch noise as well, the bundled backbone keeps it meaningful |
| feature normalisation | ? | L2 per patch (`feature_norm`) | one scale for all classes; S_rec ∈ [0, 4] is then commensurate with S_sem ∈ [0, 1] |
| pseudo class names | learned token embeddings s_c per class | `n_name_tokens` = 4 per class, N(0, 0.02²) init (`name_init_std`), spliced into the prompt's token embeddings; foundation frozen | CoOp's prompt-learning recipe; 4 tokens ~ a multi-word class name |
| how names are learned | phase 1, no detail | class-balanced softmax over classes of cos(E(x), T("a photo of a {s_c}.")) / 0.07, Adam lr 1e-2 (paper 300 / fast 60 full-batch steps), at most `name_images_per_class` images per class (paper: all; fast: 12) | the standard way to learn a class token in a CLIP space; balancing keeps tail names from being absorbed by head classes |
| prompts | static normal (v_n) / abnormal (v_a) part + s_c | "a photo of a flawless {}." / "a photo of a damaged {}." (`normal_prompt`, `abnormal_prompt`) | WinCLIP-style state words; one template each |
| VAE | phase 1, "VAE-style decoder ... conditioned on a learned pseudo class name" | conv conditional VAE over whole feature maps, condition t_c (names frozen first: 1a then 1b), latent grid h/2 x w/2 x 32, hidden 256, Gaussian NLL with σ² = feature variance + β·KL, β = 1, Adam 1e-3, class-balanced batches (`vae_*`, `class_balanced`) | whole maps keep the spatial structure the transformer RM needs; calibrated σ makes β = 1 a proper ELBO; learning names first makes the condition fixed |
| synthesis | augments tail classes | prior samples z ~ N(0, I) decoded with the class condition (`synth_from` = "prior"; "posterior" = around real maps of the class), `synth_temperature` 1 | the caption describes a decoder conditioned on the name, i.e. generation from the name |
| which classes, how many | tail classes | named in `augment_classes`, else n_c < `augment_below` = 20 (the long-tail literature's few-shot bound); topped up to `augment_to` = 50 maps | explicit and reproducible; 50 lifts few-shot classes into the medium range |
| reconstruction module Π | transformer-based RM on patch features; S_rec = ‖Π(p) − p‖² | UniAD-like encoder-decoder, learned queries, 7x7 neighbour mask, pre-norm, d = 256, 4 + 4 layers, 8 heads, FFN 1024, dropout 0.1, token jitter 0.5 (paper preset); fast: d = 128, 2 + 2 layers, 4 heads, FFN 256 (`rm_*`) | UniAD is the transformer reconstruction model of unified multi-class AD; learned queries + mask + jitter prevent the identity shortcut |
| patch projections / SAD | binary normal/abnormal classifier in the joint space, patch projections | MLP D -> 512 -> E, L2-normalised; CE over {t_n,c, t_a,c} at τ = 0.07; negatives = normal patches + Gaussian noise of relative norm 0.5, re-normalised (`sem_*`) | the training set has no anomalies: feature-space noise (SimpleNet) is the standard unsupervised negative; re-normalising removes a norm shortcut |
| λ | S = S_rec + λ S_sem, λ not public | λ = 1 (`lambda_sem`); 0 disables the semantic branch (labelled) | both terms are O(1) after L2 normalisation; not tuned on test data |
| phase-2 training | learns RM and patch projections on real + synthetic features | AdamW lr 1e-4, wd 1e-4, batch 16 maps, 20k steps (paper preset); fast: lr 1e-3, 400 steps; uniform over real + synthetic maps (`train_*`) | UniAD's optimiser; the fast schedule fits a CPU |
| image score, map | ? | max patch score; bilinear + Gaussian σ = 4 (`sigma`) | as PatchCore here |
| randomness | - | one torch Generator seeded from `torch.initial_seed()` (sampling, noise, VAE); modules initialised from the seeded global RNG (fixed) | a seed gives the same model on a CPU |

The `fast` preset is a CPU demo of the method's mechanics, not its accuracy: random foundation weights make the
names, prompts and text anchors arbitrary (but fixed) vectors. It keeps the semantic branch ON (λ = 1),
labelled, because the branch is then still a trained patch discriminator (bundled ImageNet features vs
feature-noise negatives) with class-specific anchors, not noise; set `lambda_sem=0` for the
reconstruction-only variant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ad_core.components import PatchFeatures, scores_to_prediction
from ad_core.data.base import Preprocess
from ad_core.errors import WeightsError
from ad_core.methods.base import (
    AnomalyModel,
    ConfigError,
    MethodConfig,
    Prediction,
    ProgressFn,
    no_progress,
    register,
)
from ad_core.methods.ltad.foundation import FOUNDATION_RANDOM_LABEL, Foundation, FoundationSpec
from ad_core.methods.ltad.networks import (
    PatchProjection,
    ReconstructionModule,
    jitter,
    sem_logits,
    sem_scores,
)
from ad_core.methods.ltad.vae import FeatureVAE

PATCH_SOURCES = ("foundation", "backbone")
FEATURE_NORMS = ("l2", "none")
SYNTH_FROM = ("prior", "posterior")
SEMANTIC_OFF_LABEL = "semantic branch disabled (λ = 0)"


@dataclass
class LTADConfig(MethodConfig):
    """LTAD; defaults = the paper preset (GPU-sized choices where the paper is silent: see the module table).

    `backbone`/`weights`/`stages`/`patch_size`/`pretrain_embed_dim` are used only with
    patch_source="backbone". `batch_size` is the loading/prediction batch; `train_batch` the phase-2 batch.
    """

    backbone: str = "wide_resnet50_2.tv_in1k"  # torchvision's ImageNet weights, as PatchCore's
    weights: str = "imagenet"
    resize: int = 224
    crop: int = 224
    batch_size: int = 8
    # foundation model and patch features
    foundation: str = "open_clip:ViT-B-16:openai"
    foundation_image_size: int = 0  # 0 = the model's own input size
    patch_source: str = "foundation"
    foundation_blocks: tuple[int, ...] = (6, 9, 12)
    stages: tuple[int, ...] = (2, 3)
    patch_size: int = 3
    pretrain_embed_dim: int = 1024
    feature_dim: int = 1024
    token_grid: int = 14
    feature_norm: str = "l2"
    # phase 1a: pseudo class names
    n_name_tokens: int = 4
    name_init_std: float = 0.02
    class_prompt: str = "a photo of a {}."
    normal_prompt: str = "a photo of a flawless {}."
    abnormal_prompt: str = "a photo of a damaged {}."
    name_steps: int = 300
    name_lr: float = 1e-2
    name_temperature: float = 0.07
    name_images_per_class: int = 0  # 0 = all
    class_balanced: bool = True
    # phase 1b: VAE and tail augmentation
    tail_augmentation: bool = True
    augment_classes: tuple[str, ...] = ()
    augment_below: int = 20
    augment_to: int = 50
    vae_hidden: int = 256
    vae_latent: int = 32
    vae_beta: float = 1.0
    vae_steps: int = 3000
    vae_lr: float = 1e-3
    vae_batch: int = 16
    synth_from: str = "prior"
    synth_temperature: float = 1.0
    # phase 2: reconstruction module and semantic AD
    rm_dim: int = 256
    rm_enc_layers: int = 4
    rm_dec_layers: int = 4
    rm_heads: int = 8
    rm_ff: int = 1024
    rm_neighbour: int = 7
    rm_dropout: float = 0.1
    rm_jitter: float = 0.5
    sem_hidden: int = 512
    sem_temperature: float = 0.07
    sem_noise: float = 0.5
    lambda_sem: float = 1.0
    train_steps: int = 20000
    train_lr: float = 1e-4
    train_weight_decay: float = 1e-4
    train_batch: int = 16
    sigma: float = 4.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU demo (minutes on the 10-class demo): bundled EfficientNet-Lite0 patch features, a RANDOM foundation
        # model (labelled; no foundation weights are reachable offline), small RM, short schedules.
        "fast": {
            "backbone": "tf_efficientnet_lite0", "weights": "bundled", "resize": 256, "crop": 224,
            "foundation": "open_clip:ViT-B-32:random", "patch_source": "backbone", "feature_dim": 384,
            "pretrain_embed_dim": 512, "name_steps": 20, "name_lr": 3e-2, "name_images_per_class": 8,
            "vae_steps": 150, "vae_batch": 8, "vae_hidden": 64, "rm_dim": 64, "rm_enc_layers": 2,
            "rm_dec_layers": 2, "rm_heads": 4, "rm_ff": 128, "rm_dropout": 0.0, "sem_hidden": 128,
            "train_steps": 200, "train_batch": 8, "train_lr": 1e-3,
        },
    }

    def validate(self) -> None:
        super().validate()
        if self.patch_source not in PATCH_SOURCES:
            raise ConfigError(f"patch_source must be one of {', '.join(PATCH_SOURCES)}, got {self.patch_source!r}")
        if self.feature_norm not in FEATURE_NORMS:
            raise ConfigError(f"feature_norm must be one of {', '.join(FEATURE_NORMS)}, got {self.feature_norm!r}")
        if self.synth_from not in SYNTH_FROM:
            raise ConfigError(f"synth_from must be one of {', '.join(SYNTH_FROM)}, got {self.synth_from!r}")
        if self.lambda_sem < 0:
            raise ConfigError(f"lambda_sem must be >= 0, got {self.lambda_sem}")
        if self.token_grid and self.token_grid < 2:
            raise ConfigError(f"token_grid must be 0 (native grid) or >= 2, got {self.token_grid}")
        if self.token_grid and 2 * (self.rm_neighbour // 2) + 1 >= self.token_grid:
            raise ConfigError(f"rm_neighbour ({self.rm_neighbour}) must leave tokens to attend to on a "
                              f"{self.token_grid}x{self.token_grid} grid (k // 2 * 2 + 1 < token_grid)")
        if self.rm_dim % self.rm_heads:
            raise ConfigError(f"rm_dim ({self.rm_dim}) must be a multiple of rm_heads ({self.rm_heads})")
        for name in ("n_name_tokens", "feature_dim", "vae_hidden", "vae_latent", "vae_batch", "rm_dim", "rm_heads",
                     "rm_dec_layers", "rm_ff", "train_batch", "augment_to", "name_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_steps", "vae_steps", "name_images_per_class", "augment_below", "rm_enc_layers",
                     "sem_hidden", "foundation_image_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("name_temperature", "sem_temperature", "name_lr", "vae_lr", "train_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.rm_dropout < 1:
            raise ConfigError(f"rm_dropout must be in [0, 1), got {self.rm_dropout}")
        if not self.foundation_blocks or min(self.foundation_blocks) < 1:
            raise ConfigError(f"foundation_blocks are 1-based block numbers, got {self.foundation_blocks}")
        for name in ("class_prompt", "normal_prompt", "abnormal_prompt"):
            if getattr(self, name).count("{}") != 1:
                raise ConfigError(f"{name} must contain exactly one '{{}}' (the learned class name), got "
                                  f"{getattr(self, name)!r}")
        if self.needs_foundation:
            FoundationSpec.parse(self.foundation).check()

    @property
    def needs_foundation(self) -> bool:
        """The foundation model is used for patch features, the semantic branch or the VAE's class names."""
        return self.patch_source == "foundation" or self.lambda_sem != 0 or self.tail_augmentation

    def backbone_names(self) -> tuple[str, ...]:
        return (self.backbone,) if self.patch_source == "backbone" else ()

    def check_weights_available(self) -> None:
        super().check_weights_available()
        if self.needs_foundation:
            reason = FoundationSpec.parse(self.foundation).unavailable_reason()
            if reason is not None:
                raise WeightsError(reason)


def _class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=n_classes).clamp(min=1).float()
    return counts.sum() / (n_classes * counts)


@register
class LTAD(AnomalyModel):
    name = "ltad"
    Config = LTADConfig
    learning_type = "multi_class"

    def __init__(self, config: LTADConfig, device: str | torch.device = "cpu"):
        super().__init__(config, device)
        self.features: PatchFeatures | None = None
        if config.patch_source == "backbone":
            self.features = PatchFeatures(
                config.backbone, config.weights, stages=config.stages, patch_size=config.patch_size,
                pretrain_embed_dim=config.pretrain_embed_dim, target_embed_dim=config.feature_dim,
                device=self.device,
            )
        self.foundation_spec = FoundationSpec.parse(config.foundation) if config.needs_foundation else None
        self._foundation: Foundation | None = None
        if config.patch_source == "foundation":
            self._foundation = Foundation(self.foundation_spec, self.device, config.foundation_image_size)
        self.weights_source = self._weights_label()
        # set by fit / load_state_dict
        self.classes: list[str] = []
        self.names: torch.nn.Parameter | None = None
        self.t_class: torch.Tensor | None = None
        self.t_normal: torch.Tensor | None = None
        self.t_abnormal: torch.Tensor | None = None
        self.rm: ReconstructionModule | None = None
        self.projection: PatchProjection | None = None
        self.vae: FeatureVAE | None = None
        self._native_grid: tuple[int, ...] = ()
        self.train_counts: dict[str, int] = {}
        self.synthetic: dict[str, int] = {}
        self.log: dict[str, Any] = {}

    # --- provenance ------------------------------------------------------------------------------------------
    @property
    def foundation_random(self) -> bool:
        return self.foundation_spec is not None and self.foundation_spec.is_random

    def _weights_label(self) -> str:
        parts = []
        if self.features is not None:
            parts.append(f"backbone {self.features.backbone.weights_source}")
        if self.foundation_spec is not None:
            parts.append(f"foundation {self.foundation_spec.source_label()}")
        else:
            parts.append("no foundation model")
        if self.config.lambda_sem == 0:
            parts.append(SEMANTIC_OFF_LABEL)
        return "; ".join(parts)

    def variant(self) -> str:
        words = "LTAD" if self.config.lambda_sem else "LTAD reconstruction only (" + SEMANTIC_OFF_LABEL + ")"
        words += ", tail augmentation " + ("on" if self.config.tail_augmentation else "off")
        if self.foundation_random:
            words += f", {FOUNDATION_RANDOM_LABEL}"
        return words

    @property
    def foundation(self) -> Foundation:
        if self._foundation is None:
            if self.foundation_spec is None:
                raise RuntimeError("this LTAD config uses no foundation model")
            self._foundation = Foundation(self.foundation_spec, self.device, self.config.foundation_image_size)
        return self._foundation

    def preprocess(self) -> Preprocess:
        if self.features is not None:
            bb = self.features.backbone
            mean, std = bb.mean, bb.std
        else:
            mean, std = self.foundation.mean, self.foundation.std
        return Preprocess(resize=self.config.resize, crop=self.config.crop, mean=mean, std=std)

    @classmethod
    def check_data(cls, config: LTADConfig, train_counts: dict[str, dict[str, int]]) -> None:
        empty = [c for c, n in train_counts.items() if n.get("train", 0) - n.get("train_anomalous", 0) < 1]
        if empty:
            raise ConfigError(f"LTAD learns a pseudo class name per class; class(es) {', '.join(empty)} have no "
                              "normal training image in this split")
        unknown = sorted(set(config.augment_classes) - set(train_counts))
        if unknown:
            raise ConfigError(f"augment_classes names class(es) not in this run: {', '.join(unknown)}; "
                              f"the run's classes: {', '.join(sorted(train_counts))}")

    # --- features ----------------------------------------------------------------------------------------------
    def _pool_normalise(self, maps: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] -> pooled to the token grid, L2-normalised per patch (config)."""
        g = self.config.token_grid
        if g and tuple(maps.shape[-2:]) != (g, g):
            maps = F.adaptive_avg_pool2d(maps, (g, g))
        if self.config.feature_norm == "l2":
            maps = F.normalize(maps, dim=1)
        return maps

    @torch.no_grad()
    def extract(self, images: torch.Tensor, want_global: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch-feature maps [B, D, g, g] (pooled, normalised) and, when asked, global embeddings E(x) [B, E]."""
        prep = self.preprocess()
        if self.features is not None:
            maps = self.features(images).permute(0, 3, 1, 2)
            glob = self.foundation.encode_images(images, prep.mean, prep.std) if want_global else None
        else:
            tokens, glob = self.foundation.patch_tokens(images, prep.mean, prep.std, self.config.foundation_blocks)
            stacked = torch.cat([t.permute(0, 2, 3, 1) for t in tokens], dim=-1)  # [B, h, w, sum C]
            b, h, w, c = stacked.shape
            pooled = F.adaptive_avg_pool1d(stacked.reshape(-1, 1, c), self.config.feature_dim).reshape(b, h, w, -1)
            maps = pooled.permute(0, 3, 1, 2)
        return self._pool_normalise(maps.float()), glob

    # --- training ----------------------------------------------------------------------------------------------
    def _collect(self, loader: Any, progress: ProgressFn) -> tuple[torch.Tensor, list[str], torch.Tensor, list[str]]:
        """Feature maps and classes of every training image, plus global embeddings of up to
        `name_images_per_class` images per class (all when 0) for learning the names."""
        cap = self.config.name_images_per_class
        maps, cats, glob, glob_cats = [], [], [], []
        seen: dict[str, int] = {}
        total = len(loader)
        for i, batch in enumerate(loader):
            categories = [str(c) for c in batch["category"]]
            images = batch["image"]
            need_global = self.foundation_spec is not None
            pick = []
            if need_global:
                for j, c in enumerate(categories):
                    if not cap or seen.get(c, 0) < cap:
                        seen[c] = seen.get(c, 0) + 1
                        pick.append(j)
            if self.features is not None:
                m, _ = self.extract(images)
                if pick:
                    prep = self.preprocess()
                    glob.append(self.foundation.encode_images(images[pick], prep.mean, prep.std).cpu())
            else:
                m, g = self.extract(images, want_global=True)
                if pick:
                    glob.append(g[pick].cpu())
            glob_cats += [categories[j] for j in pick]
            maps.append(m.cpu())
            cats += categories
            progress((i + 1) / total, f"features {i + 1}/{total} batches")
        if not maps:
            raise ValueError("the training split is empty: no normal images to fit on")
        return torch.cat(maps), cats, (torch.cat(glob) if glob else torch.empty(0)), glob_cats

    def name_loss(self, glob: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Phase-1a loss: (class-balanced) softmax over classes of cos(E(x), t_c) / name_temperature."""
        prompt = self.foundation.prompt(self.config.class_prompt, self.config.n_name_tokens)
        t = self.foundation.encode_prompts(prompt, self.names)
        logits = glob.to(t.device) @ t.T / self.config.name_temperature
        weight = _class_weights(labels, len(self.classes)).to(t.device) if self.config.class_balanced else None
        return F.cross_entropy(logits, labels.to(t.device), weight=weight)

    def _learn_names(self, glob: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, progress: ProgressFn) -> None:
        cfg = self.config
        init = torch.randn((len(self.classes), cfg.n_name_tokens, self.foundation.width), generator=gen)
        self.names = torch.nn.Parameter((init * cfg.name_init_std).to(self.device))
        optimiser = torch.optim.Adam([self.names], lr=cfg.name_lr)
        losses = []
        for step in range(cfg.name_steps):
            loss = self.name_loss(glob, labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if step % 10 == 0 or step == cfg.name_steps - 1:
                progress((step + 1) / cfg.name_steps, f"phase 1: class names, step {step + 1}/{cfg.name_steps}, "
                         f"loss {losses[-1]:.3f}")
        with torch.no_grad():
            self._encode_texts()
            acc = float(((glob.to(self.device) @ self.t_class.T).argmax(1).cpu() == labels).float().mean())
        self.log["names"] = {"loss_first": losses[0], "loss_last": losses[-1], "train_accuracy": acc,
                             "images": int(len(labels))}

    @torch.no_grad()
    def _encode_texts(self) -> None:
        f, m = self.foundation, self.config.n_name_tokens
        self.t_class = f.encode_prompts(f.prompt(self.config.class_prompt, m), self.names).detach()
        self.t_normal = f.encode_prompts(f.prompt(self.config.normal_prompt, m), self.names).detach()
        self.t_abnormal = f.encode_prompts(f.prompt(self.config.abnormal_prompt, m), self.names).detach()

    def augment_plan(self, counts: dict[str, int]) -> dict[str, int]:
        """Class -> number of synthetic maps (only the classes the config names, or below `augment_below`)."""
        cfg = self.config
        if not cfg.tail_augmentation:
            return {}
        unknown = sorted(set(cfg.augment_classes) - set(counts))
        if unknown:
            raise ConfigError(f"augment_classes names class(es) not in training: {', '.join(unknown)}")
        chosen = list(cfg.augment_classes) or [c for c, n in counts.items() if n < cfg.augment_below]
        plan = {c: cfg.augment_to - counts[c] for c in sorted(chosen)}
        return {c: n for c, n in plan.items() if n > 0}

    def _sample_balanced(self, labels: torch.Tensor, n: int, gen: torch.Generator, balanced: bool) -> torch.Tensor:
        weights = _class_weights(labels, len(self.classes))[labels] if balanced else torch.ones(len(labels))
        return torch.multinomial(weights, n, replacement=True, generator=gen)

    def fit_vae(self, maps: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                progress: ProgressFn = no_progress) -> None:
        cfg = self.config
        self.vae = FeatureVAE(maps.shape[1], self.t_class.shape[1], cfg.vae_hidden, cfg.vae_latent).to(self.device)
        self.vae.noise_var.fill_(float(maps.permute(1, 0, 2, 3).reshape(maps.shape[1], -1).var(dim=1).mean())
                                 + 1e-8)
        optimiser = torch.optim.Adam(self.vae.parameters(), lr=cfg.vae_lr)
        recs, kls = [], []
        self.vae.train()
        for step in range(cfg.vae_steps):
            idx = self._sample_balanced(labels, cfg.vae_batch, gen, cfg.class_balanced)
            x = maps[idx].to(self.device)
            rec, kl = self.vae.losses(x, self.t_class[labels[idx].to(self.device)], gen)
            loss = rec + cfg.vae_beta * kl
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            recs.append(float(rec.detach()))
            kls.append(float(kl.detach()))
            if step % 20 == 0 or step == cfg.vae_steps - 1:
                progress((step + 1) / cfg.vae_steps, f"phase 1: VAE, step {step + 1}/{cfg.vae_steps}, "
                         f"rec {recs[-1]:.2f}, KL {kls[-1]:.2f}")
        self.vae.eval()
        if recs:
            k = max(1, len(recs) // 10)
            self.log["vae"] = {"rec_first": float(np.mean(recs[:k])), "rec_last": float(np.mean(recs[-k:])),
                               "kl_first": float(np.mean(kls[:k])), "kl_last": float(np.mean(kls[-k:]))}

    @torch.no_grad()
    def synthesise(self, plan: dict[str, int], maps: torch.Tensor, labels: torch.Tensor,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Synthetic maps for the classes in `plan` (class -> count), with their class indices."""
        out, out_labels = [], []
        size = tuple(maps.shape[-2:])
        for name, n in plan.items():
            c = self.classes.index(name)
            cond = self.t_class[c].expand(n, -1)
            around = None
            if self.config.synth_from == "posterior":
                own = torch.nonzero(labels == c).flatten()
                around = maps[own[torch.arange(n) % len(own)]].to(self.device)
            synth = self.vae.sample(cond, size, gen, self.config.synth_temperature, around)
            if self.config.feature_norm == "l2":
                synth = F.normalize(synth, dim=1)
            out.append(synth.cpu())
            out_labels.append(torch.full((n,), c, dtype=torch.long))
        if not out:
            return maps.new_zeros((0, *maps.shape[1:])), torch.zeros(0, dtype=torch.long)
        return torch.cat(out), torch.cat(out_labels)

    def _build_heads(self, dim: int, embed_dim: int | None) -> None:
        cfg = self.config
        grid = (cfg.token_grid, cfg.token_grid) if cfg.token_grid else self._native_grid
        if 2 * (cfg.rm_neighbour // 2) + 1 >= min(grid):
            raise ConfigError(f"rm_neighbour ({cfg.rm_neighbour}) blocks every token of the {grid[0]}x{grid[1]} "
                              "feature grid; lower it or set token_grid")
        self.rm = ReconstructionModule(dim, grid, cfg.rm_dim, cfg.rm_enc_layers, cfg.rm_dec_layers, cfg.rm_heads,
                                       cfg.rm_ff, cfg.rm_neighbour, cfg.rm_dropout).to(self.device)
        self.projection = (PatchProjection(dim, embed_dim, cfg.sem_hidden).to(self.device)
                           if cfg.lambda_sem and embed_dim else None)

    def phase2_losses(self, x: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """x: [B, D, g, g] maps, labels: [B] class indices -> {"rec": ..., "sem": ...} training losses."""
        cfg = self.config
        tokens = x.flatten(2).transpose(1, 2)  # [B, L, D]
        rec = ((self.rm(jitter(tokens, cfg.rm_jitter, gen)) - tokens) ** 2).sum(-1).mean()
        losses = {"rec": rec}
        if self.projection is not None:
            negatives = jitter(tokens, cfg.sem_noise, gen)
            if cfg.feature_norm == "l2":
                negatives = F.normalize(negatives, dim=-1)
            t_n = self.t_normal[labels][:, None]
            t_a = self.t_abnormal[labels][:, None]
            pos = sem_logits(self.projection(tokens), t_n, t_a, cfg.sem_temperature).reshape(-1, 2)
            neg = sem_logits(self.projection(negatives), t_n, t_a, cfg.sem_temperature).reshape(-1, 2)
            target = torch.cat([torch.zeros(len(pos)), torch.ones(len(neg))]).long().to(pos.device)
            losses["sem"] = F.cross_entropy(torch.cat([pos, neg]), target)
        return losses

    def _train_phase2(self, maps: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                      progress: ProgressFn) -> None:
        cfg = self.config
        params = list(self.rm.parameters()) + (list(self.projection.parameters()) if self.projection else [])
        optimiser = torch.optim.AdamW(params, lr=cfg.train_lr, weight_decay=cfg.train_weight_decay)
        self.rm.train()
        history: dict[str, list[float]] = {}
        order = torch.randperm(len(maps), generator=gen)
        pos = 0
        for step in range(cfg.train_steps):
            if pos + cfg.train_batch > len(order):
                order, pos = torch.randperm(len(maps), generator=gen), 0
            idx = order[pos:pos + cfg.train_batch]
            pos += cfg.train_batch
            losses = self.phase2_losses(maps[idx].to(self.device), labels[idx].to(self.device), gen)
            loss = sum(losses.values())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            for k, v in losses.items():
                history.setdefault(k, []).append(float(v.detach()))
            if step % 20 == 0 or step == cfg.train_steps - 1:
                text = ", ".join(f"{k} {v[-1]:.4f}" for k, v in history.items())
                progress((step + 1) / cfg.train_steps, f"phase 2: step {step + 1}/{cfg.train_steps}, {text}")
        self.rm.eval()
        k = max(1, cfg.train_steps // 10)
        self.log["phase2"] = {f"{name}_{w}": float(np.mean(v[:k] if w == "first" else v[-k:]))
                              for name, v in history.items() for w in ("first", "last")}

    def fit(self, train_loader: torch.utils.data.DataLoader, progress: ProgressFn = no_progress) -> None:
        gen = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**63)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        maps, cats, glob, glob_cats = self._collect(train_loader, lambda f, m: progress(0.2 * f, m))
        self._native_grid = tuple(maps.shape[-2:])
        timings["features_s"] = time.perf_counter() - start
        self.classes = sorted(set(cats))
        labels = torch.tensor([self.classes.index(c) for c in cats])
        self.train_counts = {c: int((labels == i).sum()) for i, c in enumerate(self.classes)}

        embed_dim = None
        if self.foundation_spec is not None:
            start = time.perf_counter()
            glob_labels = torch.tensor([self.classes.index(c) for c in glob_cats])
            self._learn_names(glob, glob_labels, gen, lambda f, m: progress(0.2 + 0.1 * f, m))
            embed_dim = int(self.t_class.shape[1])
            timings["names_s"] = time.perf_counter() - start

        plan = self.augment_plan(self.train_counts)
        synth, synth_labels = maps.new_zeros((0, *maps.shape[1:])), torch.zeros(0, dtype=torch.long)
        if plan:
            start = time.perf_counter()
            self.fit_vae(maps, labels, gen, lambda f, m: progress(0.3 + 0.15 * f, m))
            synth, synth_labels = self.synthesise(plan, maps, labels, gen)
            timings["vae_s"] = time.perf_counter() - start
        self.synthetic = {c: int((synth_labels == self.classes.index(c)).sum()) for c in plan}

        start = time.perf_counter()
        self._build_heads(maps.shape[1], embed_dim)
        self._train_phase2(torch.cat([maps, synth]), torch.cat([labels, synth_labels]), gen,
                           lambda f, m: progress(0.45 + 0.55 * f, m))
        timings["phase2_s"] = time.perf_counter() - start
        self.log["timings"] = {k: round(v, 2) for k, v in timings.items()}
        n_synth = sum(self.synthetic.values())
        progress(1.0, f"fitted on {len(maps)} real + {n_synth} synthetic feature maps of {len(self.classes)} classes")

    # --- scoring -----------------------------------------------------------------------------------------------
    def _class_index(self, categories: list[str] | None, n: int) -> torch.Tensor:
        if categories is None:
            raise ConfigError("LTAD is class-aware: predict(images, categories) needs the class of every image")
        if len(categories) != n:
            raise ValueError(f"{n} images but {len(categories)} categories")
        unknown = sorted(set(categories) - set(self.classes))
        if unknown:
            raise ConfigError(f"LTAD was trained on classes {', '.join(self.classes)}; class(es) "
                              f"{', '.join(unknown)} never seen in training cannot be scored (LTAD is class-aware)")
        return torch.tensor([self.classes.index(c) for c in categories], device=self.device)

    @torch.no_grad()
    def patch_scores(self, images: torch.Tensor, categories: list[str] | None) -> dict[str, torch.Tensor]:
        """Per-patch scores [B, g, g]: "rec" = S_rec, "sem" = S_sem (zeros when λ = 0), "total" = S."""
        if self.rm is None:
            raise RuntimeError("LTAD.predict called before fit/load")
        idx = self._class_index(categories, images.shape[0])
        maps, _ = self.extract(images)
        b, _, h, w = maps.shape
        tokens = maps.flatten(2).transpose(1, 2)
        rec = ((self.rm(tokens) - tokens) ** 2).sum(-1)
        sem = torch.zeros_like(rec)
        if self.projection is not None and self.config.lambda_sem:
            sem = sem_scores(self.projection(tokens), self.t_normal[idx][:, None], self.t_abnormal[idx][:, None],
                             self.config.sem_temperature)
        total = rec + self.config.lambda_sem * sem
        return {k: v.reshape(b, h, w) for k, v in {"rec": rec, "sem": sem, "total": total}.items()}

    def predict(self, images: torch.Tensor, categories: list[str] | None = None) -> Prediction:
        scores = self.patch_scores(images, categories)["total"]
        return scores_to_prediction(scores.cpu(), tuple(images.shape[-2:]), self.config.sigma)

    # --- persistence and description -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.rm is None:
            raise RuntimeError("LTAD.state_dict called before fit")

        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().cpu()

        return {
            "classes": list(self.classes), "train_counts": dict(self.train_counts), "synthetic": dict(self.synthetic),
            "native_grid": list(self._native_grid), "names": cpu(self.names), "t_class": cpu(self.t_class),
            "t_normal": cpu(self.t_normal), "t_abnormal": cpu(self.t_abnormal),
            "rm": {k: v.cpu() for k, v in self.rm.state_dict().items()},
            "projection": None if self.projection is None else {k: v.cpu() for k, v in self.projection.state_dict().items()},
            "vae": None if self.vae is None else {k: v.cpu() for k, v in self.vae.state_dict().items()},
            "weights_source": self.weights_source, "log": dict(self.log),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.classes = list(state["classes"])
        self.train_counts = dict(state["train_counts"])
        self.synthetic = dict(state["synthetic"])
        self._native_grid = tuple(state["native_grid"])
        self.names = None if state["names"] is None else torch.nn.Parameter(state["names"].to(self.device))
        for key in ("t_class", "t_normal", "t_abnormal"):
            setattr(self, key, None if state[key] is None else state[key].to(self.device))
        dim = state["rm"]["in_proj.weight"].shape[1]
        embed_dim = None if state["t_normal"] is None else int(state["t_normal"].shape[1])
        self._build_heads(dim, embed_dim)
        self.rm.load_state_dict(state["rm"])
        self.rm.eval()
        if self.projection is not None:
            self.projection.load_state_dict(state["projection"])
        if state["vae"] is not None:
            vae_state = state["vae"]
            hidden, latent = vae_state["enc_in.weight"].shape[0], vae_state["dec_in.weight"].shape[1]
            self.vae = FeatureVAE(dim, vae_state["enc_cond.weight"].shape[1], hidden, latent).to(self.device)
            self.vae.load_state_dict(vae_state)
            self.vae.eval()
        self.weights_source = state.get("weights_source", self.weights_source)
        self.log = dict(state.get("log", {}))

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        plan_rule = (f"named: {', '.join(cfg.augment_classes)}" if cfg.augment_classes
                     else f"classes with fewer than {cfg.augment_below} training images, topped up to {cfg.augment_to}")
        return {
            **super().describe(),
            "variant": self.variant(),
            "foundation": None if self.foundation_spec is None else self.foundation_spec.source_label(),
            "foundation_random": self.foundation_random,
            "patch_source": cfg.patch_source,
            "semantic_branch": f"on (λ = {cfg.lambda_sem:g})" if cfg.lambda_sem else f"off ({SEMANTIC_OFF_LABEL})",
            "tail_augmentation": {
                "enabled": cfg.tail_augmentation, "ran": bool(self.synthetic), "rule": plan_rule,
                "synthetic_maps": dict(self.synthetic),
            },
            "classes": list(self.classes),
            "train_counts": dict(self.train_counts),
            "log": dict(self.log),
        }
