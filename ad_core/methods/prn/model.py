"""PRN — Prototypical Residual Networks (Zhang, Wu, Wang, Chen, Jiang, "Prototypical Residual Networks for
Anomaly Detection and Localization", CVPR 2023, arXiv 2212.02031). A few-shot supervised method: it trains on a
class's normal images, the k labelled anomalies of a `few_shot` split (with masks) and many generated anomalies.

There is no official code. The paper's abstract and Fig. 3 caption give the structure (multi-scale prototypes,
residuals to the nearest prototype, multi-scale fusion, multi-size self-attention, a second fusion, a
segmentation decoder, "a variety of anomaly generation strategies"); the unofficial `xcyao00/PRNet`
(commit 2cbf856) is the concrete reference for sizes, losses and training (see
`../shared/research/methods.md` §4). The network is in `ad_core.methods.prn.network`, the anomaly generation
in `ad_core.methods.prn.generate`.

Pipeline
--------
1. Frozen timm backbone, four levels with reductions 4, 8, 16, 32 (ResNet-18 layer1-4; EfficientNet-Lite0's
   stages of the same strides, 24/40/112/320 channels, with the bundled offline weights).
2. Prototypes: per level 1-3, seeded k-means (scikit-learn) on the flattened feature maps of the normal
   training images, K = max(1, int(`prototype_ratio` x N)) centroid maps; residual = (f - p)^2 to the prototype
   at the smallest whole-map L2 distance.
3. Network: MSF(features), MSF(residuals) (shared weights), concatenation, `attention_blocks` multi-size
   self-attention blocks per scale (patch sides H/d, d in `attention_divisors`), MSF, U-Net decoder from level
   4 -> one logit per input pixel.
4. Loss on p = sigmoid(logit): smooth-L1(p, mask) + `focal_weight` x focal(p, mask; `focal_alpha`,
   `focal_gamma`, label smoothing `focal_smooth`) (`ad_core.components.seg_losses`).
5. Anomaly map = p at the input resolution (optionally Gaussian-smoothed, `sigma`; 0 = none as the reference);
   image score = mean of the `topk` largest pixels of the map.

No test-set selection (not configurable): the model after the last epoch is the result. The reference code
evaluates the test set every 10 epochs and keeps the best image-AUROC and best pixel-AUROC checkpoints
separately, and it also leaves its 10 training anomalies in the test set; here the `few_shot` split removes
the k training anomalies from the test set (`ad_core.splits`, DRA protocol) and nothing looks at test data
during fit.

Choices (paper / reference code / what we do / why); every one is a config field unless marked fixed
---------------------------------------------------------------------------------------------------------------
| topic | paper | reference (xcyao00/PRNet) | here | why |
|---|---|---|---|---|
| backbone | not readable (abstract only) | torchvision ResNet-18, ImageNet, layer1-4, frozen | `resnet18.tv_in1k`/imagenet (paper preset: the torchvision weights the reference loads; timm's plain `resnet18` would resolve to `a1_in1k`); EfficientNet-Lite0 stages of strides 4-32, bundled weights (fast) | offline weights; same strides |
| geometry | ? | Resize 256 + CenterCrop 256, ImageNet norm | resize = crop = 256 (paper), 128 (fast); the backbone's own mean/std | as PatchCore here |
| prototypes | "multi-scale prototypes", nearest cluster prototype | k-means (sklearn, seed 0, default n_init) on whole flattened maps, K = int(0.1 N) | same, seeded with the run seed, `kmeans_n_init` = 10 (sklearn's default when the code was written), K >= 1 | reference |
| residual | "feature residuals" | (f - p)^2 | same | reference |
| fusion down-paths | ? | grouped strided conv, groups = C_in | groups = gcd(C_in, C_out) | identical for ResNet-18, and works for 24 -> 40 channels (Lite0) (fixed) |
| multi-size attention | patches of several sizes | 3 blocks per scale; sides H, H/2, H/4, H/8; q/k/v per-element (depthwise 1x1); scale 1/dim | same (`attention_blocks`=3, `attention_divisors`=(1,2,4,8)); fast: 1 block | CPU time (3 blocks ~2.2x slower) |
| decoder | segmentation decoder | U-Net from layer4, bilinear (align_corners) x2 + conv-BN-ReLU, two conv-BN-ReLU per scale, x4 + conv | same (fixed) | reference |
| loss | ? | smooth-L1(sigmoid) + 5 focal(alpha 0.5, gamma 4, smooth 1e-5) | same | reference |
| optimiser | ? | Adam lr 1e-4, wd 1e-2 (L2), constant lr, batch 48, 700 epochs, drop_last | same (paper preset); fast: lr 1e-3, batch 8, 5 epochs (see PRESETS) | reference; CPU budget |
| model selection | ? | best test epoch (image and pixel separately) | last epoch | no test-set selection |
| image score | ? | mean of top-100 pixels of the 256^2 map | `topk` = 100 (paper), 25 at 128^2 (same share of the image) | reference |
| map smoothing | ? | none | `sigma` = 0 | reference |
| real anomalies | "seen" anomalies | 10 from the test set, kept in the test set | the split's k (removed from test); reused `real_reuse` = 5 times per epoch with mild brightness/contrast jitter (`real_jitter` = 0.1; reference: as-is) | issue: "reused with augmentation" |
| copy-paste | "extended" anomalies | 3 albumentations ops, paste into hand-made `fg_mask/` foreground (in place if >= 2/3 inside, else moved) | 3 of 8 similar ops (numpy/scipy, `paste_ops`); same placement rule (`paste_inside`); foreground computed: Otsu + border rule, whole image for textures (`foreground`) | no mask files offline; see `generate` |
| simulated | "unseen" anomalies | DRAEM Perlin (2^0..2^5, +-90 deg, thr 0.5) + DTD texture with 3 imgaug ops, beta ~ U(0, 0.8) | same recipe; `texture_source` = "skimage" (bundled photos, offline, not the demo textures) or a folder (e.g. DTD) | DTD is not available offline |
| epoch | ? | N normal + N/2 real-derived (first 10x5 real) + N/2 simulated | same (`real_slots`, `perlin_slots`, `real_reuse`) | reference |
| labels of generated anomalies | - | the pasted/thresholded region | exactly the pixels that changed (`label_min_change`) | exact masks |
| rotate normal before Perlin | - | 30%: rotate the normal image +-90 deg first | not done (fixed) | unrealistic context for aligned objects |
| randomness | - | unseeded (`random.shuffle` for the anomaly draw, numpy/torch global RNG) | the split draws the anomalies with the run seed; one numpy Generator seeded from `torch.initial_seed()` (the run seed) makes every epoch plan and generated image; k-means uses the run seed; the runner seeds torch before the network is built | determinism |

The `fast` preset (CPU) was chosen on the generated demo dataset (brick, grass, gravel with a bottle-sized
`few_shot:k=10` split), never on MVTec AD: see `PRNConfig.PRESETS`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ad_core.backbones import create_feature_extractor, default_out_indices
from ad_core.components import TextureSource, focal_loss, smooth_l1_loss
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
from ad_core.methods.prn.generate import AnomalyGenerator, GenerationSettings
from ad_core.methods.prn.network import PRNetwork, Prototypes


@dataclass
class PRNConfig(MethodConfig):
    """PRN hyperparameters; defaults = the unofficial reference code (ResNet-18 at 256 px, 700 epochs).

    `batch_size` is the loading/prediction batch; training batches are `train_batch_size`.
    """

    backbone: str = "resnet18.tv_in1k"
    weights: str = "imagenet"
    resize: int = 256
    crop: int = 256
    batch_size: int = 16

    # --- model ---
    levels: tuple[int, ...] = (1, 2, 3, 4)  # ResNet-style stages (reductions 4, 8, 16, 32)
    prototype_ratio: float = 0.1
    kmeans_n_init: int = 10
    attention_blocks: int = 3
    attention_divisors: tuple[int, ...] = (1, 2, 4, 8)

    # --- training ---
    epochs: int = 700
    train_batch_size: int = 48
    lr: float = 1e-4
    weight_decay: float = 1e-2
    focal_weight: float = 5.0
    focal_alpha: float = 0.5
    focal_gamma: float = 4.0
    focal_smooth: float = 1e-5
    smooth_l1_beta: float = 1.0

    # --- anomaly generation (see ad_core.methods.prn.generate) ---
    real_reuse: int = 5
    real_slots: float = 0.5
    perlin_slots: float = 0.5
    real_jitter: float = 0.1
    paste_ops: int = 3
    paste_inside: float = 2 / 3
    foreground: str = "otsu"
    foreground_border_purity: float = 0.9
    texture_source: str = "skimage"
    texture_ops: int = 3
    texture_min_crop: float = 0.25
    perlin_min_exponent: int = 0
    perlin_max_exponent: int = 6
    perlin_threshold: float = 0.5
    perlin_beta_max: float = 0.8
    label_min_change: float = 2 / 255

    # --- scoring ---
    topk: int = 100
    sigma: float = 0.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        # CPU, about 5 minutes per fit on one core for a bottle-sized class: EfficientNet-Lite0 (bundled
        # ImageNet weights) at 128 px, one attention block per scale (3 cost 2.2x the time), 5 epochs of
        # N + N/2 + N/2 samples in batches of 8 (~0.11 s per training sample, ~50 s per epoch for N = 209, i.e.
        # ~260 steps where the paper preset makes ~3,000 at batch 48) with a 10x larger lr to make up for the
        # short schedule. Chosen on the demo dataset only (brick, grass, gravel generated with 209 normal
        # training images, 20 good + 63 defective test images per class at 256 px, few_shot:k=10, seed 0),
        # never on MVTec AD. Means over the three classes (image AUROC / pixel AUROC / AUPRO):
        #   lr 1e-3, batch 16: .877 / .844 / .698     lr 3e-4, batch 16: .880 / .879 / .707
        #   lr 3e-4, batch 8:  .927 / .941 / .823     lr 1e-3, batch 8:  .932 / .955 / .862  <- chosen
        # (PatchCore fast on the same splits: .969 / .988 / .961.)
        "fast": {
            "backbone": "tf_efficientnet_lite0",
            "weights": "bundled",
            "resize": 128,
            "crop": 128,
            "attention_blocks": 1,
            "epochs": 5,
            "train_batch_size": 8,
            "lr": 1e-3,
            "topk": 25,
        },
    }

    def generation(self) -> GenerationSettings:
        return GenerationSettings(
            real_reuse=self.real_reuse,
            real_slots=self.real_slots,
            perlin_slots=self.perlin_slots,
            real_jitter=self.real_jitter,
            paste_ops=self.paste_ops,
            paste_inside=self.paste_inside,
            foreground=self.foreground,
            border_purity=self.foreground_border_purity,
            texture_ops=self.texture_ops,
            texture_min_crop=self.texture_min_crop,
            perlin_min_exponent=self.perlin_min_exponent,
            perlin_max_exponent=self.perlin_max_exponent,
            perlin_threshold=self.perlin_threshold,
            beta_max=self.perlin_beta_max,
            min_change=self.label_min_change,
        )

    def validate(self) -> None:
        super().validate()
        if len(self.levels) != 4 or list(self.levels) != sorted(set(self.levels)) or self.levels[0] < 1:
            raise ConfigError(f"levels must be 4 increasing ResNet-style stages >= 1, got {self.levels}")
        if any(b - a != 1 for a, b in zip(self.levels, self.levels[1:], strict=False)):
            raise ConfigError(f"levels must be consecutive (each half the previous side), got {self.levels}")
        if not self.attention_divisors or any(d < 1 for d in self.attention_divisors):
            raise ConfigError(f"attention_divisors must be integers >= 1, got {self.attention_divisors}")
        coarsest = 2 ** (self.levels[-1] + 1)
        third = 2 ** (self.levels[2] + 1)
        largest = max(self.attention_divisors)
        if self.crop % coarsest or (self.crop // third) % largest:
            raise ConfigError(
                f"crop ({self.crop}) must be a multiple of {coarsest} (the coarsest level's stride) and of "
                f"{third * largest} (so that attention divisor {largest} divides the level-{self.levels[2]} side)"
            )
        if not 0 < self.prototype_ratio <= 1:
            raise ConfigError(f"prototype_ratio must be in (0, 1], got {self.prototype_ratio}")
        for name in ("kmeans_n_init", "attention_blocks", "epochs", "train_batch_size", "real_reuse", "topk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")
        if self.focal_weight < 0 or not 0 <= self.focal_alpha <= 1 or self.focal_gamma < 0:
            raise ConfigError("need focal_weight >= 0, focal_alpha in [0, 1], focal_gamma >= 0")
        if not 0 <= self.focal_smooth < 0.5 or self.smooth_l1_beta <= 0:
            raise ConfigError("need focal_smooth in [0, 0.5) and smooth_l1_beta > 0")
        if self.real_slots < 0 or self.perlin_slots < 0:
            raise ConfigError("real_slots and perlin_slots must be >= 0")
        if not 0 <= self.real_jitter < 1:
            raise ConfigError(f"real_jitter must be in [0, 1), got {self.real_jitter}")
        if not 0 <= self.paste_ops <= 8 or not 0 <= self.texture_ops <= 10:
            raise ConfigError("paste_ops must be in [0, 8] and texture_ops in [0, 10]")
        if not 0 <= self.paste_inside <= 1 or not 0.5 <= self.foreground_border_purity <= 1:
            raise ConfigError("need paste_inside in [0, 1] and foreground_border_purity in [0.5, 1]")
        if self.foreground not in ("otsu", "none"):
            raise ConfigError(f"foreground must be 'otsu' or 'none', got {self.foreground!r}")
        if not 0 < self.texture_min_crop <= 1:
            raise ConfigError(f"texture_min_crop must be in (0, 1], got {self.texture_min_crop}")
        if not 0 <= self.perlin_min_exponent < self.perlin_max_exponent:
            raise ConfigError("need 0 <= perlin_min_exponent < perlin_max_exponent")
        if not 0 <= self.perlin_beta_max < 1 or not 0 <= self.label_min_change < 1:
            raise ConfigError("need perlin_beta_max in [0, 1) and label_min_change in [0, 1)")
        if self.sigma < 0:
            raise ConfigError(f"sigma must be >= 0, got {self.sigma}")
        if self.texture_source != "skimage":
            from pathlib import Path

            if not Path(self.texture_source).expanduser().is_dir():
                raise ConfigError(f"texture_source must be 'skimage' or a folder of images, got {self.texture_source!r}")


def topk_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Image scores [B]: mean of the k largest values of each map [B, H, W]."""
    flat = maps.reshape(maps.shape[0], -1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1)


