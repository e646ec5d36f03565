"""Re-score stored runs under this code's metric version, from their stored maps (no re-training).

When the metric code changes (`METRIC_VERSION` in `ad_core/catalog.py`), every succeeded job whose categories
have no metric rows of the new version gets them: its stored anomaly maps (`IAD_ARTIFACTS`, in the job's
evaluation frame) and per-image scores are scored against the ground truth brought into that frame
(`ad_core.reproduce.rescore_category`), and the rows are stored next to the old ones
(`db.queries.add_metric_values`; unique per job, category, metric and version). Old and new results then share
a version and stay comparable; the leaderboard shows one version per table (this code's by default).

A category is skipped, with the reason, when its maps are not in the artifact store, its data changed since the
run (split content hash) or cannot be read. `iad rescore` runs this on a worker (`iad.rescore` task) or
inline (`--inline`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ad_core.catalog import METRIC_VERSION
from db import artifacts, queries

log = logging.getLogger("iad.rescore")


@dataclass
class RescoreItem:
    job_id: int
    category: str
    status: str  # "stored", "up to date", "to do" (dry run) or "skipped: <why>"
    rows: int = 0


@dataclass(frozen=True)
class TargetTruth:
    """What a re-score scores against: an annotation set's ground truth (`entries`, relative path ->
    `ad_core.annotations.GroundTruth`) stored under `gt_version`, for the `categories` the set covers."""

    gt_version: str
    entries: Mapping[str, Any]
    categories: tuple[str, ...]


@dataclass
class StoredCategory:
    """One stored category of a job, checked against its data: the test samples in stored order (with the
    ground truth scored against), the stored per-image labels and scores, and where its maps are."""

    category: str
    samples: list[Any]  # ad_core Sample, in the stored (map) order
    scores: list[float]
    map_indices: list[int]
    maps_path: str
    has_masks: bool

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def maps(self) -> Any:  # noqa: ANN401 (np.ndarray [N, H, W] float32)
        return artifacts.load_maps(self.maps_path, self.map_indices)

    def masks(self, job: Any) -> Any:  # noqa: ANN401 (np.ndarray [N, H, W] bool, or None)
        """The ground truth brought into the job's evaluation frame (None when the category has no masks)."""
        from ad_core.reproduce import frame_masks

        return frame_masks(self.samples, *job.map_geometry) if self.has_masks else None


def stored_categories(
    job: Any, runs: Sequence[Any], target: TargetTruth | None = None, url: str | None = None  # noqa: ANN401
) -> Iterator[tuple[Any, StoredCategory | str]]:
    """(run, StoredCategory) for each of `runs` (a job's category runs), or (run, why it cannot be used). The
    split is rebuilt with the job's own ground truth and must have the stored content hash (the data did not
    change since the run); scored against `target`'s ground truth when given."""
    from ad_core.annotations import DEFAULT_GT_VERSION, apply_overrides, ground_truth_entries
    from ad_core.errors import AnnotationError, ConfigError, DatasetError
    from ad_core.splits import SplitSpec
    from db.annotations import ground_truth_of

    own_gt = getattr(job, "gt_version", None) or DEFAULT_GT_VERSION
    try:
        own = None
        if own_gt != DEFAULT_GT_VERSION:  # the job ran against an annotation set: its split used that set
            own = ground_truth_entries(ground_truth_of(own_gt, job.dataset.kind, job.dataset.root, url=url))
        splits = SplitSpec.from_dict(job.split).apply(job.dataset.kind, job.dataset.root, [r.category for r in runs],
                                                      run_seed=job.seed, ground_truth=own)
    except (ConfigError, DatasetError, AnnotationError, OSError) as exc:
        for r in runs:
            yield r, f"the data cannot be read ({exc})"
        return
    stored_hash = {s.id: s.content_hash for s in queries.list_splits(job.dataset_id, url=url)}
    for r in runs:
        split = splits.get(r.category)
        if split is None or r.split_id is None:
            yield r, "no split content hash stored (the data cannot be checked)"
            continue
        if stored_hash.get(r.split_id) != split.content_hash():
            yield r, "the data changed since the run (split content hash)"
            continue
        if not r.maps_path or not (artifacts.artifacts_root() / r.maps_path).is_file():
            yield r, "its maps are not in the artifact store"
            continue
        scored = apply_overrides(split, target.entries) if target is not None else split
        rows = sorted(queries.image_results(job.id, r.category, url=url), key=lambda row: row.map_index)
        by_path = {s.path: s for s in scored.test}
        if any(row.path not in by_path for row in rows) or len(rows) != len(scored.test):
            yield r, "the stored images are not the split's test images"
            continue
        yield r, StoredCategory(r.category, [by_path[row.path] for row in rows], [row.score for row in rows],
                                [row.map_index for row in rows], r.maps_path, bool(scored.has_masks))


