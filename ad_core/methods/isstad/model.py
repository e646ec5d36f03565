"""ISSTAD (Jin, Guo, Zhu, "Incremental Self-Supervised Learning Based on Transformer for Anomaly Detection and
Localization", arXiv 2303.17354; official code github.com/xjspin/ISSTAD): a masked auto-encoder followed by
pixel-level self-supervised learning on a frozen encoder.

Stage 1 — MAE on the normal training images: ViT encoder + lightweight decoder (fixed 2-D sin-cos position
embeddings), 75% of the patches removed, MSE on the removed patches (raw normalised pixels by default:
`norm_pix_loss=False` as in the official code). Augmentation RandomResizedCrop(scale 0.2-1, bicubic) + flip,
ImageNet normalisation. AdamW (0.9, 0.95), wd 0.05 (none on biases/norms), lr = base_lr * batch / 256,
per-iteration linear warm-up then half-cycle cosine.

Stage 2 — the encoder is frozen and sees the full image; the decoder is deepened (paper/code: 12 blocks, the
first 6 from stage 1) and gets a reconstruction head plus a two-class pixel-state head applied after every
decoder block (deep supervision; one linear head shared by all blocks, as in the code). Training images are
corrupted with probability 2/3 (`ad_core.methods.isstad.augment`: rectangles/ellipses/polygons inside the
object's foreground box, filled with a colour-jittered, flipped or noise-blended copy of the same image).
Loss = mean over heads of class-weighted cross-entropy (weights 3 for normal, 1 for anomalous pixels, as in
the code) + 0.5 * MSE + 0.1 * (1 - SSIM) (11x11 Gaussian window, sigma 1.5). AdamW lr 1e-3, wd 0.05,
CosineAnnealingLR(T_max=30, eta_min=1e-6) stepped per epoch (so the lr oscillates with period 60 epochs).

Scoring (official code): P = mean over heads of the softmax "anomalous" probability, R = per-pixel mean over
RGB of the squared reconstruction error in the stage-2 input space.
    anomaly map  = G_sigma(P * minmax(R))                       (minmax per image; sigma = 4)
    image score  = mean over pixels of G_sigma(G_sigma(P) * G_sigma(R))
G = scipy.ndimage.gaussian_filter. The official map is additionally multiplied by 255 (irrelevant for every
metric; not done here). Maps come back at the input resolution.

Where we differ from the paper or the official code (paper / official code / we do / why); every row is a
config field unless marked fixed
----------------------------------------------------------------------------------------------------------------
| topic | paper | official code | we do | why |
|---|---|---|---|---|
| reconstruction target | the model "learns to repair corrupted regions" | MSE and SSIM against the network input, i.e. the corrupted image | `repair_target="clean"`: MSE and SSIM against the clean image; "corrupted" = the code | the paper's description; with the code's target the decoder is trained to reproduce the corruption too |
| stage-2 token order | not described | the stage-2 encoder call is MAE's `random_masking` with ratio 0: the patch tokens are randomly permuted (unseeded global RNG), in training and at test time, and the order is never restored, so decoder slot i holds a random patch's token under patch i's decoder position embedding and is unpatchified to patch i | `stage2_token_order="keep"`: token i = patch i throughout (no permutation); "shuffle" = the code's behaviour, permutations drawn from the fit's seeded generator in training and, per prediction call, from a generator seeded with the fit seed (`shuffle_seed`), so a seed gives the same model and the same maps | a ratio-0 masking call that permutes looks incidental: nothing in the paper needs it, it makes the test maps depend on random noise, and the decoder has to undo the permutation through attention before its pixel-aligned heads make sense; "shuffle" is there to reproduce the code |
| model selection | - | evaluates the test set after every stage-2 epoch and reports the best image AUROC and the best pixel AUROC independently (possibly from different epochs) | the model after the last stage-2 epoch (fixed) | choosing on the test set is optimistic |
| corruption labels | - | the whole drawn shape is labelled anomalous | exact: pixels inside a shape that do not change by more than `label_min_change` keep their clean value and are labelled normal (`ad_core.methods.isstad.augment`) | the label should say which pixels changed |
| corruption resolution | - | drawn at the original image resolution, before resizing | drawn at the model resolution on the preprocessed image; the code's pixel constants scaled accordingly (fixed) | the framework hands methods preprocessed images |
| encoder initialisation | MAE pretrained | Meta's `mae_visualize_vit_large.pth` (encoder AND decoder) | `weights="imagenet"`: timm's `vit_large_patch16_224.mae` (Meta's MAE ViT-L/16 encoder; timm ships no decoder, so the decoder starts random); `weights=PATH`: an MAE checkpoint including the decoder (e.g. the official file); `weights="random"`: tests and CPU demos, every result labelled "random (NOT pretrained)" | timm's weights download by name; the official file can be passed as a path |
| geometry | 224 x 224 | Resize([224, 224]) of the (square) MVTec images | stage-1 crops and corruption work on the framework's preprocessed image (Resize + CenterCrop); the paper preset uses resize = crop = 224, i.e. the official geometry | the framework's Preprocess |

Checked against the official code (github.com/xjspin/ISSTAD at `e7820af`, `step2_pixel_ss_learning/util/losses.py`
and `util/simm.py`): its `cross_entropy` is `F.cross_entropy(weight=..., reduction="mean")` (PyTorch's
weighted mean, as ours; its ignore_index 256 never occurs) and its `SSIM` is the pytorch-ssim function
(11x11 2-D Gaussian window with sigma 1.5, zero padding, C1 = 0.01², C2 = 0.03², mean over all pixels and
channels); `ad_core.components.ssim` agrees with it to within 1e-7 (tests/test_isstad.py compares the two).

Other choices (documented defaults, all config fields):
- Batches are formed from a per-epoch permutation drawn from the seeded generator; the last, smaller batch
  is kept (no drop_last).
- Per-category corruption settings of the code (capsule/carpet: 1 shape and whole image; carpet/zipper: dark
  pixels replaced by the mean colour first; zipper: whole image) are applied when the training batches'
  `category` (the dataset's category name, from the loader) is that MVTec AD category
  (`corruption_per_category`); otherwise the corruption_* fields apply (default = the code's setting for all
  other categories). ISSTAD is one model per category: training images of several categories are an error.
- Stage-2 inputs are normalised with mean = std = 0.5 (range [-1, 1]) while stage 1 uses ImageNet mean/std,
  as the official code does (`stage2_normalization="half"`); "imagenet" keeps stage 1's normalisation.
- Randomness (crops, MAE masks, corruption, stage-2 token shuffles) comes from generators seeded by `torch.initial_seed()` at the
  start of `fit` (the runner seeds torch before fitting), so a seed gives the same model on a CPU.
- AMP (bf16 where supported, else fp16 with a GradScaler) is used on CUDA only (`amp`).
- AdamW runs with `fused=True` (same update rule, several times faster on CPU).
- `stage2_freeze_encoder=False` is an ablation switch (fine-tune the encoder in stage 2); it is not ISSTAD.
- The `fast` preset (tiny random-init ViT, 128 px, 16-px patches, 50 + 70 epochs) is a CPU demo, not the
  method's accuracy: see `ISSTADConfig.PRESETS`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ad_core.backbones import RANDOM_WEIGHTS_LABEL
from ad_core.components import ssim
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
from ad_core.methods.isstad.augment import (
    OFFICIAL_CATEGORY_SETTINGS,
    CorruptionSettings,
    corrupt,
    foreground_box,
    random_resized_crop_flip,
)
from ad_core.methods.isstad.mae import IsstadMAE, load_pretrained_encoder


@dataclass
class ISSTADConfig(MethodConfig):
    """ISSTAD hyperparameters; defaults = the paper / official code (ViT-L/16 at 224, 305 + 200 epochs).

    Geometry: `resize`/`crop` of the framework's Preprocess; the model works at `crop` px.
    `backbone` is the timm model whose pretrained encoder initialises ours when weights="imagenet" (its
    patch size / dims / depth must equal the encoder_* fields); `weights` is "imagenet", a checkpoint PATH or
    "random" (tests/demos only). `batch_size` is only the loading/prediction batch; each stage has its own.
    """

    backbone: str = "vit_large_patch16_224.mae"
    weights: str = "imagenet"
    resize: int = 224
    crop: int = 224
    batch_size: int = 16

    # --- architecture ---
    patch_size: int = 16
    encoder_dim: int = 1024
    encoder_depth: int = 24
    encoder_heads: int = 16
    decoder_dim: int = 512
    decoder_heads: int = 16
    stage1_decoder_depth: int = 6  # the stage-1 decoder; stage 2 reuses these blocks as its first ones
    decoder_depth: int = 12  # stage-2 decoder depth (paper: 12)
    mlp_ratio: float = 4.0

    # --- stage 1: MAE ---
    stage1_epochs: int = 305
    stage1_batch_size: int = 20
    stage1_base_lr: float = 1e-3  # absolute lr = base * batch / 256
    stage1_min_lr: float = 0.0
    stage1_warmup_epochs: int = 40
    stage1_weight_decay: float = 0.05
    stage1_crop_min_scale: float = 0.2
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False

    # --- stage 2: pixel-level self-supervision ---
    stage2_epochs: int = 200
    stage2_batch_size: int = 16
    stage2_lr: float = 1e-3
    stage2_min_lr: float = 1e-6
    stage2_cosine_period: int = 30  # CosineAnnealingLR T_max (epochs)
    stage2_weight_decay: float = 0.05
    stage2_normalization: str = "half"  # "half" (mean=std=0.5, official) | "imagenet"
    stage2_freeze_encoder: bool = True  # the method freezes it; False is an ablation, not ISSTAD
    corruption_prob: float = 2 / 3
    corruption_max_shapes: int = 3
    corruption_area_limit: bool = True
    corruption_remove_black: bool = False
    corruption_per_category: bool = True
    label_min_change: float = (
        2 / 255
    )  # a pixel counts as corrupted when some channel moves by more (in [0,1])
    ce_weight_normal: float = 3.0
    ce_weight_anomalous: float = 1.0
    rec_weight: float = 0.5
    ssim_weight: float = 0.1
    ssim_window: int = 11
    ssim_sigma: float = 1.5
    repair_target: str = "clean"  # "clean" (paper) | "corrupted" (official code)
    stage2_token_order: str = "keep"  # "keep" | "shuffle" (official code: random, never restored)

    # --- scoring / runtime ---
    sigma: float = 4.0
    amp: bool = True

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        # CPU demo (random init!): a tiny ViT (dim 128, 4 encoder blocks, 2+2 decoder blocks) on the whole
        # image resized to 128x128 (resize = crop = 128, the official Resize([224, 224]) geometry at a smaller
        # size) with 16-px patches (8x8 tokens): about 4 minutes for ~200 images on 2 CPU cores. The stage-2
        # cosine runs over all its epochs (one half-period, ending at the minimum lr) because the result is
        # the last epoch; the official T_max=30 with 200 epochs ends mid-cycle.
        "fast": {
            "backbone": "none",
            "weights": "random",
            "resize": 128,
            "crop": 128,
            "patch_size": 16,
            "encoder_dim": 128,
            "encoder_depth": 4,
            "encoder_heads": 4,
            "decoder_dim": 128,
            "decoder_heads": 4,
            "stage1_decoder_depth": 2,
            "decoder_depth": 4,
            "stage1_epochs": 50,
            "stage1_batch_size": 16,
            "stage1_base_lr": 1.5e-2,
            "stage1_warmup_epochs": 5,
            "stage2_epochs": 70,
            "stage2_batch_size": 16,
            "stage2_cosine_period": 70,
        },
    }

    def backbone_names(self) -> tuple[str, ...]:
        # `backbone` only names the timm encoder whose pretrained weights initialise ours (weights="imagenet").
        return (self.backbone,) if self.weights == "imagenet" else ()

    @property
    def encoder_weights(self) -> str:
        """Alias of `weights` (the framework-wide field the CLI's --weights sets)."""
        return self.weights

    def validate(self) -> None:
        super().validate()
        if self.weights == "bundled":
            raise ConfigError("isstad has no bundled weights; use 'imagenet', a checkpoint path or 'random'")
        if self.weights == "imagenet" and self.backbone in ("", "none"):
            raise ConfigError(
                "weights='imagenet' needs backbone = a timm ViT name, e.g. vit_large_patch16_224.mae"
            )
        if self.patch_size < 1 or self.crop % self.patch_size:
            raise ConfigError(f"patch_size ({self.patch_size}) must divide crop ({self.crop})")
        for dim, heads, what in (
            (self.encoder_dim, self.encoder_heads, "encoder"),
            (self.decoder_dim, self.decoder_heads, "decoder"),
        ):
            if dim < 4 or dim % 4:
                raise ConfigError(f"{what}_dim must be a positive multiple of 4, got {dim}")
            if heads < 1 or dim % heads:
                raise ConfigError(f"{what}_heads ({heads}) must divide {what}_dim ({dim})")
        if self.encoder_depth < 1:
            raise ConfigError(f"encoder_depth must be >= 1, got {self.encoder_depth}")
        if not 1 <= self.stage1_decoder_depth <= self.decoder_depth:
            raise ConfigError(
                f"need 1 <= stage1_decoder_depth ({self.stage1_decoder_depth}) <= decoder_depth ({self.decoder_depth})"
            )
        if self.mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0 <= self.mask_ratio < 1:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if int((self.crop // self.patch_size) ** 2 * (1 - self.mask_ratio)) < 1:
            raise ConfigError("mask_ratio leaves no visible patch at this crop / patch size")
        if self.stage1_epochs < 0 or self.stage2_epochs < 1:
            raise ConfigError("stage1_epochs must be >= 0 and stage2_epochs >= 1")
        if self.stage1_batch_size < 1 or self.stage2_batch_size < 1:
            raise ConfigError("stage batch sizes must be >= 1")
        if self.stage1_warmup_epochs < 0 or self.stage2_cosine_period < 1:
            raise ConfigError("stage1_warmup_epochs must be >= 0 and stage2_cosine_period >= 1")
        for name in ("stage1_base_lr", "stage2_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("stage1_min_lr", "stage2_min_lr", "stage1_weight_decay", "stage2_weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.stage1_crop_min_scale <= 1:
            raise ConfigError(f"stage1_crop_min_scale must be in (0, 1], got {self.stage1_crop_min_scale}")
        if self.stage2_normalization not in ("half", "imagenet"):
            raise ConfigError(
                f"stage2_normalization must be 'half' or 'imagenet', got {self.stage2_normalization!r}"
            )
        if not 0 <= self.corruption_prob <= 1:
            raise ConfigError(f"corruption_prob must be in [0, 1], got {self.corruption_prob}")
        if self.corruption_max_shapes < 1:
            raise ConfigError(f"corruption_max_shapes must be >= 1, got {self.corruption_max_shapes}")
        if not 0 <= self.label_min_change < 1:
            raise ConfigError(f"label_min_change must be in [0, 1), got {self.label_min_change}")
        if self.ce_weight_normal <= 0 or self.ce_weight_anomalous <= 0:
            raise ConfigError("cross-entropy class weights must be > 0")
        if self.rec_weight < 0 or self.ssim_weight < 0:
            raise ConfigError("rec_weight and ssim_weight must be >= 0")
        if self.ssim_window < 1 or self.ssim_window % 2 == 0 or self.ssim_sigma <= 0:
            raise ConfigError("ssim_window must be a positive odd number and ssim_sigma > 0")
        if self.repair_target not in ("clean", "corrupted"):
            raise ConfigError(f"repair_target must be 'clean' or 'corrupted', got {self.repair_target!r}")
        if self.stage2_token_order not in ("keep", "shuffle"):
            raise ConfigError(
                f"stage2_token_order must be 'keep' or 'shuffle', got {self.stage2_token_order!r}"
            )
        if self.sigma < 0:
            raise ConfigError(f"sigma must be >= 0, got {self.sigma}")


# --- scoring -------------------------------------------------------------------------------------------
def isstad_scores(prob: np.ndarray, error: np.ndarray, sigma: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """(image scores [B], maps [B,H,W]) from pixel anomaly probabilities P and reconstruction errors R [B,H,W].

    map = G(P * minmax(R)); score = mean(G(G(P) * G(R))), G = gaussian_filter(sigma) (official code).
    """

    def smooth(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=sigma) if sigma > 0 else x

    scores, maps = [], []
    for p, r in zip(prob.astype(np.float32), error.astype(np.float32), strict=True):
        lo, hi = float(r.min()), float(r.max())
        r_norm = (r - lo) / (hi - lo) if hi > lo else np.zeros_like(r)
        maps.append(smooth(p * r_norm))
        scores.append(float(smooth(smooth(p) * smooth(r)).mean()))
    return np.asarray(scores, dtype=np.float32), np.stack(maps).astype(np.float32)


def _param_groups(named: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and 1-D parameters (norms), as MAE/timm's add_weight_decay."""
    decay = [p for n, p in named if p.requires_grad and p.ndim > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in named if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias"))]
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@register
class ISSTAD(AnomalyModel):
    name = "isstad"
    Config = ISSTADConfig

    def __init__(self, config: ISSTADConfig, device: str | torch.device = "cpu"):
        super().__init__(config, device)
        c = config
        self.net = IsstadMAE(
            img_size=c.crop,
            patch_size=c.patch_size,
            embed_dim=c.encoder_dim,
            depth=c.encoder_depth,
            num_heads=c.encoder_heads,
            decoder_dim=c.decoder_dim,
            decoder_depth=c.decoder_depth,
            decoder_heads=c.decoder_heads,
            stage1_decoder_depth=c.stage1_decoder_depth,
            mlp_ratio=c.mlp_ratio,
        ).to(self.device)
        # Pretrained weights are loaded at the start of fit (not here, so that loading a saved model never
        # downloads anything); until then the label says what the network holds.
        self.weights_source = RANDOM_WEIGHTS_LABEL
        self.fitted = False
        self.history: list[dict[str, Any]] = []
        self.corruption_settings: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        # Seeds the stage-2 token shuffle at prediction time (stage2_token_order="shuffle"): the fit's seed.
        self.shuffle_seed = 0
        prep = self.preprocess()
        self._in_mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
        self._in_std = torch.tensor(prep.std).view(1, 3, 1, 1)

    def preprocess(self) -> Preprocess:
        return Preprocess(resize=self.config.resize, crop=self.config.crop)

    # --- normalisation between the loader's space, [0,1] and the two model spaces ---------------------------
    def _to_unit(self, images: torch.Tensor) -> torch.Tensor:
        return images * self._in_std.to(images.device) + self._in_mean.to(images.device)

    def _stage1_space(self, unit: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor((0.485, 0.456, 0.406), device=unit.device).view(1, 3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225), device=unit.device).view(1, 3, 1, 1)
        return (unit - mean) / std

    def _stage2_space(self, unit: torch.Tensor) -> torch.Tensor:
        if self.config.stage2_normalization == "half":
            return (unit - 0.5) / 0.5
        return self._stage1_space(unit)

    def _autocast(self) -> tuple[contextlib.AbstractContextManager, torch.dtype | None]:
        if self.device.type == "cuda" and self.config.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype), dtype
        return contextlib.nullcontext(), None

    # --- training ------------------------------------------------------------------------------------
    def _collect(self, loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, str | None]:
        """All training images in [0, 1] and their category (None when the batches carry no "category")."""
        images, categories = [], set()
        for batch in loader:
            images.append(self._to_unit(batch["image"].float()).clamp(0, 1).cpu())
            names = batch.get("category") or []
            categories.update(str(name) for name in ([names] if isinstance(names, str) else names))
        if not images:
            raise ValueError("the training split is empty: no normal images to fit on")
        if len(categories) > 1:
            raise ValueError(
                f"ISSTAD is one model per category, but the training images come from {sorted(categories)}; "
                "fit one model per category"
            )
        stacked = torch.cat(images)
        if stacked.shape[-2:] != (self.config.crop, self.config.crop):
            raise ValueError(
                f"training images are {tuple(stacked.shape[-2:])}, the model expects crop={self.config.crop}"
            )
        return stacked, next(iter(categories), None)

    def _corruption(self, category: str | None) -> CorruptionSettings:
        """The corruption settings: the config's, or the official per-category ones for `category`."""
        c = self.config
        values = {
            "probability": c.corruption_prob,
            "max_shapes": c.corruption_max_shapes,
            "area_limit": c.corruption_area_limit,
            "remove_black": c.corruption_remove_black,
            "min_change": c.label_min_change,
        }
        if not c.corruption_per_category:
            category = None
        if category in OFFICIAL_CATEGORY_SETTINGS:
            values.update(OFFICIAL_CATEGORY_SETTINGS[category])
        settings = CorruptionSettings(**values)
        self.corruption_settings = {**asdict(settings), "category": category}
        return settings

    def _ensure_weights(self) -> None:
        if self.config.weights == "random" or self.weights_source != RANDOM_WEIGHTS_LABEL:
            return
        self.weights_source = load_pretrained_encoder(self.net, self.config.backbone, self.config.weights)

    def fit(self, train_loader: torch.utils.data.DataLoader, progress: ProgressFn = no_progress) -> None:
        c = self.config
        images, category = self._collect(train_loader)
        self._ensure_weights()
        seed = int(torch.initial_seed()) % 2**63
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        self.shuffle_seed = seed
        self.history = []
        total = c.stage1_epochs + c.stage2_epochs
        start = time.perf_counter()
        self._fit_stage1(images, rng, generator, lambda f, m: progress(f * c.stage1_epochs / total, m))
        self.timings["stage1_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        settings = self._corruption(category)
        self._fit_stage2(
            images,
            settings,
            rng,
            generator,
            lambda f, m: progress((c.stage1_epochs + f * c.stage2_epochs) / total, m),
        )
        self.timings["stage2_s"] = round(time.perf_counter() - start, 3)
        self.fitted = True
        self.net.eval()

    def _batches(self, n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        order = rng.permutation(n)
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]

    def _fit_stage1(
        self, images: torch.Tensor, rng: np.random.Generator, generator: torch.Generator, progress: ProgressFn
    ) -> None:
        c = self.config
        if c.stage1_epochs == 0:
            return
        net = self.net
        net.train()
        net.set_encoder_trainable(True)
        params = net.stage1_parameters()
        peak_lr = c.stage1_base_lr * c.stage1_batch_size / 256
        optimizer = torch.optim.AdamW(
            _param_groups(params, c.stage1_weight_decay), lr=peak_lr, betas=(0.9, 0.95), fused=True
        )
        _, dtype = self._autocast()
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        iters = math.ceil(len(images) / c.stage1_batch_size)
        for epoch in range(c.stage1_epochs):
            losses = []
            for it, index in enumerate(self._batches(len(images), c.stage1_batch_size, rng)):
                t = epoch + it / iters  # per-iteration schedule (MAE's lr_sched.adjust_learning_rate)
                if t < c.stage1_warmup_epochs:
                    lr = peak_lr * t / c.stage1_warmup_epochs
                else:
                    span = max(1e-8, c.stage1_epochs - c.stage1_warmup_epochs)
                    lr = c.stage1_min_lr + (peak_lr - c.stage1_min_lr) * 0.5 * (
                        1 + math.cos(math.pi * (t - c.stage1_warmup_epochs) / span)
                    )
                _set_lr(optimizer, lr)
                batch = random_resized_crop_flip(images[index], rng, scale=(c.stage1_crop_min_scale, 1.0))
                x = self._stage1_space(batch.to(self.device))
                with self._autocast()[0]:
                    loss, _, _ = net.forward_mae(x, c.mask_ratio, c.norm_pix_loss, generator)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
            mean_loss = float(np.mean(losses))
            self.history.append({"stage": 1, "epoch": epoch + 1, "loss": mean_loss, "lr": lr})
            progress(
                (epoch + 1) / c.stage1_epochs,
                f"stage 1 epoch {epoch + 1}/{c.stage1_epochs} loss {mean_loss:.4f}",
            )

    def stage2_loss(
        self,
        corrupted: torch.Tensor,
        clean: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage-2 loss for a batch in the stage-2 input space: CE over heads + w_rec MSE + w_ssim (1 - SSIM).

        `generator` draws the token permutation when stage2_token_order="shuffle" (unused for "keep").
        """
        c = self.config
        autocast, _ = self._autocast()
        with autocast:
            rec, logits = self.net.forward_stage2(
                corrupted,
                frozen_encoder=c.stage2_freeze_encoder,
                shuffle=c.stage2_token_order == "shuffle",
                generator=generator,
            )
        rec = rec.float()
        weight = torch.tensor([c.ce_weight_normal, c.ce_weight_anomalous], device=rec.device)
        seg = torch.stack([F.cross_entropy(lg.float(), labels, weight=weight) for lg in logits]).mean()
        target = clean if c.repair_target == "clean" else corrupted
        rec_loss = F.mse_loss(rec, target)
        ssim_loss = 1 - ssim(rec, target, c.ssim_window, c.ssim_sigma)
        loss = seg + c.rec_weight * rec_loss + c.ssim_weight * ssim_loss
        return loss, {
            "seg": float(seg.detach()),
            "rec": float(rec_loss.detach()),
            "ssim": float(ssim_loss.detach()),
        }

    def _fit_stage2(
        self,
        images: torch.Tensor,
        settings: CorruptionSettings,
        rng: np.random.Generator,
        generator: torch.Generator,
        progress: ProgressFn,
    ) -> None:
        c = self.config
        net = self.net
        net.train()
        frozen = c.stage2_freeze_encoder
        net.set_encoder_trainable(not frozen)
        params = (
            net.stage2_parameters()
            if frozen
            else [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        )
        optimizer = torch.optim.AdamW(
            _param_groups(params, c.stage2_weight_decay), lr=c.stage2_lr, betas=(0.9, 0.95), fused=True
        )
        _, dtype = self._autocast()
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        n, _, h, w = images.shape
        boxes = [foreground_box(img) if settings.area_limit else (0, 0, w, h) for img in images]
        for epoch in range(c.stage2_epochs):
            # CosineAnnealingLR closed form, stepped per epoch (periodic beyond T_max as in PyTorch).
            lr = c.stage2_min_lr + (c.stage2_lr - c.stage2_min_lr) * 0.5 * (
                1 + math.cos(math.pi * epoch / c.stage2_cosine_period)
            )
            _set_lr(optimizer, lr)
            sums: dict[str, float] = {"loss": 0.0, "seg": 0.0, "rec": 0.0, "ssim": 0.0}
            for index in self._batches(n, c.stage2_batch_size, rng):
                pairs = [corrupt(images[i], rng, settings, box=boxes[i]) for i in index]
                corrupted = torch.stack([p[0] for p in pairs]).to(self.device)
                labels = torch.stack([p[1] for p in pairs]).to(self.device)
                clean = images[index].to(self.device)
                loss, parts = self.stage2_loss(
                    self._stage2_space(corrupted), self._stage2_space(clean), labels, generator
                )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                sums["loss"] += float(loss.detach()) * len(index)
                for key, value in parts.items():
                    sums[key] += value * len(index)
            means = {k: v / n for k, v in sums.items()}
            self.history.append({"stage": 2, "epoch": epoch + 1, "lr": lr, **means})
            progress(
                (epoch + 1) / c.stage2_epochs,
                f"stage 2 epoch {epoch + 1}/{c.stage2_epochs} loss {means['loss']:.4f} "
                f"(seg {means['seg']:.4f} rec {means['rec']:.4f} ssim {means['ssim']:.4f})",
            )

    # --- inference -----------------------------------------------------------------------------------
    @torch.no_grad()
    def pixel_maps(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(P, R) [B,H,W] float32 at the input resolution: mean anomalous probability over the heads and the
        per-pixel mean squared reconstruction error over RGB in the stage-2 input space.

        With stage2_token_order="shuffle" every call draws its token permutations from a generator seeded with
        `shuffle_seed` (the fit's seed), so the same batch always gives the same maps."""
        self.net.eval()
        size = tuple(images.shape[-2:])
        unit = self._to_unit(images.float().to(self.device))
        if size != (self.config.crop, self.config.crop):
            unit = F.interpolate(unit, size=(self.config.crop,) * 2, mode="bilinear", align_corners=False)
        x = self._stage2_space(unit)
        autocast, _ = self._autocast()
        shuffle = self.config.stage2_token_order == "shuffle"
        generator = torch.Generator().manual_seed(self.shuffle_seed) if shuffle else None
        with autocast:
            rec, logits = self.net.forward_stage2(x, shuffle=shuffle, generator=generator)
        prob = torch.stack([lg.float().softmax(dim=1)[:, 1] for lg in logits]).mean(dim=0)
        error = ((rec.float() - x) ** 2).mean(dim=1)
        if size != prob.shape[-2:]:
            prob = F.interpolate(prob[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            error = F.interpolate(error[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return prob.cpu().numpy().astype(np.float32), error.cpu().numpy().astype(np.float32)

    def predict(self, images: torch.Tensor) -> Prediction:
        if not self.fitted:
            raise RuntimeError("ISSTAD.predict called before fit/load")
        prob, error = self.pixel_maps(images)
        scores, maps = isstad_scores(prob, error, self.config.sigma)
        return Prediction(image_scores=scores, anomaly_maps=maps)

    # --- persistence ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "weights_source": self.weights_source,
            "fitted": self.fitted,
            "history": list(self.history),
            "corruption_settings": dict(self.corruption_settings),
            "timings": dict(self.timings),
            "shuffle_seed": self.shuffle_seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"], strict=True)
        self.net.to(self.device).eval()
        self.weights_source = state.get("weights_source", RANDOM_WEIGHTS_LABEL)
        self.fitted = bool(state.get("fitted", True))
        self.history = list(state.get("history", []))
        self.corruption_settings = dict(state.get("corruption_settings", {}))
        self.timings = dict(state.get("timings", {}))
        self.shuffle_seed = int(state.get("shuffle_seed", 0))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "corruption": self.corruption_settings}
