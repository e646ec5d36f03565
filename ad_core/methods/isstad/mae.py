"""The ISSTAD network: an MAE (ViT encoder + lightweight decoder) whose decoder grows for stage 2.

One module serves both stages (parameter names follow Meta's MAE code, so official MAE / ISSTAD checkpoints
load by name):

- encoder: timm `PatchEmbed` + cls token + timm `Block`s + LayerNorm, fixed 2-D sin-cos position embedding;
- decoder: `decoder_embed` (Linear enc->dec), `mask_token`, fixed 2-D sin-cos `decoder_pos_embed`,
  `decoder_depth` timm `Block`s, `decoder_norm`, `decoder_pred` (reconstruction head, p*p*3 per token);
- `mask_pred`: the pixel-state head (p*p*2 logits per token). As in the official code it is ONE linear layer
  shared by all decoder blocks and applied to every block's output without a norm (deep supervision).

Stage 1 (`forward_mae`) uses only the first `stage1_decoder_depth` decoder blocks with random masking;
stage 2 (`forward_stage2`) runs the encoder unmasked and all `decoder_depth` blocks. With `shuffle=True`
stage 2 reproduces the official code's encoder call: its masking step with ratio 0 still permutes the patch
tokens at random and the order is never restored, so decoder slot i carries the token of another patch while
it gets the position embedding of patch i (see `ad_core.methods.isstad.model`, `stage2_token_order`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from timm.models.vision_transformer import Block, PatchEmbed

from ad_core.backbones import pretrained_weights_label
from ad_core.errors import WeightsError

__all__ = ["EncoderWeightsError", "IsstadMAE", "load_pretrained_encoder", "sincos_pos_embed_2d"]

# How to fix any encoder-weights problem; the end of every EncoderWeightsError message.
_FIX = (
    "pass --weights PATH to an MAE checkpoint (e.g. Meta's mae_visualize_vit_large.pth) whose encoder matches "
    "the config, or --weights random (tests and CPU demos only)"
)


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embedding [1, (1+)grid*grid, dim] (half the channels per axis)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a dim divisible by 4, got {dim}")
    coords = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))  # (w, h) order
    emb = np.concatenate([_sincos_1d(dim // 2, coords[0]), _sincos_1d(dim // 2, coords[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float()[None]


class IsstadMAE(nn.Module):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_dim: int = 512,
        decoder_depth: int = 12,
        decoder_heads: int = 16,
        stage1_decoder_depth: int = 6,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.stage1_decoder_depth = stage1_decoder_depth

        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList(
            [
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(depth)
            ]
        )
        self.norm = norm_layer(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_dim, decoder_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size**2 * 3)
        self.mask_pred = nn.Linear(decoder_dim, patch_size**2 * 2)

        # Fixed (not trained, not saved: recomputed from the geometry) sin-cos embeddings.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, self.grid), persistent=False)
        self.register_buffer(
            "decoder_pos_embed", sincos_pos_embed_2d(decoder_dim, self.grid), persistent=False
        )
        self._init_weights()

    # --- initialisation (as MAE) ----------------------------------------------------------------------
    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # --- parameter groups -----------------------------------------------------------------------------
    def encoder_modules(self) -> list[nn.Module | nn.Parameter]:
        return [self.patch_embed, self.cls_token, self.blocks, self.norm]

    def stage1_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Encoder + the stage-1 part of the decoder (the blocks stage 1 trains, norm, reconstruction head)."""
        skip = {f"decoder_blocks.{i}." for i in range(self.stage1_decoder_depth, len(self.decoder_blocks))}
        return [
            (n, p)
            for n, p in self.named_parameters()
            if not n.startswith("mask_pred.") and not any(n.startswith(s) for s in skip)
        ]

    def stage2_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Decoder + both heads (the encoder is frozen in stage 2; the mask token is unused there)."""
        prefixes = ("decoder_embed.", "decoder_blocks.", "decoder_norm.", "decoder_pred.", "mask_pred.")
        return [(n, p) for n, p in self.named_parameters() if n.startswith(prefixes)]

    def set_encoder_trainable(self, trainable: bool) -> None:
        for module in (self.patch_embed, self.blocks, self.norm):
            module.requires_grad_(trainable)
        self.cls_token.requires_grad_(trainable)

    # --- shapes --------------------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor, channels: int = 3) -> torch.Tensor:
        """[N, C, H, W] -> [N, L, p*p*C] (MAE's order: row, column, then channel)."""
        p, g = self.patch_size, self.grid
        x = imgs.reshape(imgs.shape[0], channels, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.shape[0], g * g, p * p * channels)

    def unpatchify(self, x: torch.Tensor, channels: int = 3) -> torch.Tensor:
        """[N, L, p*p*C] -> [N, C, H, W]."""
        p, g = self.patch_size, self.grid
        x = x.reshape(x.shape[0], g, g, p, p, channels)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], channels, g * p, g * p)

    # --- encoder -------------------------------------------------------------------------------------
    def forward_encoder(
        self,
        imgs: torch.Tensor,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
        shuffle: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns (latent [N, 1+kept, D], mask [N, L] with 1 = removed, ids_restore [N, L]).

        The patch tokens are permuted by argsort of uniform noise drawn from `generator` (MAE's
        `random_masking`) when mask_ratio > 0 or `shuffle`; the kept tokens stay in that permuted order. With
        mask_ratio 0 and shuffle=False nothing is permuted (mask and ids_restore are None).
        """
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        mask = ids_restore = None
        if mask_ratio > 0 or shuffle:
            n, length, dim = x.shape
            keep = int(length * (1 - mask_ratio))
            # Noise on the CPU from our generator: the same masks on every device for a given seed.
            noise = torch.rand(n, length, generator=generator).to(x.device)
            ids_shuffle = torch.argsort(noise, dim=1)
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, dim))
            mask = torch.ones(n, length, device=x.device)
            mask[:, :keep] = 0
            mask = torch.gather(mask, 1, ids_restore)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    # --- stage 1 -------------------------------------------------------------------------------------
    def forward_mae(
        self,
        imgs: torch.Tensor,
        mask_ratio: float,
        norm_pix_loss: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAE pre-training step: (loss = MSE on the removed patches, prediction [N, L, p*p*3], mask [N, L])."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator)
        x = self.decoder_embed(latent)
        if mask is None:  # mask_ratio 0: plain auto-encoding, every patch counts
            mask = torch.ones(imgs.shape[0], self.grid * self.grid, device=imgs.device)
        else:
            n_masked = ids_restore.shape[1] + 1 - x.shape[1]
            tokens = torch.cat([x[:, 1:, :], self.mask_token.expand(x.shape[0], n_masked, -1)], dim=1)
            tokens = torch.gather(tokens, 1, ids_restore[:, :, None].expand(-1, -1, x.shape[2]))
            x = torch.cat([x[:, :1, :], tokens], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks[: self.stage1_decoder_depth]:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

        target = self.patchify(imgs)
        if norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum()
        return loss, pred, mask

    # --- stage 2 -------------------------------------------------------------------------------------
    def forward_stage2(
        self,
        imgs: torch.Tensor,
        frozen_encoder: bool = True,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(reconstruction [N,3,H,W], pixel-state logits per decoder block: list of [N,2,H,W]).

        shuffle=False: the tokens keep their order (token i = patch i all the way through). shuffle=True: the
        official code's behaviour, the encoder's patch tokens are randomly permuted (noise from `generator`)
        and never put back, so the decoder gets them in permuted order under the unpermuted decoder position
        embedding, and its output slot i is unpatchified to patch i.
        """
        if frozen_encoder:
            with torch.no_grad():
                latent, _, _ = self.forward_encoder(imgs, 0.0, generator, shuffle)
        else:
            latent, _, _ = self.forward_encoder(imgs, 0.0, generator, shuffle)
        x = self.decoder_embed(latent) + self.decoder_pos_embed
        logits = []
        for blk in self.decoder_blocks:
            x = blk(x)
            logits.append(self.unpatchify(self.mask_pred(x)[:, 1:, :], channels=2))
        rec = self.unpatchify(self.decoder_pred(self.decoder_norm(x))[:, 1:, :])
        return rec, logits


class EncoderWeightsError(WeightsError):
    """Pretrained encoder weights could not be loaded; the one-line message says how to supply them."""


def _encoder_keys(model: IsstadMAE) -> list[str]:
    prefixes = ("patch_embed.", "blocks.", "norm.")
    return [k for k in model.state_dict() if k.startswith(prefixes) or k == "cls_token"]


def load_pretrained_encoder(model: IsstadMAE, backbone: str, weights: str) -> str:
    """Initialise `model` from pretrained weights; returns the weights-source label.

    - weights="imagenet": `timm.create_model(backbone, pretrained=True)` (e.g. `vit_large_patch16_224.mae`,
      Meta's MAE-pretrained ViT-L/16 encoder); only the encoder is initialised (timm has no MAE decoder).
    - weights=PATH: a checkpoint file, e.g. Meta's `mae_visualize_vit_large.pth` that the official ISSTAD
      code starts from, or an ISSTAD stage-1 checkpoint (keys may sit under "model"). The encoder must be
      complete; decoder tensors whose names and shapes fit are loaded too, but only for the first
      `stage1_decoder_depth` decoder blocks (the official stage 1 has that many; the rest stay random as in
      the official stage 2).

    Position embeddings are never loaded: they are the fixed sin-cos table of our geometry.
    """
    if weights == "imagenet":
        import timm

        try:
            source_model = timm.create_model(backbone, pretrained=True)
        except Exception as exc:  # hub errors come in many types; all mean the same to the user
            reason = " ".join(str(exc).split())  # one line, whatever the hub library wrote
            raise EncoderWeightsError(
                f"could not load pretrained weights for {backbone} from the Hugging Face hub or its cache "
                f"({reason}); connect to the internet once, or {_FIX}"
            ) from exc
        state = source_model.state_dict()
        cfg = getattr(source_model, "pretrained_cfg", None)
        # The resolved architecture.tag and hub id that timm loaded (see ad_core.backbones).
        label = pretrained_weights_label(cfg) if cfg else f"timm:{backbone}:pretrained"
        decoder_allowed = False
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise EncoderWeightsError(f"weights file {path} does not exist; {_FIX}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # not a checkpoint, truncated, or pickled objects beyond plain tensors
            reason = " ".join(str(exc).split())[:200]
            raise EncoderWeightsError(f"cannot read weights file {path} ({reason}); {_FIX}") from exc
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        label = f"file:{path.resolve()}"
        decoder_allowed = True

    own = model.state_dict()
    encoder_keys = _encoder_keys(model)
    missing = [k for k in encoder_keys if k not in state]
    if missing:
        raise EncoderWeightsError(
            f"weights {weights!r} lack encoder tensors {missing[:5]} (+{max(0, len(missing) - 5)} more), so the "
            f"encoder config (patch size, dim, depth) does not match the pretrained model; {_FIX}"
        )
    bad = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in encoder_keys
        if state[k].shape != own[k].shape
    ]
    if bad:
        raise EncoderWeightsError(f"weights {weights!r} do not fit the configured encoder: {bad[:5]}; {_FIX}")
    selected = {k: state[k] for k in encoder_keys}
    if decoder_allowed:
        allowed_blocks = {f"decoder_blocks.{i}." for i in range(model.stage1_decoder_depth)}
        for k, v in state.items():
            if k in selected or k not in own or own[k].shape != v.shape or "pos_embed" in k:
                continue
            if k.startswith("decoder_blocks.") and not any(k.startswith(b) for b in allowed_blocks):
                continue
            if k.startswith(("decoder_", "mask_token", "mask_pred")):
                selected[k] = v
    model.load_state_dict(selected, strict=False)
    n_decoder = sum(1 for k in selected if k not in encoder_keys)
    return label + (f" (+{n_decoder} decoder tensors)" if n_decoder else "")
