"""PRN's network: multi-scale prototypes and residuals, multi-scale fusion, multi-size self-attention and the
U-Net-style decoder (Zhang et al., CVPR 2023; structure as in the unofficial xcyao00/PRNet, restated).

Shapes use three "scales" (backbone levels with reductions 4, 8, 16: ResNet layer1-3) plus the coarsest level
(reduction 32: layer4) that only feeds the decoder. C_i = channels of level i, H_i = its (square) side.

- `Prototypes`: per scale, K whole feature maps [K, C_i, H_i, H_i] (k-means centroids of the flattened maps of
  the normal training images). Every input map is assigned the prototype at the smallest L2 distance over the
  whole flattened map; its residual is the element-wise squared difference (f - p)^2.
- `MultiScaleFusion`: out_i = x_i + sum over j != i of x_j resampled to scale i (coarser -> finer: bilinear
  upsampling, align_corners=True, then a 1x1 conv; finer -> coarser: a strided grouped conv, 3x3/s2 or 5x5/s4).
- `MultiSizeAttention`: the map is cut into non-overlapping square patches of side H/d for every divisor d
  (default 1, 2, 4, 8 -> 1, 4, 16, 64 tokens); a token is the flattened C*(H/d)^2 patch; q, k, v are
  per-element affine projections (a depthwise 1x1 conv over the flattened patch); attention = softmax(q k^T /
  (C (H/d)^2)) v. The per-size outputs are concatenated and reduced to C channels by a residual conv block.
- `PRNetwork`: residuals and features are fused by the same MSF (shared weights) and concatenated per scale
  (2 C_i channels), go through `attention_blocks` MSA blocks per scale and a second MSF, then the decoder
  climbs from the coarsest level (upsample x2 + conv-BN-ReLU, concat with the scale's attention output, two
  conv-BN-ReLU) to scale 1, upsamples x4 and predicts one logit per input pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MultiScaleFusion",
    "MultiSizeAttention",
    "PRNetwork",
    "Prototypes",
    "assign_prototypes",
    "residuals",
]


# --- prototypes ----------------------------------------------------------------------------------------
def assign_prototypes(feature: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Index [B] of the prototype [K,C,H,W] nearest (L2 over the whole flattened map) to each map [B,C,H,W]."""
    flat = feature.reshape(feature.shape[0], -1).float()
    protos = prototypes.reshape(prototypes.shape[0], -1).float().to(flat.device)
    return torch.cdist(flat, protos).argmin(dim=1)


