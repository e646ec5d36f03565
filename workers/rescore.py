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
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ad_core.catalog import METRIC_VERSION
from db import artifacts, queries

log = logging.getLogger("iad.rescore")


@dataclass
class RescoreItem:
    job_id: int
    category: str
    status: str  # "stored", "up to date", "to do" (dry run) or "skipped: <why>"
    rows: int = 0


def rescore(
    job_ids: Iterable[int] | None = None,
    version: str = METRIC_VERSION,
    dry_run: bool = False,
    url: str | None = None,
    report: Callable[[RescoreItem], None] | None = None,
) -> list[RescoreItem]:
    """Store metric rows of `version` for every category of every succeeded job (or of `job_ids`) that lacks
    them. Returns one item per job x category. `dry_run`: only say which categories would be re-scored."""
    from ad_core.errors import ConfigError, DatasetError
    from ad_core.frame import LEGACY_FRAME
    from ad_core.reproduce import rescore_category
    from ad_core.splits import SplitSpec

    ids = None if job_ids is None else list(job_ids)
    have = queries.metric_versions_of(ids, url=url)
    jobs = sorted(queries.list_jobs(status="succeeded", job_ids=ids, limit=None, url=url), key=lambda j: j.id)
    items: list[RescoreItem] = []

    def done(item: RescoreItem) -> None:
        items.append(item)
        if report is not None:
            report(item)

    for job in jobs:
        runs = queries.category_runs(job.id, url=url)
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
        try:
            splits = SplitSpec.from_dict(job.split).apply(job.dataset.kind, job.dataset.root, list(job.categories),
                                                          run_seed=job.seed)
        except (ConfigError, DatasetError, OSError) as exc:
            for r in todo:
                done(RescoreItem(job.id, r.category, f"skipped: the data cannot be read ({exc})"))
            continue
        stored_hash = {s.id: s.content_hash for s in queries.list_splits(job.dataset_id, url=url)}
        frame = job.frame or LEGACY_FRAME
        resize, crop = int(job.config.get("resize", 256)), int(job.config.get("crop", 224))
        for r in todo:
            split = splits.get(r.category)
            if split is None or r.split_id is None:
                done(RescoreItem(job.id, r.category, "skipped: no split content hash stored (the data cannot be "
                                                     "checked)"))
                continue
            if stored_hash.get(r.split_id) != split.content_hash():
                done(RescoreItem(job.id, r.category, "skipped: the data changed since the run (split content hash)"))
                continue
            if not r.maps_path or not (artifacts.artifacts_root() / r.maps_path).is_file():
                done(RescoreItem(job.id, r.category, "skipped: its maps are not in the artifact store"))
                continue
            rows = sorted(queries.image_results(job.id, r.category, url=url), key=lambda row: row.map_index)
            by_path = {s.path: s for s in split.test}
            if any(row.path not in by_path for row in rows) or len(rows) != len(split.test):
                done(RescoreItem(job.id, r.category, "skipped: the stored images are not the split's test images"))
                continue
            maps = artifacts.load_maps(r.maps_path, [row.map_index for row in rows])
            samples = [by_path[row.path] for row in rows] if split.has_masks else None
            values = rescore_category([row.label for row in rows], [row.score for row in rows], maps, samples,
                                      frame, resize, crop)
            added = queries.add_metric_values(job.id, r.category, values, version, url=url)
            done(RescoreItem(job.id, r.category, "stored", added))
            log.info("job %s %s: %d metric rows of %s stored", job.id, r.category, added, version)
    return items