def rescore_jobs(
    jobs: Sequence[Any],
    version: str = METRIC_VERSION,
    target: TargetTruth | None = None,
    dry_run: bool = False,
    url: str | None = None,
    report: Callable[[RescoreItem], None] | None = None,
) -> list[RescoreItem]:
    """The one re-scoring loop: store metric rows of `version` for every category of `jobs` that lacks them,
    from the stored maps and scores. Against `target` when given (rows stored under its gt_version), else
    against each job's own ground truth (the dataset's files, or the annotation set it ran with; rows stored
    under the job's gt_version). The split is rebuilt with the job's own ground truth, so its content hash
    must equal the stored one (the data did not change since the run)."""
    from ad_core.annotations import DEFAULT_GT_VERSION
    from ad_core.reproduce import rescore_category

    ids = [j.id for j in jobs]
    have_by_gt: dict[str, dict[tuple[int, str], set[str]]] = {}
    items: list[RescoreItem] = []

    def done(item: RescoreItem) -> None:
        items.append(item)
        if report is not None:
            report(item)

    for job in sorted(jobs, key=lambda j: j.id):
        own_gt = getattr(job, "gt_version", None) or DEFAULT_GT_VERSION
        gt_version = target.gt_version if target is not None else own_gt
        if gt_version not in have_by_gt:
            have_by_gt[gt_version] = queries.metric_versions_of(ids, url=url, gt_version=gt_version)
        have = have_by_gt[gt_version]
        runs = [r for r in queries.category_runs(job.id, url=url) if target is None or r.category in target.categories]
        todo = [r for r in runs if version not in have.get((job.id, r.category), set())]
        for r in runs:
            if r not in todo:
                done(RescoreItem(job.id, r.category, "up to date"))
        if not todo:
            continue
        if dry_run:
            for r in todo:
                done(RescoreItem(job.id, r.category, "to do"))
            continue
        for r, stored in stored_categories(job, todo, target, url):
            if isinstance(stored, str):
                done(RescoreItem(job.id, r.category, f"skipped: {stored}"))
                continue
            values = rescore_category(stored.labels, stored.scores, stored.maps(),
                                      stored.samples if stored.has_masks else None, *job.map_geometry)
            added = queries.add_metric_values(job.id, r.category, values, version, url=url, gt_version=gt_version)
            done(RescoreItem(job.id, r.category, "stored", added))
            log.info("job %s %s: %d metric rows of %s against %s stored", job.id, r.category, added, version,
                     gt_version)
    return items


def rescore(
    job_ids: Iterable[int] | None = None,
    version: str = METRIC_VERSION,
    dry_run: bool = False,
    url: str | None = None,
    report: Callable[[RescoreItem], None] | None = None,
) -> list[RescoreItem]:
    """Store metric rows of `version` for every category of every succeeded job (or of `job_ids`) that lacks
    them, against each job's own ground truth. Returns one item per job x category. `dry_run`: only say which
    categories would be re-scored."""
    ids = None if job_ids is None else list(job_ids)
    jobs = queries.list_jobs(status="succeeded", job_ids=ids, limit=None, url=url)
    return rescore_jobs(jobs, version, dry_run=dry_run, url=url, report=report)


__all__ = ["RescoreItem", "StoredCategory", "TargetTruth", "rescore", "rescore_jobs", "stored_categories"]
