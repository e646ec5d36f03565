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

from collections.abc import Callable, Iterable

from ad_core.catalog import METRIC_VERSION
from db import queries
from workers.rescore import RescoreItem, TargetTruth, rescore_jobs


def rescore_against_set(
    set_id: int,
    job_ids: Iterable[int] | None = None,
    dry_run: bool = False,
    url: str | None = None,
    report: Callable[[RescoreItem], None] | None = None,
) -> list[RescoreItem]:
    """Store metric rows against annotation set `set_id` for every succeeded job on its dataset (or `job_ids`)
    that lacks them (`workers.rescore.rescore_jobs`, this code's metric version). Returns one item per job x
    category."""
    from db.annotations import set_truths

    info, truths = set_truths(set_id, url)
    ids = None if job_ids is None else list(job_ids)
    jobs = [j for j in queries.list_jobs(status="succeeded", job_ids=ids, limit=None, url=url)
            if j.dataset_id == info.dataset_id]
    target = TargetTruth(info.gt_version, truths, tuple(info.categories))
    return rescore_jobs(jobs, METRIC_VERSION, target=target, dry_run=dry_run, url=url, report=report)


__all__ = ["rescore_against_set"]
