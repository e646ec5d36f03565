"""The frozen vision-language foundation model of LTAD (image encoder E, text encoder T), through open_clip.

Selection string: `open_clip:<architecture>:<weights>` where weights is
- an open_clip pretrained tag (`open_clip:ViT-B-32:openai`, `open_clip:ViT-B-16:laion2b_s34b_b88k`): downloaded
  by open_clip on users' machines (or read from its cache);
- a path to a local checkpoint file (`open_clip:ViT-B-32:/models/clip_b32.pt`): works offline;
- `random`: a randomly initialised model (fixed seed, so a saved model rebuilds the same one). Every result is
  labelled `FOUNDATION_RANDOM_LABEL`, "random foundation model (NOT pretrained)".
Pretrained weights that cannot be had are an error with instructions (`WeightsError`); we never fall back to
random weights silently.

Learned pseudo class names (CoOp-style token embeddings) are spliced into fixed prompt templates at the
token-embedding level: `encode_prompts` runs the text tower by hand (token embedding -> positional embedding ->
causal transformer -> final LayerNorm -> end-of-text token -> projection), exactly as open_clip's
`encode_text` does, but on the first `L` positions only (L = the prompt's length). With the causal mask of CLIP
text towers the end-of-text output depends on positions <= its own only, so this equals the full 77-token
forward and costs a fraction of it. Text towers that are not causal CLIP towers with end-of-text pooling
(SigLIP, HF text towers) are refused with a clear error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ad_core.errors import ConfigError, WeightsError

FOUNDATION_RANDOM_LABEL = "random foundation model (NOT pretrained)"
FOUNDATION_RANDOM_SEED = 0
LIBRARIES = ("open_clip",)
_INSTALL_HINT = "pip install open-clip-torch"


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - open-clip-torch is a dependency
        raise ConfigError(f"LTAD's foundation model needs the package open-clip-torch: {_INSTALL_HINT}") from exc
    return open_clip


@dataclass(frozen=True)
class FoundationSpec:
    """A parsed `library:architecture:weights` selection."""

    library: str
    arch: str
    weights: str

    @classmethod
    def parse(cls, text: str) -> FoundationSpec:
        parts = str(text).split(":", 2)
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ConfigError(
                f"foundation must look like 'open_clip:<architecture>:<pretrained tag | checkpoint path | random>' "
                f"(e.g. open_clip:ViT-B-32:openai), got {text!r}"
            )
        library, arch, weights = (p.strip() for p in parts)
        if library == "transformers":
            raise ConfigError(
                "foundation library 'transformers' (ALIGN, CLIP) is not supported yet; use open_clip, e.g. "
                "open_clip:ViT-B-16:openai"
            )
        if library not in LIBRARIES:
            raise ConfigError(f"unknown foundation library {library!r}; use one of {', '.join(LIBRARIES)}")
        return cls(library, arch, weights)

    @property
    def is_random(self) -> bool:
        return self.weights == "random"

    @property
    def is_path(self) -> bool:
        return not self.is_random and ("/" in self.weights or Path(self.weights).suffix in (".pt", ".pth", ".bin",
                                                                                             ".safetensors"))

    def check(self) -> None:
        """ConfigError unless the architecture exists and the weights are a known tag, a file, or random."""
        open_clip = _open_clip()
        models = open_clip.list_models()
        if self.arch not in models:
            import difflib

            close = difflib.get_close_matches(self.arch, models, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else " (see open_clip.list_models())"
            raise ConfigError(f"unknown open_clip architecture {self.arch!r}{hint}")
        if self.is_random:
            return
        if self.is_path:
            if not Path(self.weights).expanduser().is_file():
                raise ConfigError(f"foundation checkpoint {self.weights} does not exist")
            return
        tags = open_clip.list_pretrained_tags_by_model(self.arch)
        if self.weights not in tags:
            raise ConfigError(
                f"open_clip has no pretrained tag {self.weights!r} for {self.arch}; known: {', '.join(tags) or 'none'}"
                f"; or give a checkpoint path, or 'random' (labelled {FOUNDATION_RANDOM_LABEL!r})"
            )

    def cached_file(self) -> str | None:
        """Where open_clip would read this pretrained tag from without downloading, or None (also for
        random weights and paths). Mirrors open_clip's `download_pretrained`: the hub file when the tag has a
        hub id (open_clip prefers it), else the URL's file in open_clip's cache folder."""
        from ad_core.backbones import hub_file_cached, hub_weight_filenames

        if self.is_random or self.is_path:
            return None
        cfg = _open_clip().get_pretrained_cfg(self.arch, self.weights) or {}
        if cfg.get("file"):
            return cfg["file"] if Path(cfg["file"]).is_file() else None
        if cfg.get("hf_hub"):
            model_id, filename = os.path.split(cfg["hf_hub"])
            return hub_file_cached(model_id, hub_weight_filenames(filename or "open_clip_pytorch_model.bin"))
        if cfg.get("url"):
            path = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
            return str(path) if path.is_file() else None
        return None

    def unavailable_reason(self) -> str | None:
        """Why these weights cannot be had on this machine (offline and not cached, or a missing file), with
        the line the worker would fail with; None when they can (`ad_core.backbones.hub_offline`)."""
        from ad_core.backbones import hub_offline

        if self.is_random:
            return None
        if self.is_path:
            path = Path(self.weights).expanduser()
            return None if path.is_file() else foundation_weights_message(self, f"{path} does not exist")
        if self.cached_file() is not None or not hub_offline():
            return None
        why = "HF_HUB_OFFLINE is set" if hub_offline(probe=False) else "the hub did not answer"
        return foundation_weights_message(self, f"not in the cache and {why}")

    def source_label(self) -> str:
        """Where the weights come from, as stored with every result."""
        if self.is_random:
            return f"{self.library}:{self.arch} {FOUNDATION_RANDOM_LABEL}"
        if self.is_path:
            return f"{self.library}:{self.arch}:file:{Path(self.weights).expanduser().resolve()}"
        return f"{self.library}:{self.arch}:{self.weights}"


def foundation_weights_message(spec: FoundationSpec, reason: str) -> str:
    """The one line a user gets when foundation weights cannot be had (at submit time and on the worker)."""
    reason = " ".join(reason.split())
    return (
        f"could not load foundation weights {spec.arch}:{spec.weights} ({reason}). Connect to the internet "
        "once (open_clip caches them), or pass a local checkpoint: "
        f"--set foundation=open_clip:{spec.arch}:/path/to/checkpoint.pt, or for tests and CPU demos "
        f"--set foundation=open_clip:{spec.arch}:random (labelled {FOUNDATION_RANDOM_LABEL!r})"
    )


@dataclass
class PromptIds:
    """A tokenised prompt template with `n_slots` placeholder positions for the learned class name."""

    ids: torch.Tensor  # [L] long
    slots: torch.Tensor  # [n_slots] long: positions of the learned tokens
    eot: int  # position of the end-of-text token (the pooled output)


class Foundation:
    """A frozen open_clip model: global image embeddings, patch tokens, and prompts with learned names."""

    def __init__(self, spec: FoundationSpec, device: str | torch.device = "cpu", image_size: int = 0):
        open_clip = _open_clip()
        spec.check()
        self.spec = spec
        self.device = torch.device(device)
        kwargs: dict[str, Any] = {"force_image_size": image_size} if image_size else {}
        if spec.is_random:
            # Fixed seed, independent of the global RNG: the same model in every process (save/load).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(FOUNDATION_RANDOM_SEED)
                model = open_clip.create_model(spec.arch, pretrained=None, pretrained_text=False, **kwargs)
        else:
            weights = str(Path(spec.weights).expanduser()) if spec.is_path else spec.weights
            try:
                model = open_clip.create_model(spec.arch, pretrained=weights, require_pretrained=True, **kwargs)
            except Exception as exc:  # hub/network/file errors come in many types; all mean the same here
                raise WeightsError(foundation_weights_message(spec, str(exc))) from exc
        model.eval().requires_grad_(False).to(self.device)
        self.model = model
        self.source = spec.source_label()
        text = getattr(model, "text", model)  # CustomTextCLIP keeps its text tower in .text
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
        if not all(hasattr(text, a) for a in needed) or getattr(text, "attn_mask", None) is None:
            raise ConfigError(f"{spec.arch}: its text tower is not a causal CLIP text transformer; LTAD's learned "
                              "class names need one (e.g. ViT-B-32, ViT-B-16, RN50)")
        pool = getattr(text, "text_pool_type", getattr(text, "pool_type", None))
        if pool != "argmax" or getattr(text, "cls_emb", None) is not None:
            raise ConfigError(f"{spec.arch}: text pooling {pool!r} is not CLIP's end-of-text pooling; not supported")
        self.text = text
        tokenizer = open_clip.get_tokenizer(spec.arch)
        if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "sot_token_id"):
            raise ConfigError(f"{spec.arch}: its tokenizer is not CLIP's BPE tokenizer; not supported")
        self.tokenizer = tokenizer
        self.width = int(text.token_embedding.embedding_dim)
        self.context_length = int(text.positional_embedding.shape[0])
        visual = model.visual
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        with torch.no_grad():
            probe = self.encode_prompts(self.prompt("{}", 1), torch.zeros(1, 1, self.width, device=self.device),
                                        normalize=False)
        self.embed_dim = int(probe.shape[-1])

    # --- parameters ---------------------------------------------------------------------------------------
    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def state_fingerprint(self) -> float:
        """Sum of |weights| (a cheap check that nothing changed them)."""
        return float(sum(p.detach().abs().sum().item() for p in self.model.parameters()))

    # --- text -----------------------------------------------------------------------------------------------
    def prompt(self, template: str, n_slots: int) -> PromptIds:
        """Tokenise `template`, whose `{}` marks where the `n_slots` learned name tokens go."""
        if template.count("{}") != 1:
            raise ConfigError(f"prompt template {template!r} must contain exactly one '{{}}' (the class name)")
        prefix, suffix = template.split("{}")
        head = [self.tokenizer.sot_token_id, *self.tokenizer.encode(prefix.strip())]
        tail = [*self.tokenizer.encode(suffix.strip()), self.tokenizer.eot_token_id]
        ids = head + [0] * n_slots + tail
        if len(ids) > self.context_length:
            raise ConfigError(f"prompt {template!r} with {n_slots} name tokens is longer than the text context "
                              f"({self.context_length} tokens)")
        slots = torch.arange(len(head), len(head) + n_slots)
        return PromptIds(torch.tensor(ids, dtype=torch.long), slots, len(ids) - 1)

    def encode_prompts(self, prompt: PromptIds, names: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text embeddings [C, E] of `prompt` with each class's learned tokens `names` [C, n_slots, width]
        spliced in. Gradients flow into `names` only (the model's weights are frozen)."""
        text = self.text
        c = names.shape[0]
        ids = prompt.ids.to(self.device)
        length = ids.shape[0]
        x = text.token_embedding(ids).unsqueeze(0).expand(c, -1, -1).clone()
        x[:, prompt.slots.to(self.device)] = names.to(x.dtype)
        x = x + text.positional_embedding[:length]
        x = text.transformer(x, attn_mask=text.attn_mask[:length, :length])
        x = text.ln_final(x)[:, prompt.eot]
        proj = text.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return F.normalize(x, dim=-1) if normalize else x

    # --- images ---------------------------------------------------------------------------------------------
    def _prepare(self, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
        """Images normalised with (mean, std) -> this model's normalisation and input size."""
        images = images.to(self.device).float()
        m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
        fm = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        fs = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        images = ((images * s + m) - fm) / fs
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic",
                                   align_corners=False, antialias=True)
        return images

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
        """Global image embeddings [B, E], L2-normalised."""
        return F.normalize(self.model.encode_image(self._prepare(images, mean, std)), dim=-1)

    @torch.no_grad()
    def patch_tokens(
        self, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], blocks: tuple[int, ...]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Patch tokens after the given (1-based) blocks of the image encoder, each [B, C, h, w], plus the
        global embeddings [B, E] of the same forward pass."""
        x = self._prepare(images, mean, std)
        visual = self.model.visual
        if not hasattr(visual, "forward_intermediates"):
            raise ConfigError(f"{self.spec.arch}: its image encoder has no forward_intermediates; use "
                              "patch_source='backbone'")
        out = visual.forward_intermediates(x, indices=[b - 1 for b in blocks], output_fmt="NCHW")
        pooled = out.get("image_features")
        if pooled is None:
            pooled = self.model.encode_image(x)
        return list(out["image_intermediates"]), F.normalize(pooled, dim=-1)
