"""Split recipes: which images of a dataset a run trains and is tested on.

A `SplitSpec` is a small, frozen, JSON-serialisable recipe (`kind` + options + an optional seed) that is
stored with every job and every result. `SplitSpec.apply` turns a dataset on disk into the concrete
per-class train/test lists (`CategorySplit`s); the content hash of those lists (`CategorySplit.content_hash`)
is stored with each category result, so two numbers are only compared when they come from the same files.

Kinds (the registry `SPLIT_KINDS`; a new kind is one `SplitKind` subclass registered here):
- `standard`: the dataset as downloaded (train = the normal training images, test = the official test set).
- `few_shot`: DRA's few-shot supervised protocol (Ding, Pang, Shen, CVPR 2022). Per class, `k` anomalous
  test images (with their masks) are drawn with the seed and moved into the training set, so they are
  never evaluated. `setting="general"` draws from every defect type; `setting="hard"` draws from one defect
  type only (`defect_type`, or one drawn with the seed) and removes that whole type from the test set.
  Draws are made over sorted paths with a per-class seed, so a recipe gives the same files on every
  machine; a permutation is drawn and its first k taken, so k=1 picks one of the images k=10 picks.
  One-class methods run on the same split and simply do not see the labelled anomalies.

Seeds: `seed=None` (the default) means "the run's seed", so a few-shot run over seeds 0, 1, 2 averages
over three draws, as the protocol asks. Every kind sorts paths before any seeded draw.

This module imports no torch: the CLI, the planner and the analysis code use it cheaply.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ad_core.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from ad_core.data.base import CategorySplit


@dataclass(frozen=True)
class SplitSpec:
    """A split recipe: `kind`, its options (sorted key/value pairs) and a seed (None = the run's seed)."""

    kind: str = "standard"
    options: tuple[tuple[str, Any], ...] = ()
    seed: int | None = None

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def make(cls, kind: str = "standard", seed: int | None = None, **options: Any) -> SplitSpec:
        """A validated recipe with the kind's defaults filled in."""
        split_kind = get_split_kind(kind)
        values = split_kind.check({**split_kind.defaults, **options})
        if seed is not None and (not isinstance(seed, int) or seed < 0):
            raise ConfigError(f"split seed must be a non-negative integer, got {seed!r}")
        return cls(kind=kind, options=tuple(sorted(values.items())), seed=seed)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SplitSpec:
        """Inverse of `to_dict` (None or {} = the standard split)."""
        data = dict(data or {})
        kind = data.pop("kind", "standard")
        seed = data.pop("seed", None)
        return cls.make(kind, seed=seed, **data)

    @classmethod
    def parse(cls, text: str | None) -> SplitSpec:
        """CLI form: `standard`, `few_shot`, `few_shot:k=10,setting=hard`, `few_shot:k=1,seed=3`."""
        if not text:
            return cls()
        kind, _, rest = text.strip().partition(":")
        options: dict[str, Any] = {}
        for pair in filter(None, (p.strip() for p in rest.split(","))):
            if "=" not in pair:
                raise ConfigError(f"split option {pair!r} must be key=value (e.g. few_shot:k=10,setting=hard)")
            key, value = (s.strip() for s in pair.split("=", 1))
            options[key] = _parse_value(value)
        seed = options.pop("seed", None)
        return cls.make(kind.strip(), seed=seed, **options)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dict(self.options), "seed": self.seed}

    # --- identity and text ---------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Canonical text of the recipe: equal keys = the same recipe (the leaderboard's comparability key)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def option(self, name: str) -> Any:
        return dict(self.options)[name]

    @property
    def label(self) -> str:
        """Short name for tables, e.g. `standard` or `few_shot(k=10, general)`."""
        return get_split_kind(self.kind).label(self)

    def describe(self) -> str:
        """The protocol in words, for captions and exports."""
        return get_split_kind(self.kind).describe(self)

    def with_seed(self, run_seed: int) -> SplitSpec:
        """The recipe with its seed resolved (the run's seed when none was fixed; none for kinds that draw
        nothing, so their recipe is the same for every seed)."""
        if not get_split_kind(self.kind).seeded:
            return replace(self, seed=None)
        return self if self.seed is not None else replace(self, seed=run_seed)

    # --- application ---------------------------------------------------------------------------------
    def apply(self, dataset: str, root: str, categories: Sequence[str], run_seed: int = 0) -> dict[str, CategorySplit]:
        """Concrete train/test lists per category. Raises DatasetError naming the path or the shortfall."""
        from ad_core.data import load_split

        if not categories:
            raise ConfigError("no category given")
        loaded = {category: load_split(dataset, root, category) for category in categories}
        resolved = self.with_seed(run_seed)
        splits = get_split_kind(self.kind).apply(resolved, loaded)
        for split in splits.values():
            split.recipe = resolved.to_dict()
        return splits


