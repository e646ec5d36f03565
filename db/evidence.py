"""What the results database stores about one finished job, gathered for a reproducibility bundle.

`stored_run(job_id)` returns an `ad_core.reproduce.StoredRun`: the job (method, dataset, root, categories,
preset, seed, device, split recipe, evaluation frame, config), its provenance record (`run_records`), every
metric row (all metric versions), the split content hash of each category (`category_runs` -> `splits`) and
the per-image scores (`image_results`). Read only.
"""

from __future__ import annotations

from sqlalchemy import select

from ad_core.frame import LEGACY_FRAME
from ad_core.reproduce import StoredRun
from db.models import CategoryRun, ImageResultRow, Job, MetricValue, RunRecord, Split
from db.session import init_db, session_scope


class NotReproducible(LookupError):
    """The job does not exist, did not succeed, or has no provenance record."""


def stored_run(job_id: int, url: str | None = None) -> StoredRun:
    """Everything stored about succeeded job `job_id`. Raises NotReproducible otherwise."""
    init_db(url)
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotReproducible(f"job {job_id} does not exist")
        if job.status != "succeeded":
            raise NotReproducible(f"job {job_id} is {job.status}: only succeeded jobs have results to bundle")
        record = s.get(RunRecord, job_id)
        if record is None:
            raise NotReproducible(f"job {job_id} has no provenance record")
        query = (select(MetricValue.category, MetricValue.name, MetricValue.value, MetricValue.metric_version)
                 .where(MetricValue.job_id == job_id)
                 .order_by(MetricValue.metric_version, MetricValue.category, MetricValue.name))
        # Rows scored against an edited ground truth (annotation sets, `metrics.gt_version`) are not the run's.
        gt_version = getattr(MetricValue, "gt_version", None)
        if gt_version is not None:
            query = query.where(gt_version == "dataset")
        metrics = [{"category": c, "metric": n, "value": v, "metric_version": mv} for c, n, v, mv in s.execute(query)]
        hashes = dict(s.execute(
            select(CategoryRun.category, Split.content_hash).join(Split, Split.id == CategoryRun.split_id)
            .where(CategoryRun.job_id == job_id)).all())
        images = [
            {"category": c, "path": p, "label": lbl, "defect_type": d, "score": sc}
            for c, p, lbl, d, sc in s.execute(
                select(ImageResultRow.category, ImageResultRow.path, ImageResultRow.label,
                       ImageResultRow.defect_type, ImageResultRow.score)
                .where(ImageResultRow.job_id == job_id)
                .order_by(ImageResultRow.category, ImageResultRow.path))
        ]
        return StoredRun(
            job_id=job.id, method=job.method, dataset=job.dataset.kind, root=job.dataset.root,
            categories=list(job.categories), preset=job.preset, seed=job.seed, device=job.device,
            split=dict(job.split or {}), frame=job.frame or LEGACY_FRAME, config=dict(record.config or job.config),
            record={
                "packages": dict(record.packages or {}), "git_commit": record.git_commit,
                "weights_source": record.weights_source, "random_weights": record.random_weights,
                "device": record.device, "host": record.host, "metric_version": record.metric_version,
                "threads": record.threads, "seed": record.seed,
                "created_at": record.created_at.isoformat() if record.created_at else None,
            },
            metrics=metrics, split_hashes=hashes, images=images,
            finished_at=job.finished_at.isoformat() if job.finished_at else None,
        )


def configs_by_hash(board, url: str | None = None) -> dict[str, dict]:  # noqa: ANN001 (leaderboard.Leaderboard)
    """Config hash -> complete config of the succeeded jobs behind a leaderboard (its dataset and roots), for
    `ad_core.analysis.paper.paper_vs_reproduced`."""
    from db.results import jobs_frame

    jobs = jobs_frame(dataset=board.dataset, url=url)
    if board.roots:
        jobs = jobs[jobs["root"].isin(board.roots)]
    return {str(h): dict(c or {}) for h, c in zip(jobs["config_hash"], jobs["config"], strict=True)}
