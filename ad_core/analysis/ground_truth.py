"""What a ground-truth correction does to a run's numbers (pure pandas): its metrics against the dataset's own
ground truth next to the same metrics against an annotation set, re-scored from the same stored maps."""

from __future__ import annotations

import pandas as pd

from ad_core.annotations import DEFAULT_GT_VERSION


def before_after(metrics: pd.DataFrame, gt_version: str) -> pd.DataFrame:
    """Per category x metric: `before` (the dataset's ground truth), `after` (`gt_version`) and `change`
    (after - before), from a job's metric rows (columns category, metric, value, metric_version, gt_version).
    Both sides use the metric version of the `gt_version` rows (the newest when there are several); a category
    without dataset rows of that version gets NaN before. Sorted by category, then the largest change first."""
    columns = ["category", "metric", "metric_version", "before", "after", "change"]
    after = metrics[metrics["gt_version"] == gt_version]
    if after.empty:
        return pd.DataFrame(columns=columns)
    version = sorted(after["metric_version"].unique())[-1]
    after = after[after["metric_version"] == version]
    before = metrics[(metrics["gt_version"] == DEFAULT_GT_VERSION) & (metrics["metric_version"] == version)]
    out = after[["category", "metric", "value"]].rename(columns={"value": "after"}).merge(
        before[["category", "metric", "value"]].rename(columns={"value": "before"}), on=["category", "metric"],
        how="left")
    out["metric_version"] = version
    out["before"] = out["before"].astype(float)
    out["after"] = out["after"].astype(float)
    out["change"] = out["after"] - out["before"]
    out = out.assign(_abs=out["change"].abs()).sort_values(["category", "_abs"], ascending=[True, False], kind="stable")
    return out[columns].reset_index(drop=True)


__all__ = ["before_after"]