@register
class PRN(AnomalyModel):
    name = "prn"
    Config = PRNConfig
    learning_type = "few_shot_supervised"

    def __init__(self, config: PRNConfig, device: str | torch.device = "cpu"):
        super().__init__(config, device)
        c = config
        self.backbone = create_feature_extractor(
            c.backbone, c.weights, out_indices=default_out_indices(c.backbone, tuple(c.levels)), device=self.device
        )
        self.weights_source = self.backbone.weights_source
        sides = [c.crop // r for r in self.backbone.reductions[:3]]
        self.net = PRNetwork(self.backbone.channels, sides, c.attention_blocks, c.attention_divisors).to(self.device)
        self.prototypes = Prototypes()
        self.fitted = False
        self.history: list[dict[str, float]] = []
        self.generation_info: dict[str, Any] = {}
        self.timings: dict[str, float] = {}

    def preprocess(self) -> Preprocess:
        bb = self.backbone
        return Preprocess(resize=self.config.resize, crop=self.config.crop, mean=bb.mean, std=bb.std)

    @classmethod
    def check_data(cls, config: MethodConfig, train_counts: dict[str, dict[str, int]]) -> None:
        for category, counts in train_counts.items():
            if counts.get("train_anomalous", 0) < 1:
                raise ConfigError(
                    f"prn trains on labelled anomalies, but the split gives {category!r} none; "
                    "use a few_shot split with k >= 1"
                )
            if counts["train"] - counts["train_anomalous"] < 1:
                raise ConfigError(f"prn needs normal training images; the split gives {category!r} none")

    # --- features -------------------------------------------------------------------------------------
    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen backbone features of the 4 levels (ordinary tensors, usable in autograd graphs)."""
        return [f.clone() for f in self.backbone(images.to(self.device))]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, 1, H, W] at the network's resolution."""
        features = self._features(images)
        return self.net(features, self.prototypes.residuals(features[:3]))

    # --- training -------------------------------------------------------------------------------------
    def _collect(self, loader: torch.utils.data.DataLoader) -> dict[str, Any]:
        images, masks, labels, paths, categories = [], [], [], [], set()
        for batch in loader:
            images.append(batch["image"].float())
            masks.append(batch["mask"][:, 0] > 0.5)
            labels.append(torch.as_tensor(batch["label"]))
            paths.extend(str(p) for p in batch["path"])
            names = batch.get("category") or []
            categories.update(str(n) for n in ([names] if isinstance(names, str) else names))
        if not images:
            raise ValueError("the training split is empty")
        if len(categories) > 1:
            raise ValueError(f"PRN is one model per class; the training images come from {sorted(categories)}")
        order = np.argsort(np.asarray(paths), kind="stable")  # independent of the loader's shuffling
        images_t = torch.cat(images)[order]
        if images_t.shape[-2:] != (self.config.crop, self.config.crop):
            raise ValueError(f"training images are {tuple(images_t.shape[-2:])}, the model expects {self.config.crop}")
        return {"images": images_t, "masks": torch.cat(masks)[order], "labels": torch.cat(labels)[order]}

    def _to_unit(self, images: torch.Tensor) -> np.ndarray:
        """Normalised [N,3,H,W] -> [N,H,W,3] float32 in [0, 1]."""
        mean = torch.tensor(self.backbone.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.backbone.std).view(1, 3, 1, 1)
        return (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(np.float32)

    def _normalise(self, unit: np.ndarray) -> torch.Tensor:
        mean = np.asarray(self.backbone.mean, np.float32)
        std = np.asarray(self.backbone.std, np.float32)
        return torch.from_numpy(((unit - mean) / std).transpose(2, 0, 1).copy())

    def make_batch(
        self, generator: AnomalyGenerator, entries: list[tuple[str, int]], normals: torch.Tensor,
        anomalies: torch.Tensor, rng: np.random.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:  # fmt: skip
        """Normalised images [B,3,H,W] and masks [B,1,H,W] of one batch. Pixels outside a generated mask keep
        the exact loader value of their normal image (so the mask equals the changed pixels)."""
        images, masks, kinds = [], [], []
        for kind, index in entries:
            made = generator.make(kind, index, rng)
            if made.kind == "normal":
                image = normals[made.base]
            elif made.kind == "real" and self.config.real_jitter == 0:
                image = anomalies[index]
            elif made.kind == "real":
                image = self._normalise(made.image)
            else:
                image = normals[made.base].clone()
                where = torch.from_numpy(made.mask)
                image[:, where] = self._normalise(made.image)[:, where]
            images.append(image)
            masks.append(torch.from_numpy(np.ascontiguousarray(made.mask)).float()[None])
            kinds.append(made.kind)
        return torch.stack(images), torch.stack(masks), kinds

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """smooth-L1(sigmoid) + focal_weight x focal on a batch of logits [B,1,H,W] and masks [B,1,H,W]."""
        c = self.config
        prob = torch.sigmoid(logits)
        l1 = smooth_l1_loss(prob, masks, c.smooth_l1_beta)
        focal = focal_loss(prob, masks, c.focal_alpha, c.focal_gamma, c.focal_smooth)
        return l1 + c.focal_weight * focal, {"l1": float(l1.detach()), "focal": float(focal.detach())}

    def fit(self, train_loader: torch.utils.data.DataLoader, progress: ProgressFn = no_progress) -> None:
        c = self.config
        start = time.perf_counter()
        data = self._collect(train_loader)
        normal_idx = torch.nonzero(data["labels"] == 0).flatten()
        anomaly_idx = torch.nonzero(data["labels"] == 1).flatten()
        if len(normal_idx) == 0 or len(anomaly_idx) == 0:
            raise ValueError(
                f"PRN needs normal images and labelled anomalies; got {len(normal_idx)} normal and "
                f"{len(anomaly_idx)} anomalous (use a few_shot split)"
            )
        normals, anomalies = data["images"][normal_idx], data["images"][anomaly_idx]
        seed = int(torch.initial_seed()) % 2**63  # the runner seeds torch before building the model
        rng = np.random.default_rng(seed)

        # 1. prototypes from the normal training images
        self.backbone.model.eval()
        levels: list[list[torch.Tensor]] = [[], [], []]
        for i in range(0, len(normals), c.batch_size):
            for level, f in zip(levels, self._features(normals[i : i + c.batch_size])[:3], strict=True):
                level.append(f.cpu())
        count = max(1, int(c.prototype_ratio * len(normals)))
        self.prototypes = Prototypes.fit([torch.cat(level) for level in levels], count, seed, c.kmeans_n_init)
        self.prototypes.to(self.device)
        del levels
        self.timings["prototypes_s"] = round(time.perf_counter() - start, 3)
        progress(0.03, f"{count} prototypes per level from {len(normals)} normal images")

        # 2. anomaly generator
        settings = c.generation()
        textures = TextureSource(c.texture_source)
        generator = AnomalyGenerator(
            self._to_unit(normals), self._to_unit(anomalies), data["masks"][anomaly_idx].numpy(), settings, textures
        )
        self.generation_info = {
            "settings": asdict(settings),
            "texture_source": textures.describe(),
            "foreground_share": round(generator.foreground_share(), 4),
            "normal_images": len(normals),
            "real_anomalies": len(anomalies),
            "prototypes_per_level": count,
        }

        # 3. training
        net = self.net
        optimizer = torch.optim.Adam(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.history = []
        train_start = time.perf_counter()
        for epoch in range(c.epochs):
            net.train()
            plan = generator.plan(rng)
            size = min(c.train_batch_size, len(plan))
            batches = [plan[i : i + size] for i in range(0, len(plan) - size + 1, size)]  # drop_last
            sums = {"loss": 0.0, "l1": 0.0, "focal": 0.0}
            for entries in batches:
                images, masks, _ = self.make_batch(generator, entries, normals, anomalies, rng)
                logits = self.forward(images)
                loss, parts = self.loss(logits, masks.to(self.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums["loss"] += float(loss.detach())
                for key, value in parts.items():
                    sums[key] += value
            means = {k: v / max(1, len(batches)) for k, v in sums.items()}
            self.history.append({"epoch": epoch + 1, **means})
            progress(
                0.03 + 0.97 * (epoch + 1) / c.epochs,
                f"epoch {epoch + 1}/{c.epochs} loss {means['loss']:.4f} (l1 {means['l1']:.4f} focal {means['focal']:.4f})",
            )
        self.timings["train_s"] = round(time.perf_counter() - train_start, 3)
        self.generation_info["generated"] = dict(generator.counts)
        net.eval()
        self.fitted = True

    # --- inference ------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        if not self.fitted:
            raise RuntimeError("PRN.predict called before fit/load")
        self.net.eval()
        size = tuple(images.shape[-2:])
        x = images.float()
        if size != (self.config.crop, self.config.crop):
            x = F.interpolate(x, size=(self.config.crop,) * 2, mode="bilinear", align_corners=False)
        prob = torch.sigmoid(self.forward(x))
        if prob.shape[-2:] != size:
            prob = F.interpolate(prob, size=size, mode="bilinear", align_corners=False)
        maps = prob[:, 0].float().cpu()
        if self.config.sigma > 0:
            maps = torch.from_numpy(np.stack([gaussian_filter(m, self.config.sigma) for m in maps.numpy()]))
        scores = topk_mean(maps, self.config.topk)
        return Prediction(image_scores=scores.numpy().astype(np.float32), anomaly_maps=maps.numpy().astype(np.float32))

    # --- persistence ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "prototypes": self.prototypes.state(),
            "fitted": self.fitted,
            "history": list(self.history),
            "generation": dict(self.generation_info),
            "timings": dict(self.timings),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"], strict=True)
        self.net.to(self.device).eval()
        self.prototypes = Prototypes(state["prototypes"]).to(self.device)
        self.fitted = bool(state.get("fitted", True))
        self.history = list(state.get("history", []))
        self.generation_info = dict(state.get("generation", {}))
        self.timings = dict(state.get("timings", {}))

    def describe(self) -> dict[str, Any]:
        final = self.history[-1] if self.history else {}
        return {**super().describe(), "generation": self.generation_info, "timings": dict(self.timings),
                "final_loss": final}  # fmt: skip
