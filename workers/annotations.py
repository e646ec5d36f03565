"""Re-score finished runs against an annotation set, from their stored maps (no re-training).

For every succeeded job on the set's dataset and every category of the job the set covers, the stored anomaly
maps (in the job's evaluation frame) and per-image scores are scored against the set's ground truth: labels,
defect types and masks of the annotated images replace the dataset's (`ad_core.annotations.apply_overrides`),
the masks are brought into the job's frame (`ad_core.reproduce.frame_masks`) and `ad_core.metrics.compute_all`
runs (`ad_core.reproduce.rescore_category`). The rows are stored under this code's metric version with the set's
`gt_version` (`db.queries.add_metric_values`), next to the rows against the dataset's own ground truth, which
stay as they are. A category is skipped, with the reason, when its maps are gone, its data changed since the
run (split content hash), or its stored images are not the split's test images.

`iad annotations rescore --set NAME` sends this to a worker (`iad.rescore_annotations`) or runs it `--inline`;
the Annotation sets page does the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ad_core.catalog import METRIC_VERSION
from db import artifacts, queries

log = logging.getLogger("iad.annotations")


@dataclass
class GtRescoreItem:
    job_id: int
    category: str
    status: str  # "stored", "up to date", "to do" (dry run) or "skipped: <why>"
    rows: int = 0


def rescore_against_set(
    set_id: int,
    job_ids: Iterable[int] | None = None,
    dry_run: bool = False,
    url: str | None = None,
    report: Callable[[GtRescoreItem], None] | None = None,
) -> list[GtRescoreItem]:
    """Store metric rows against annotation set `set_id` for every succeeded job on its dataset (or `job_ids`)
    that lacks them. Returns one item per job x category."""
    from ad_core.annotations import apply_overrides
    from ad_core.errors import ConfigError, DatasetError
    from ad_core.frame import LEGACY_FRAME
    from ad_core.reproduce import rescore_category
    from ad_core.splits import SplitSpec
    from db.annotations import set_truths

    info, truths = set_truths(set_id, url)
    ids = None if job_ids is None else list(job_ids)
    have = queries.metric_versions_of(ids, url=url, gt_version=info.gt_version)
    jobs = sorted((j for j in queries.list_jobs(status="succeeded", job_ids=ids, limit=None, url=url)
                   if j.dataset_id == info.dataset_id), key=lambda j: j.id)
    items: list[GtRescoreItem] = []

    def done(item: GtRescoreItem) -> None:
        items.append(item)
        if report is not None:
            report(item)

    for job in jobs:
        runs = [r for r in queries.category_runs(job.id, url=url) if r.category in info.categories]
        todo = [r for r in runs if METRIC_VERSION not in have.get((job.id, r.category), set())]
        for r in runs:
            if r not in todo:
                done(GtRescoreItem(job.id, r.category, "up to date"))
        if not todo:
            continue
        if dry_run:
            for r in todo:
                done(GtRescoreItem(job.id, r.category, "to do"))
            continue
        try:
            splits = SplitSpec.from_dict(job.split).apply(job.dataset.kind, job.dataset.root, [r.category for r in todo],
                                                          run_seed=job.seed)
        except (ConfigError, DatasetError, OSError) as exc:
            for r in todo:
                done(GtRescoreItem(job.id, r.category, f"skipped: the data cannot be read ({exc})"))
            continue
        stored_hash = {s.id: s.content_hash for s in queries.list_splits(job.dataset_id, url=url)}
        frame = job.frame or LEGACY_FRAME
        resize, crop = int(job.config.get("resize", 256)), int(job.config.get("crop", 224))
        for r in todo:
            split = splits.get(r.category)
            if split is None or r.split_id is None or stored_hash.get(r.split_id) != split.content_hash():
                done(GtRescoreItem(job.id, r.category, "skipped: the data changed since the run (split content hash)"))
                continue
            if not r.maps_path or not (artifacts.artifacts_root() / r.maps_path).is_file():
                done(GtRescoreItem(job.id, r.category, "skipped: its maps are not in the artifact store"))
                continue
            rows = sorted(queries.image_results(job.id, r.category, url=url), key=lambda row: row.map_index)
            relabelled = apply_overrides(split, truths)
            by_path = {s.path: s for s in relabelled.test}
            if any(row.path not in by_path for row in rows) or len(rows) != len(relabelled.test):
                done(GtRescoreItem(job.id, r.category, "skipped: the stored images are not the split's test images"))
                continue
            samples = [by_path[row.path] for row in rows]
            maps = artifacts.load_maps(r.maps_path, [row.map_index for row in rows])
            values = rescore_category([s.label for s in samples], [row.score for row in rows], maps,
                                      samples if relabelled.has_masks else None, frame, resize, crop)
            added = queries.add_metric_values(job.id, r.category, values, METRIC_VERSION, url=url,
                                              gt_version=info.gt_version)
            done(GtRescoreItem(job.id, r.category, "stored", added))
            log.info("job %s %s: %d metric rows against %s stored", job.id, r.category, added, info.gt_version)
    return items


__all__ = ["GtRescoreItem", "rescore_against_set"]
