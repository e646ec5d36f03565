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
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ad_core.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from ad_core.annotations import GroundTruth
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
                options.update(get_split_kind(kind.strip()).shorthand(pair))
                continue
            key, value = (s.strip() for s in pair.split("=", 1))
            options[key] = _parse_value(value)
        seed = options.pop("seed", None)
        return cls.make(kind.strip(), seed=seed, **options)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dict(self.options), "seed": self.seed}

    # --- identity and text ---------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Canonical text of the recipe: equal keys = the same recipe (the leaderboard's comparability key).

        Options that only say where something is on this machine (an imported list's path) are left out;
        what they point to is identified by content instead (the list's SHA-256)."""
        where = get_split_kind(self.kind).location_options
        return json.dumps({k: v for k, v in self.to_dict().items() if k not in where}, sort_keys=True)

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
    def apply(self, dataset: str, root: str, categories: Sequence[str], run_seed: int = 0,
              ground_truth: Mapping[str, GroundTruth] | None = None) -> dict[str, CategorySplit]:
        """Concrete train/test lists per category. Raises DatasetError naming the path or the shortfall.

        `ground_truth`: an annotation set's entries (relative path -> `ad_core.annotations.GroundTruth`); the
        test images they name take the set's label, defect type and mask before the recipe draws, so a
        few-shot draw sees the annotated ground truth (and `source=annotated` draws only annotated images)."""
        from ad_core.annotations import apply_overrides
        from ad_core.data import load_split

        if not categories:
            raise ConfigError("no category given")
        kind = get_split_kind(self.kind)
        if kind.needs_ground_truth(self) and not ground_truth:
            raise ConfigError(f"split {self.label} draws its labelled anomalies from an annotation set: give one "
                              "(iad submit --annotations SET, or the Launch page's ground truth)")
        universe = kind.universe(self, categories)
        outside = [c for c in categories if c not in universe]
        if outside:
            raise ConfigError(f"categories {outside} are not among the classes of split {self.label!r}: "
                              f"{', '.join(universe)}")
        loaded = {category: load_split(dataset, root, category) for category in universe}
        if ground_truth:
            loaded = {category: apply_overrides(split, ground_truth) for category, split in loaded.items()}
        resolved = self.with_seed(run_seed)
        splits = kind.apply(resolved, loaded)
        for split in splits.values():
            split.recipe = resolved.to_dict()
        return {category: splits[category] for category in categories}

    def for_classes(self, categories: Sequence[str]) -> SplitSpec:
        """The recipe bound to the classes it spans, for kinds whose lists depend on all of them (a long tail
        ranks the classes against each other): a job that runs one class then gets the same lists as a run
        over all of them. Other kinds come back unchanged."""
        return get_split_kind(self.kind).bind(self, categories)


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

    location_options: ClassVar[tuple[str, ...]] = ()  # options left out of the comparability key

    def needs_ground_truth(self, spec: SplitSpec) -> bool:
        """Whether the recipe draws from an annotation set's ground truth (then `apply` requires one)."""
        return False

    def universe(self, spec: SplitSpec, categories: Sequence[str]) -> list[str]:
        """The classes to load to make the lists of `categories` (just those, unless the kind spans classes)."""
        return list(categories)

    def bind(self, spec: SplitSpec, categories: Sequence[str]) -> SplitSpec:
        return spec

    def shorthand(self, token: str) -> dict[str, Any]:
        """Options that a bare CLI token stands for (e.g. `exp100`); none by default."""
        raise ConfigError(f"split option {token!r} must be key=value (e.g. few_shot:k=10,setting=hard)")

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
    defaults: ClassVar[dict[str, Any]] = {"k": 10, "setting": "general", "defect_type": None, "source": "all"}
    settings: ClassVar[tuple[str, ...]] = ("general", "hard")
    # Where the labelled anomalies come from: any anomalous test image, or only images whose ground truth an
    # annotation set gives (the run's ground truth, `RunSpec.ground_truth`), e.g. defects a team labelled itself.
    sources: ClassVar[tuple[str, ...]] = ("all", "annotated")

    def check(self, options: dict[str, Any]) -> dict[str, Any]:
        options = super().check(options)
        if options.get("source", "all") not in self.sources:
            raise ConfigError(f"few_shot source must be 'all' or 'annotated', got {options['source']!r}")
        if options.get("source", "all") == "all":
            # The default is left out of the recipe, so recipes from before the option existed keep their key.
            options = {k: v for k, v in options.items() if k != "source"}
        k = options["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"few_shot k must be an integer >= 1, got {k!r}")
        if options["setting"] not in self.settings:
            raise ConfigError(f"few_shot setting must be 'general' or 'hard', got {options['setting']!r}")
        if options["defect_type"] is not None and options["setting"] != "hard":
            raise ConfigError("few_shot defect_type is only used with setting=hard")
        return options

    def needs_ground_truth(self, spec: SplitSpec) -> bool:
        return dict(spec.options).get("source") == "annotated"

    def label(self, spec: SplitSpec) -> str:
        o = dict(spec.options)
        extra = f", {o['defect_type']}" if o["defect_type"] else ""
        extra += ", annotated" if o.get("source") == "annotated" else ""
        return f"few_shot(k={o['k']}, {o['setting']}{extra})"

    def describe(self, spec: SplitSpec) -> str:
        o = dict(spec.options)
        seed = "the run's seed" if spec.seed is None else f"seed {spec.seed}"
        if o["setting"] == "hard":
            source = f"one defect type ({o['defect_type'] or 'drawn with the seed'}), removed whole from the test set"
        else:
            source = "all defect types"
        if o.get("source") == "annotated":
            source += ", among the images the run's annotation set labels"
        return (f"few-shot supervised (DRA protocol, {o['setting']}): k={o['k']} labelled anomalies per class "
                f"from {source}, drawn with {seed} and removed from the test set")

    def apply(self, spec: SplitSpec, loaded: dict[str, CategorySplit]) -> dict[str, CategorySplit]:
        import numpy as np

        o = dict(spec.options)
        k, hard = o["k"], o["setting"] == "hard"
        annotated_only = o.get("source") == "annotated"
        out = {}
        for category, split in loaded.items():
            rng = np.random.default_rng(class_seed(spec.seed or 0, category))
            anomalous = sorted((s for s in split.test if s.label == 1), key=lambda s: s.path)
            if annotated_only:
                # Only anomalies a person labelled in the annotation set, with their defect pixels.
                anomalous = [s for s in anomalous if s.annotated and s.mask_path is not None]
                if len(anomalous) < k:
                    raise DatasetError(
                        f"few_shot k={k}, source=annotated: {split.dataset}/{category} has {len(anomalous)} annotated "
                        f"anomalous test image(s) with a mask in the run's annotation set (under {split.root}/"
                        f"{category}/test); annotate more defects, lower k, or use source=all")
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


LONG_TAIL_PROFILES = ("exp", "step", "pareto", "list")
NOISY_POLICIES = ("drop", "refuse")


@dataclass
class LongTailSplit(SplitKind):
    """Long-tailed training sets over the classes of a dataset; test sets stay the official ones.

    Generated profiles (`profile`): classes are ranked by a seeded permutation of their sorted names (rank 0
    = head), and class i of C gets a target count
    - `exp`: n_max * ratio^(-i / (C - 1))                       (Cao et al. 2019's exponential profile);
    - `step`: the last round(tail_fraction * C) classes are cut to `k` images, or to n_max / ratio when k
      is not given; the other classes keep all their images (TailedCore's "step", tail fraction 0.6);
    - `pareto`: n_max * (i + 1)^(-a) with a = ln(ratio) / ln(C), so the last class gets n_max / ratio
      (a Zipf/Pareto-shaped profile; TailedCore's exact construction is not public), at least `min_count`.
    Targets are floored, capped by what each class has and at least 1; `n_max` defaults to the largest
    class. Which images a class keeps is a seeded draw over its sorted paths (a prefix of one permutation,
    so a smaller count keeps a subset of a larger one). The counts actually produced are in the split.

    Imported lists (`profile="list"`, `list=PATH`): TailedCore's JSON (`tailed_files` with the training
    images under `<class>/train/`, and `noisy_files`: anomalous test images added to training), or a plain
    list of training images relative to the dataset root (.txt one per line, .csv with a `path` column,
    .json list or {"train": [...]}). Every path must exist under the root (the first missing one is named).
    Test images in a training list ("noisy" lists) are never evaluated: `noisy="drop"` (default) removes
    them from that class's test set and records it; `noisy="refuse"` fails instead. They join training
    unlabelled (label 0), as the noisy setting intends. The list's SHA-256 is part of the recipe.
    """

    name: ClassVar[str] = "long_tail"
    defaults: ClassVar[dict[str, Any]] = {
        "profile": "exp", "ratio": 100, "tail_fraction": 0.6, "k": None, "min_count": 5, "n_max": None,
        "list": None, "list_sha256": None, "noisy": "drop", "classes": None,
    }
    location_options: ClassVar[tuple[str, ...]] = ("list",)

    def universe(self, spec: SplitSpec, categories: Sequence[str]) -> list[str]:
        classes = dict(spec.options)["classes"]
        return list(classes) if classes else list(categories)

    def bind(self, spec: SplitSpec, categories: Sequence[str]) -> SplitSpec:
        o = dict(spec.options)
        if o["profile"] == "list" or o["classes"]:
            return spec  # lists are per class; an explicit class set stays as it is
        return SplitSpec.make(spec.kind, seed=spec.seed, **{**o, "classes": sorted(categories)})

    def shorthand(self, token: str) -> dict[str, Any]:
        import re

        named = re.fullmatch(r"(exp|step)(\d+(?:\.\d+)?)|step_k(\d+)|(pareto)", token)
        if named is None:
            raise ConfigError(
                f"long_tail name {token!r} not understood; use exp100, step100, step_k4, pareto or key=value options"
            )
        if named.group(3):
            return {"profile": "step", "k": int(named.group(3))}
        if named.group(4):
            return {"profile": "pareto"}
        return {"profile": named.group(1), "ratio": _parse_value(named.group(2))}

    def check(self, options: dict[str, Any]) -> dict[str, Any]:
        options = super().check(options)
        if options["classes"] is not None:
            classes = options["classes"]
            if isinstance(classes, str):
                classes = [c for c in classes.replace("+", " ").split() if c]
            if not isinstance(classes, list | tuple) or len(set(classes)) < 2 or not all(isinstance(c, str) for c in classes):
                raise ConfigError(f"long_tail classes must name at least 2 distinct classes, got {classes!r}")
            options["classes"] = tuple(sorted(set(classes)))
        if options["list"] is not None and options["profile"] == self.defaults["profile"]:
            options["profile"] = "list"  # `long_tail:list=PATH` needs no profile=list
        profile = options["profile"]
        if profile not in LONG_TAIL_PROFILES:
            raise ConfigError(f"long_tail profile must be one of {', '.join(LONG_TAIL_PROFILES)}, got {profile!r}")
        if options["noisy"] not in NOISY_POLICIES:
            raise ConfigError(f"long_tail noisy must be 'drop' or 'refuse', got {options['noisy']!r}")
        if profile == "list":
            if not options["list"]:
                raise ConfigError("long_tail profile=list needs list=PATH (a TailedCore JSON or a txt/csv/json list)")
            path = Path(str(options["list"])).expanduser()
            if path.is_file():  # on the submitting host; a worker checks that the content is unchanged
                digest = _sha256(path)
                if options["list_sha256"] not in (None, digest):
                    raise ConfigError(f"split list {path} changed since the job was planned (SHA-256 differs)")
                options["list_sha256"] = digest
            elif options["list_sha256"] is None:
                raise ConfigError(f"split list {path} does not exist")
            return options
        for name in ("list", "list_sha256"):
            if options[name] is not None:
                raise ConfigError(f"long_tail {name} is only used with profile=list")
        ratio = options["ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or ratio < 1:
            raise ConfigError(f"long_tail ratio must be a number >= 1, got {ratio!r}")
        for name in ("k", "n_max"):
            value = options[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"long_tail {name} must be an integer >= 1, got {value!r}")
        if options["k"] is not None and profile != "step":
            raise ConfigError("long_tail k (a fixed tail size) is only used with profile=step")
        if not 0 < options["tail_fraction"] < 1:
            raise ConfigError(f"long_tail tail_fraction must be in (0, 1), got {options['tail_fraction']!r}")
        if isinstance(options["min_count"], bool) or not isinstance(options["min_count"], int) or options["min_count"] < 1:
            raise ConfigError(f"long_tail min_count must be an integer >= 1, got {options['min_count']!r}")
        return options

    def label(self, spec: SplitSpec) -> str:
        o = dict(spec.options)
        if o["profile"] == "list":
            return f"long_tail(list {Path(str(o['list'])).name}, sha256 {str(o['list_sha256'])[:8]})"
        ratio = f"{o['ratio']:g}"
        name = {"exp": f"exp{ratio}", "step": f"step_k{o['k']}" if o["k"] else f"step{ratio}",
                "pareto": "pareto" if o["ratio"] == 100 else f"pareto{ratio}"}[o["profile"]]
        extra = [f"{k}={o[k]}" for k in ("tail_fraction", "min_count", "n_max") if o[k] != self.defaults[k]
                 and (k != "min_count" or o["profile"] == "pareto") and (k != "tail_fraction" or o["profile"] == "step")]
        return f"long_tail({', '.join([name, *extra])})"

    def describe(self, spec: SplitSpec) -> str:
        o = dict(spec.options)
        seed = "the run's seed" if spec.seed is None else f"seed {spec.seed}"
        if o["profile"] == "list":
            noisy = "removed from the test set" if o["noisy"] == "drop" else "refused"
            return (f"long-tailed training lists imported from {Path(str(o['list'])).name} (SHA-256 "
                    f"{str(o['list_sha256'])[:12]}); test images listed for training are {noisy}; official test sets")
        shape = {"exp": f"exponential, imbalance ratio {o['ratio']:g}",
                 "step": (f"step, {o['tail_fraction']:.0%} of the classes cut to "
                          + (f"{o['k']} images" if o["k"] else f"n_max/{o['ratio']:g}")),
                 "pareto": f"Pareto-shaped, ratio {o['ratio']:g}, at least {o['min_count']} images"}[o["profile"]]
        over = f" over {len(o['classes'])} classes" if o["classes"] else ""
        return (f"long-tailed training sets{over} ({shape}); head/tail classes and kept images drawn with {seed}; "
                "official test sets")

    def targets(self, spec: SplitSpec, available: Mapping[str, int]) -> dict[str, int]:
        """Training images per class for a generated profile (capped by `available`, at least 1)."""
        import math

        import numpy as np

        o = dict(spec.options)
        classes = sorted(available)
        if len(classes) < 2:
            raise ConfigError("a long_tail split needs at least 2 classes (the imbalance is between classes)")
        rng = np.random.default_rng(class_seed(spec.seed or 0, "long_tail ranking"))
        order = [classes[i] for i in rng.permutation(len(classes))]  # rank 0 = head
        n = len(order)
        n_max = o["n_max"] or max(available.values())
        ratio = float(o["ratio"])
        wanted: dict[str, float] = {}
        if o["profile"] == "exp":
            wanted = {c: n_max * ratio ** (-i / (n - 1)) for i, c in enumerate(order)}
        elif o["profile"] == "step":
            n_tail = round(o["tail_fraction"] * n)
            tail = set(order[n - n_tail:])
            wanted = {c: (o["k"] or n_max / ratio) if c in tail else available[c] for c in order}
        else:  # pareto
            a = math.log(ratio) / math.log(n)
            wanted = {c: max(o["min_count"], n_max * (i + 1) ** (-a)) for i, c in enumerate(order)}
        return {c: max(1, min(available[c], math.floor(wanted[c] + 1e-9))) for c in order}

    def apply(self, spec: SplitSpec, loaded: dict[str, CategorySplit]) -> dict[str, CategorySplit]:
        if dict(spec.options)["profile"] == "list":
            return self._apply_list(spec, loaded)
        import numpy as np

        targets = self.targets(spec, {c: len(s.train_normal) for c, s in loaded.items()})
        out = {}
        for category, split in loaded.items():
            pool = sorted(split.train_normal, key=lambda s: s.path)
            rng = np.random.default_rng(class_seed(spec.seed or 0, category))
            keep = sorted((pool[i] for i in rng.permutation(len(pool))[: targets[category]]), key=lambda s: s.path)
            note = f"long_tail: {len(keep)} of {len(pool)} training images kept"
            out[category] = replace(split, train=keep, notes=[*split.notes, note])
        return out

    def _apply_list(self, spec: SplitSpec, loaded: dict[str, CategorySplit]) -> dict[str, CategorySplit]:
        o = dict(spec.options)
        path = Path(str(o["list"])).expanduser()
        if not path.is_file():
            raise DatasetError(f"split list {path} does not exist on this host")
        if o["list_sha256"] and _sha256(path) != o["list_sha256"]:
            raise DatasetError(f"split list {path} changed since the job was planned (SHA-256 differs)")
        entries = read_training_list(path)
        out = {}
        for category, split in loaded.items():
            root = Path(split.root)
            mine = [e for e in entries if e.split("/", 1)[0] == category]
            if not mine:
                raise DatasetError(f"split list {path} has no training image of class {category!r}")
            train_by_path = {s.path: s for s in split.train}
            test_by_path = {s.path: s for s in split.test}
            train, noisy = [], []
            for entry in mine:
                full = str(root / entry)
                if not Path(full).is_file():
                    raise DatasetError(f"split list {path} names {entry}, which is missing under {root} ({full})")
                if full in train_by_path:
                    train.append(train_by_path[full])
                elif full in test_by_path:
                    noisy.append(test_by_path[full])
                else:
                    raise DatasetError(
                        f"split list {path} names {entry}, which is neither a training nor a test image of "
                        f"{split.dataset}/{category} under {root}")
            notes = [*split.notes, f"long_tail list {path.name}: {len(train)} of {len(split.train)} training images"]
            test = split.test
            if noisy:
                if o["noisy"] == "refuse":
                    raise DatasetError(
                        f"split list {path} puts {len(noisy)} test image(s) of {category} into training (e.g. "
                        f"{noisy[0].path}); pass noisy=drop to remove them from the test set")
                gone = {s.path for s in noisy}
                test = [s for s in split.test if s.path not in gone]
                train += [replace(s, label=0, mask_path=None) for s in noisy]  # unlabelled, as the setting intends
                notes.append(f"{len(noisy)} test image(s) listed for training (noisy) were removed from the test set")
            out[category] = replace(split, train=sorted(train, key=lambda s: s.path), test=test, notes=notes)
        return out


def read_training_list(path: Path) -> list[str]:
    """Training image paths (relative to the dataset root, '/'-separated) from a split list file."""
    import csv

    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            if isinstance(data, dict) and "tailed_files" in data:  # TailedCore
                entries = [p for p in data["tailed_files"] if "/train/" in p] + list(data.get("noisy_files", []))
            elif isinstance(data, dict) and "train" in data:
                entries = list(data["train"])
            elif isinstance(data, list):
                entries = list(data)
            else:
                raise ValueError("expected a list, {\"train\": [...]} or TailedCore's {\"tailed_files\": [...]}")
        elif path.suffix.lower() == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
            if not rows or "path" not in rows[0]:
                raise ValueError("expected a header row with a 'path' column")
            entries = [row["path"] for row in rows]
        else:
            entries = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"cannot read split list {path}: {exc}") from exc
    cleaned = [str(e).strip().replace("\\", "/").lstrip("./") for e in entries]
    if not cleaned:
        raise DatasetError(f"split list {path} lists no image")
    return list(dict.fromkeys(cleaned))


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


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
register_split_kind(LongTailSplit())

STANDARD = SplitSpec()
__all__ = ["STANDARD", "SplitKind", "SplitSpec", "available_split_kinds", "get_split_kind", "register_split_kind"]