def split_identity(recipe: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(key, label, description) of a stored recipe; a kind this version does not know keeps its raw text."""
    try:
        spec = SplitSpec.from_dict(recipe)
    except ConfigError:
        text = json.dumps(dict(recipe or {}), sort_keys=True)
        return text, text, f"unknown split recipe {text}"
    return spec.key, spec.label, spec.describe()


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "null": None}.get(text.lower(), text)


def class_seed(seed: int, category: str) -> list[int]:
    """Seed material of one class's draw: stable across machines and Python versions (no `hash()`)."""
    return [int(seed), zlib.crc32(category.encode())]


# --- kinds ------------------------------------------------------------------------------------------------


@dataclass
class SplitKind:
    """How one kind of recipe validates its options, describes itself and applies to loaded classes."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    summary: ClassVar[str] = ""
    seeded: ClassVar[bool] = True  # False: the kind draws nothing, so the seed does not change its lists

    def check(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(f"unknown option(s) {unknown} for split kind {self.name!r}; known: {known}")
        return options

    def label(self, spec: SplitSpec) -> str:
        return self.name

    def describe(self, spec: SplitSpec) -> str:
        return self.summary

    def apply(self, spec: SplitSpec, loaded: dict[str, CategorySplit]) -> dict[str, CategorySplit]:
        raise NotImplementedError


@dataclass
class StandardSplit(SplitKind):
    name: ClassVar[str] = "standard"
    seeded: ClassVar[bool] = False
    summary: ClassVar[str] = "the dataset as downloaded: normal training images, official test set"

    def apply(self, spec: SplitSpec, loaded: dict[str, CategorySplit]) -> dict[str, CategorySplit]:
        return loaded


@dataclass
class FewShotSplit(SplitKind):
    name: ClassVar[str] = "few_shot"
    defaults: ClassVar[dict[str, Any]] = {"k": 10, "setting": "general", "defect_type": None}
    settings: ClassVar[tuple[str, ...]] = ("general", "hard")

    def check(self, options: dict[str, Any]) -> dict[str, Any]:
        options = super().check(options)
        k = options["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"few_shot k must be an integer >= 1, got {k!r}")
        if options["setting"] not in self.settings:
            raise ConfigError(f"few_shot setting must be 'general' or 'hard', got {options['setting']!r}")
        if options["defect_type"] is not None and options["setting"] != "hard":
            raise ConfigError("few_shot defect_type is only used with setting=hard")
        return options

    def label(self, spec: SplitSpec) -> str:
        o = dict(spec.options)
        extra = f", {o['defect_type']}" if o["defect_type"] else ""
        return f"few_shot(k={o['k']}, {o['setting']}{extra})"

    def describe(self, spec: SplitSpec) -> str:
        o = dict(spec.options)
        seed = "the run's seed" if spec.seed is None else f"seed {spec.seed}"
        if o["setting"] == "hard":
            source = f"one defect type ({o['defect_type'] or 'drawn with the seed'}), removed whole from the test set"
        else:
            source = "all defect types"
        return (f"few-shot supervised (DRA protocol, {o['setting']}): k={o['k']} labelled anomalies per class "
                f"from {source}, drawn with {seed} and removed from the test set")

    def apply(self, spec: SplitSpec, loaded: dict[str, CategorySplit]) -> dict[str, CategorySplit]:
        import numpy as np

        o = dict(spec.options)
        k, hard = o["k"], o["setting"] == "hard"
        out = {}
        for category, split in loaded.items():
            rng = np.random.default_rng(class_seed(spec.seed or 0, category))
            anomalous = sorted((s for s in split.test if s.label == 1), key=lambda s: s.path)
            types = sorted({s.defect_type for s in anomalous})
            where = f"{split.dataset}/{category}"
            if hard:
                if o["defect_type"] is not None:
                    if o["defect_type"] not in types:
                        raise DatasetError(
                            f"few_shot hard: defect type {o['defect_type']!r} not in the test set of {where} "
                            f"({split.root}/{category}/test); types present: {', '.join(types) or 'none'}")
                    chosen = o["defect_type"]
                elif types:
                    chosen = types[int(rng.integers(len(types)))]
                else:
                    chosen = None
                pool = [s for s in anomalous if s.defect_type == chosen]
            else:
                chosen, pool = None, anomalous
            if len(pool) < k:
                what = f"defect type {chosen!r}" if hard else "all defect types"
                raise DatasetError(
                    f"few_shot k={k}: {where} has only {len(pool)} anomalous test image(s) in {what} "
                    f"(under {split.root}/{category}/test); lower k or pick another class")
            picked = [pool[i] for i in rng.permutation(len(pool))[:k]]
            picked_paths = {s.path for s in picked}
            test = [s for s in split.test if s.path not in picked_paths and not (hard and s.defect_type == chosen)]
            if not any(s.label == 1 for s in test):
                raise DatasetError(
                    f"few_shot k={k}: no anomalous test image of {where} is left after the draw; lower k")
            notes = [*split.notes, f"few_shot: {k} anomalous image(s) moved from test to train"
                     + (f" (defect type {chosen!r}, removed from the test set)" if hard else "")]
            out[category] = replace(split, train=[*split.train, *sorted(picked, key=lambda s: s.path)],
                                   test=test, notes=notes)
        return out


_KINDS: dict[str, SplitKind] = {}


def register_split_kind(kind: SplitKind) -> SplitKind:
    if kind.name in _KINDS and type(_KINDS[kind.name]) is not type(kind):
        raise RuntimeError(f"split kind {kind.name!r} registered twice")
    _KINDS[kind.name] = kind
    return kind


def get_split_kind(name: str) -> SplitKind:
    try:
        return _KINDS[name]
    except KeyError:
        from ad_core.catalog import SPLIT_KINDS

        planned = " (not implemented yet)" if name in SPLIT_KINDS else ""
        raise ConfigError(
            f"unknown split kind {name!r}{planned}; available: {', '.join(available_split_kinds())}"
        ) from None


def available_split_kinds() -> list[str]:
    return list(_KINDS)


register_split_kind(StandardSplit())
register_split_kind(FewShotSplit())

STANDARD = SplitSpec()
__all__ = ["STANDARD", "SplitKind", "SplitSpec", "available_split_kinds", "get_split_kind", "register_split_kind"]
