"""The one planner: methods x categories x seeds x split recipe -> validated job requests.

`iad submit` and the dashboard's Launch page (and its first-run demo, re-runs and "missing cells") all
plan here, so a matrix means the same jobs wherever it is launched. Each method is validated once with
the runner's own checks (`RunSpec.prepare`: config, backbone name, weights, dataset paths, the split
recipe applied to the data, the learning type against the split, the method's data needs) and whether its
pretrained weights can be had (`MethodConfig.check_weights_available`), so a worker never fails on anything
that could have been caught at submit time. Names (methods, presets, dataset kind) are checked first from
the catalogue alone (`check_names`: no torch, no database), so a typo fails fast.

How a method's learning type shapes its jobs: one-class and few-shot supervised methods get one job per
category x seed (one model each); a multi-class method gets one job per seed over all categories (one
model for all of them, results still per category).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # db.queries imports pandas and SQLAlchemy: not needed to reject a typo
    from db.queries import JobRequest


@dataclass
class MatrixPlan:
    """A validated launch: the job requests, or the reasons (per method or field) it cannot be launched."""

    requests: list[JobRequest] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.requests) and not self.errors

    def raise_errors(self, methods: Sequence[str] = ()) -> None:
        """ConfigError with the first problem, naming the method when several were planned."""
        from ad_core.errors import ConfigError

        if not self.errors:
            return
        what, message = next(iter(self.errors.items()))
        if what in methods and len(set(methods)) > 1 and not message.startswith("unknown method"):
            message = f"{what}: {message}"
        raise ConfigError(message)


def check_names(methods: Sequence[str], dataset: str, preset: str | None = None) -> dict[str, str]:
    """Problems with the names of a launch (method, preset, dataset kind), from the catalogue alone: no torch,
    no database, so a typo is rejected in well under a second (`plan_jobs` checks everything else).

    Methods that IAD_PLUGINS may register are unknown to the catalogue; with plugins configured, a name that
    is not built in is left to the registry (`plan_jobs`)."""
    import difflib
    import os

    from ad_core.catalog import DATASET_KINDS, METHODS

    errors: dict[str, str] = {}
    if dataset not in DATASET_KINDS:
        errors["dataset"] = f"unknown dataset kind {dataset!r}; use one of {', '.join(DATASET_KINDS)}"
    plugins = bool(os.environ.get("IAD_PLUGINS", "").strip())
    for method in dict.fromkeys(methods):
        entry = METHODS.get(method)
        if entry is None:
            if not plugins:
                close = difflib.get_close_matches(method, METHODS, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
                # The registry's own wording (`ad_core.methods.base.get_method`), plus the hint.
                errors[method] = f"unknown method {method!r}{hint}; available: {', '.join(sorted(METHODS))}"
            continue
        if preset and preset != "default" and preset not in entry.presets:
            errors[method] = f"unknown preset {preset!r} for {method}; known presets: {', '.join(entry.presets)}"
    return errors


def plan_jobs(
    methods: Sequence[str],
    dataset: str,
    root: str,
    categories: Sequence[str],
    seeds: Sequence[int],
    split: dict[str, Any] | None = None,
    preset: str | None = None,
    device: str = "cpu",
    backbone: str | None = None,
    weights: str | None = None,
    overrides: dict[str, Any] | None = None,
    frame: str | None = None,
    annotations: int | str | None = None,
) -> MatrixPlan:
    """Plan (and validate) the jobs of a comparison. Never raises for bad input: see `MatrixPlan.errors`.

    `frame`: the evaluation frame (`ad_core.frame`; None = the default, the full image at 256 px), one for
    the whole matrix so that its methods are scored on the same pixels. `annotations`: an annotation set of
    this dataset (id, name or gt_version) whose ground truth the jobs train on (few-shot draws) and are scored
    against; None = the dataset's own files."""
    from ad_core.errors import ConfigError, DatasetError, WeightsError
    from ad_core.frame import EvalFrame
    from ad_core.splits import SplitSpec
    from workers.settings import check_data_root

    plan = MatrixPlan(errors=check_names(methods, dataset, preset))  # typos first: the cheap, common mistake
    if not methods:
        plan.errors["methods"] = "choose at least one method"
    if not categories:
        plan.errors["categories"] = "choose at least one category"
    if not seeds:
        plan.errors["seeds"] = "give at least one seed"
    elif any(seed < 0 for seed in seeds):
        plan.errors["seeds"] = f"seeds must be >= 0, got {list(seeds)}"
    try:
        # Bound to the matrix's classes: a long tail ranks them against each other, so each per-class job
        # must see the same lists as a run over all of them.
        split_dict = SplitSpec.from_dict(split).for_classes(list(categories)).to_dict()
    except ConfigError as exc:
        plan.errors["split"] = str(exc)
    try:
        frame_key = EvalFrame.parse(frame).key
    except ConfigError as exc:
        plan.errors["frame"] = str(exc)
    try:  # where the data may live (IAD_DATA_ROOTS), before anything reads it
        check_data_root(root)
    except DatasetError as exc:
        plan.errors["root"] = str(exc)
    if plan.errors:
        return plan
    # The expensive part (torch, the methods, the data on disk) only for a launch whose names are right.
    from ad_core.annotations import DEFAULT_GT_VERSION
    from ad_core.runner import RunSpec
    from db.queries import JobRequest
    from workers.settings import queue_for_device

    root = str(Path(root).expanduser())
    seeds = list(dict.fromkeys(seeds))
    ground_truth = None
    if annotations is not None:
        from ad_core.errors import AnnotationError
        from db.annotations import ground_truth_of

        try:
            ground_truth = ground_truth_of(annotations, dataset, root)
        except AnnotationError as exc:
            plan.errors["annotations"] = str(exc)
            return plan
    gt_version = ground_truth["version"] if ground_truth else DEFAULT_GT_VERSION
    for method in dict.fromkeys(methods):
        spec = RunSpec(
            method=method, dataset=dataset, root=root, categories=list(categories), backbone=backbone or None,
            weights=weights or None, preset=preset or None, seed=seeds[0], device=device,
            overrides=dict(overrides or {}), split=split_dict, frame=frame_key, ground_truth=ground_truth,
        )
        try:
            prepared = spec.prepare()
            # Offline and not cached: refused now, not after the job has waited in the queue.
            prepared.config.check_weights_available()
        except (ConfigError, DatasetError, WeightsError) as exc:
            plan.errors[method] = str(exc)
            continue
        try:
            if split_dict.get("seed") is None and split_dict["kind"] != "standard":
                truth = spec.ground_truth_entries()  # checked once: prepare() above accepted it
                for seed in seeds[1:]:  # each seed draws its own split: every draw must work
                    SplitSpec.from_dict(split_dict).apply(dataset, root, list(categories), run_seed=seed,
                                                          ground_truth=truth)
        except (ConfigError, DatasetError) as exc:
            plan.errors[method] = str(exc)
            continue
        config = prepared.config.to_dict()
        for unit in prepared.units:
            for seed in seeds:
                plan.requests.append(JobRequest(
                    method=method, dataset=dataset, root=root, categories=list(unit.categories), config=config,
                    preset=preset or None, seed=seed, device=device, queue=queue_for_device(device), split=split_dict,
                    frame=frame_key, gt_version=gt_version,
                ))
    return plan
