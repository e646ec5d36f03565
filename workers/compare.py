"""Paired comparison of two stored runs, per category: is one run's lead over the other real?

The image metrics come from the stored per-image scores; pixel AUROC and AUPRO (with `pixel=True`) from the
stored anomaly maps and the ground truth brought into the runs' evaluation frame (`workers.rescore`'s
`stored_categories`, which also checks that the data did not change since the run). Statistics:
`ad_core.analysis.significance.compare_category` (paired bootstrap over test images, DeLong for image AUROC).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ad_core.analysis import significance
from ad_core.catalog import METRICS
from db import queries
from workers.rescore import stored_categories

COLUMNS = ["category", "metric", "a", "b", "difference", "low", "high", "significant", "delong_p", "images", "note"]


def _mismatch(a: Any, b: Any) -> str:  # noqa: ANN401 (db.models.Job)
    """Why two runs' pixels are not comparable ('' when they are)."""
    if a.map_geometry != b.map_geometry:
        return f"different evaluation frames ({a.map_geometry[0]} vs {b.map_geometry[0]}): not the same pixels"
    if (a.gt_version or "") != (b.gt_version or ""):
        return "different ground-truth versions"
    return ""


def compare_jobs(
    job_a: int, job_b: int, pixel: bool = False, n_boot: int = significance.N_BOOT, seed: int = significance.BOOT_SEED,
    url: str | None = None,
) -> pd.DataFrame:
    """One row per shared category x metric: run a's value, run b's, a - b with its 95 % interval, DeLong's p
    (image AUROC), or a note saying why a category or the pixel metrics could not be compared."""
    jobs = {j.id: j for j in queries.list_jobs(job_ids=[job_a, job_b], limit=None, url=url)}
    missing = [i for i in (job_a, job_b) if i not in jobs]
    if missing:
        raise ValueError(f"no job {', '.join(map(str, missing))}")
    a, b = jobs[job_a], jobs[job_b]
    if a.dataset_id != b.dataset_id:
        raise ValueError(f"job {job_a} and job {job_b} ran on different datasets")
    runs_a = {r.category: r for r in queries.category_runs(job_a, url=url)}
    runs_b = {r.category: r for r in queries.category_runs(job_b, url=url)}
    shared = [c for c in runs_a if c in runs_b]
    if not shared:
        raise ValueError(f"job {job_a} and job {job_b} share no category")
    pixel_note = _mismatch(a, b) if pixel else ""
    rows: list[dict[str, Any]] = []
    stored_a = dict(stored_categories(a, [runs_a[c] for c in shared], url=url))
    stored_b = dict(stored_categories(b, [runs_b[c] for c in shared], url=url))
    for category in shared:
        sa, sb = stored_a[runs_a[category]], stored_b[runs_b[category]]
        problem = sa if isinstance(sa, str) else sb if isinstance(sb, str) else ""
        if not problem and sorted(s.path for s in sa.samples) != sorted(s.path for s in sb.samples):
            problem = "the two runs were tested on different images"
        if problem:
            rows.append({"category": category, "note": problem})
            continue
        order_b = {s.path: i for i, s in enumerate(sb.samples)}
        take_b = np.array([order_b[s.path] for s in sa.samples])
        labels = np.array(sa.labels)
        if not np.array_equal(labels, np.array(sb.labels)[take_b]):
            rows.append({"category": category, "note": "the two runs label the test images differently"})
            continue
        masks = maps_a = maps_b = None
        note = pixel_note
        if pixel and not note:
            masks = sa.masks(a)
            if masks is None:
                note = "no ground-truth masks: no pixel metrics"
            else:
                maps_a, maps_b = sa.maps(), sb.maps()[take_b]
        diffs = significance.compare_category(labels, sa.scores, np.array(sb.scores)[take_b], masks, maps_a, maps_b,
                                              n_boot, seed)
        for d in diffs:
            rows.append({"category": category, "metric": d.metric, "a": d.a, "b": d.b, "difference": d.diff,
                         "low": d.low, "high": d.high, "significant": d.significant,
                         "delong_p": d.delong_p[0] if d.delong_p else None, "images": d.n_images, "note": ""})
        if pixel and note:
            rows.append({"category": category, "metric": "pixel metrics", "note": note})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["metric_label"] = frame["metric"].map(lambda m: METRICS.get(m, m) if isinstance(m, str) else "")
    return frame


__all__ = ["COLUMNS", "compare_jobs"]
