"""LTAD phase 2 networks: the transformer reconstruction module (RM) Π and the patch projections of the
semantic AD module, plus the two per-patch scores.

- `ReconstructionModule`: patch tokens of one image [B, L, D] -> reconstructed tokens [B, L, D]. The paper says
  only "transformer-based reconstruction module"; ours follows UniAD (You et al., NeurIPS 2022), the usual
  transformer reconstruction model for unified multi-class AD: linear in-projection, learned position
  embeddings, an encoder (self-attention over the tokens) and a decoder whose queries are learned per position
  (so a token's own features reach its output only through attention), both with a neighbour mask (a token
  does not attend to the k x k tokens around it, itself included), and a linear out-projection. Pre-norm
  layers. During training the input tokens are jittered (`jitter`: Gaussian noise whose norm is `jitter` times
  the token's norm) and the clean tokens are the target.
- `PatchProjection`: visual patch features [*, D] -> the foundation model's joint image-text space [*, E]
  (MLP with one hidden layer, or linear when hidden = 0), L2-normalised.
- `rec_scores`: S_rec(p) = ||Π(p) - p||^2 per token.
- `sem_scores`: S_sem(p, c) = softmax over {normal, abnormal} of cos(P(p), t_{n,c}) / τ and cos(P(p), t_{a,c}) / τ,
  the abnormal probability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def neighbour_mask(grid: tuple[int, int], k: int) -> torch.Tensor | None:
    """[L, L] bool, True where attention is blocked: |dy|, |dx| <= k // 2 (a k x k window, itself included)."""
    if k <= 0:
        return None
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    r = k // 2
    return ((ys[:, None] - ys[None, :]).abs() <= r) & ((xs[:, None] - xs[None, :]).abs() <= r)


class ReconstructionModule(nn.Module):
    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        d_model: int = 256,
        enc_layers: int = 4,
        dec_layers: int = 4,
        heads: int = 8,
        ff: int = 1024,
        neighbour: int = 7,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.grid = tuple(grid)
        length = grid[0] * grid[1]
        self.in_proj = nn.Linear(dim, d_model)
        self.pos = nn.Parameter(torch.zeros(1, length, d_model))
        self.query = nn.Parameter(torch.zeros(1, length, d_model))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.query, std=0.02)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, heads, ff, dropout, batch_first=True, norm_first=True),
            enc_layers, enable_nested_tensor=False,
        ) if enc_layers > 0 else None
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d_model, heads, ff, dropout, batch_first=True, norm_first=True), dec_layers
        )
        self.norm = nn.LayerNorm(d_model)
        self.out_proj = nn.Linear(d_model, dim)
        # Zero-initialised output: training starts from Π(p) = 0 (S_rec = ||p||^2 = 1 for L2-normalised p)
        # instead of from large random outputs, which cost a short CPU schedule most of its steps.
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        mask = neighbour_mask(self.grid, neighbour)
        # Blocked neighbours as a float mask (-inf); never a whole blocked row: k x k < L is checked by the config.
        self.register_buffer("mask", None if mask is None else torch.zeros(mask.shape).masked_fill(mask, float("-inf")),
                             persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(tokens) + self.pos
        if self.encoder is not None:
            x = self.encoder(x, mask=self.mask)
        q = self.query.expand(tokens.shape[0], -1, -1)
        y = self.decoder(q + self.pos, x, tgt_mask=None, memory_mask=self.mask)
        return self.out_proj(self.norm(y))


class PatchProjection(nn.Module):
    def __init__(self, dim: int, embed_dim: int, hidden: int = 512):
        super().__init__()
        self.net = (nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim)) if hidden > 0
                    else nn.Linear(dim, embed_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=-1)


def jitter(tokens: torch.Tensor, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise with expected norm `scale` x the token's norm (direction uniform)."""
    if scale <= 0:
        return tokens
    noise = torch.randn(tokens.shape, generator=generator).to(tokens.device)
    d = tokens.shape[-1]
    return tokens + noise * tokens.norm(dim=-1, keepdim=True) * (scale / d**0.5)


def rec_scores(rm: ReconstructionModule, tokens: torch.Tensor) -> torch.Tensor:
    """S_rec = ||Π(p) - p||^2 per token: [B, L, D] -> [B, L]."""
    return ((rm(tokens) - tokens) ** 2).sum(-1)


def sem_logits(projected: torch.Tensor, t_normal: torch.Tensor, t_abnormal: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """[.., E] projected patches and per-patch (broadcastable) normal/abnormal text embeddings -> [.., 2]."""
    cos_n = (projected * t_normal).sum(-1)
    cos_a = (projected * t_abnormal).sum(-1)
    return torch.stack([cos_n, cos_a], dim=-1) / temperature


def sem_scores(projected: torch.Tensor, t_normal: torch.Tensor, t_abnormal: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """S_sem = P(abnormal) in [0, 1]."""
    return sem_logits(projected, t_normal, t_abnormal, temperature).softmax(-1)[..., 1]