def residuals(feature: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(f - p)^2 element-wise, p = the nearest prototype of each map (`assign_prototypes`)."""
    nearest = prototypes.to(feature.device, feature.dtype)[assign_prototypes(feature, prototypes)]
    return (feature - nearest) ** 2


class Prototypes:
    """Per-scale prototype maps; `fit` runs seeded k-means (scikit-learn) on the flattened maps."""

    def __init__(self, maps: Sequence[torch.Tensor] = ()):
        self.maps = [m.float().cpu() for m in maps]

    def to(self, device: str | torch.device) -> Prototypes:
        """Keep the maps on `device` (where the features are computed); returns self."""
        self.maps = [m.to(device) for m in self.maps]
        return self

    @classmethod
    def fit(cls, features: Sequence[torch.Tensor], count: int, seed: int, n_init: int = 1) -> Prototypes:
        """`features[i]`: [N, C_i, H_i, W_i] of the N normal training images; `count` prototypes per scale."""
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        maps = []
        for feature in features:
            n = feature.shape[0]
            k = max(1, min(count, n))
            flat = feature.reshape(n, -1).double().numpy()
            # scikit-learn's OpenMP threads follow torch's thread count (its default, every core, spins and
            # burns several times the CPU time on a shared machine).
            with threadpool_limits(limits=torch.get_num_threads()):
                kmeans = KMeans(n_clusters=k, random_state=seed % 2**32, n_init=n_init).fit(flat)
            centres = torch.from_numpy(kmeans.cluster_centers_).float()
            maps.append(centres.reshape(k, *feature.shape[1:]))
        return cls(maps)

    def residuals(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [residuals(f, p) for f, p in zip(features, self.maps, strict=True)]

    def state(self) -> list[torch.Tensor]:
        return [m.detach().cpu().clone() for m in self.maps]


# --- fusion ----------------------------------------------------------------------------------------------
class _UpConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=True)
        return self.conv(x)


def _down_conv(c_in: int, c_out: int, factor: int) -> nn.Conv2d:
    # The reference uses groups = c_in (needs c_out divisible by c_in, true for ResNet-18's 64/128/256);
    # groups = gcd(c_in, c_out) is the same for those and works for any channel counts.
    kernel = {2: 3, 4: 5}[factor]
    return nn.Conv2d(c_in, c_out, kernel, stride=factor, padding=kernel // 2, groups=math.gcd(c_in, c_out))


class MultiScaleFusion(nn.Module):
    """Three scales (each half the side of the previous): every output adds the other two, resampled."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        c1, c2, c3 = channels
        self.to1 = nn.ModuleList([_UpConv(c2, c1, 2), _UpConv(c3, c1, 4)])
        self.to2 = nn.ModuleList([_down_conv(c1, c2, 2), _UpConv(c3, c2, 2)])
        self.to3 = nn.ModuleList([_down_conv(c1, c3, 4), _down_conv(c2, c3, 2)])

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> list[torch.Tensor]:
        return [
            x1 + self.to1[0](x2) + self.to1[1](x3),
            x2 + self.to2[0](x1) + self.to2[1](x3),
            x3 + self.to3[0](x1) + self.to3[1](x2),
        ]


# --- multi-size self-attention ---------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + 1x1 shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def patchify(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B,C,H,W] -> [B, L, C*size*size] (non-overlapping patches, row-major; token = (c, p, q) flattened)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // size, size, w // size, size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // size) * (w // size), c * size * size)


def unpatchify(tokens: torch.Tensor, size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `patchify`."""
    b = tokens.shape[0]
    x = tokens.reshape(b, height // size, width // size, channels, size, size)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, height, width)


class _SizeAttention(nn.Module):
    """Self-attention over the patches of one size; q/k/v = per-element scale and bias of the token."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.size = size
        dim = channels * size * size
        self.dim = dim
        # Initialised like a depthwise Conv1d(dim, dim, 1, groups=dim): fan_in 1 -> U(-1, 1).
        self.weight = nn.Parameter(torch.empty(3, dim).uniform_(-1.0, 1.0))
        self.bias = nn.Parameter(torch.empty(3, dim).uniform_(-1.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = patchify(x, self.size)  # [B, L, dim]
        q, k, v = (tokens * self.weight[i] + self.bias[i] for i in range(3))
        attn = torch.softmax(q @ k.transpose(1, 2) / self.dim, dim=-1)
        return unpatchify(attn @ v, self.size, c, h, w)


class MultiSizeAttention(nn.Module):
    """One multi-size self-attention block at one scale (side `height`): patch sides height / d."""

    def __init__(self, channels: int, height: int, divisors: Sequence[int] = (1, 2, 4, 8)):
        super().__init__()
        bad = [d for d in divisors if d < 1 or height % d]
        if bad:
            raise ValueError(f"attention divisors {bad} do not divide the feature side {height}")
        self.branches = nn.ModuleList([_SizeAttention(channels, height // d) for d in divisors])
        self.reduce = ResidualBlock(len(divisors) * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(torch.cat([branch(x) for branch in self.branches], dim=1))


# --- the whole network -------------------------------------------------------------------------------------
def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class _Up(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, factor: int):
        super().__init__(nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=True), *_conv_bn_relu(c_in, c_out))


class PRNetwork(nn.Module):
    """The trainable part of PRN: features of 4 levels + residuals of the first 3 -> logits at 4x scale 1.

    `channels`: C of the 4 backbone levels; `heights`: sides of the first 3 (each half the previous; the 4th
    is half the 3rd).
    """

    def __init__(
        self,
        channels: Sequence[int],
        heights: Sequence[int],
        attention_blocks: int = 3,
        divisors: Sequence[int] = (1, 2, 4, 8),
    ):
        super().__init__()
        c = list(channels)
        if len(c) != 4 or len(heights) != 3:
            raise ValueError("PRNetwork needs 4 backbone levels (channels) and the sides of the first 3")
        self.fuse_in = MultiScaleFusion(c[:3])
        doubled = [2 * ci for ci in c[:3]]
        self.attention = nn.ModuleList(
            [
                nn.Sequential(*[MultiSizeAttention(ci, hi, divisors) for _ in range(attention_blocks)])
                for ci, hi in zip(doubled, heights, strict=True)
            ]
        )
        self.fuse_out = MultiScaleFusion(doubled)
        self.up = nn.ModuleList([_Up(c[3], c[2], 2), _Up(c[2], c[1], 2), _Up(c[1], c[0], 2)])
        self.blocks = nn.ModuleList(
            [nn.Sequential(*_conv_bn_relu(3 * ci, ci), *_conv_bn_relu(ci, ci)) for ci in (c[2], c[1], c[0])]
        )
        self.head = nn.Sequential(_Up(c[0], c[0], 4), nn.Conv2d(c[0], 1, 3, padding=1))

    def forward(self, features: Sequence[torch.Tensor], residual_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        fused = self.fuse_in(*features[:3])
        fused_res = self.fuse_in(*residual_maps)
        joined = [torch.cat([f, r], dim=1) for f, r in zip(fused, fused_res, strict=True)]
        attended = self.fuse_out(*[block(x) for block, x in zip(self.attention, joined, strict=True)])
        x = features[3]
        for up, block, skip in zip(self.up, self.blocks, reversed(attended), strict=True):
            x = block(torch.cat([skip, up(x)], dim=1))
        return self.head(x)
