"""What the dashboard pages *do*: build and submit job matrices, cancel, re-run, launch the demo.

Pages only render; every action goes through here and through `db.queries` (no SQL in the dashboard).
Every action takes the acting user (`actor`, default: this session's, `dashboard.auth.current_actor`) and is
refused server-side (`db.accounts.AccessDenied`) when the role may not do it, whatever the page showed.

Imports: dashboard modules are imported at module level, never inside an action. One first imported during a
script run made Streamlit run the page again, and the Annotate page lost its "Saved version ..." message.
Jobs are planned by `workers.planner.plan_jobs` and sent by `workers.celery_app.submit_jobs`, exactly as
`iad submit` does: create the rows (all or none), publish one message per job, and cancel the rows again if
the broker is unreachable so that no queued job waits for a message that will never come.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ad_core.frame import LEGACY_FRAME
from dashboard import auth  # here, not inside an action: see "Imports" in the module docstring
from db import accounts, queries
from db.models import Job
from workers.celery_app import SubmitError  # noqa: F401  (re-exported: pages catch state.SubmitError)
from workers.planner import MatrixPlan, plan_jobs  # noqa: F401  (the one planner; pages plan through it)

# The first-run demo: a couple of fast methods on the generated demo data, one seed.
DEMO_METHOD_CANDIDATES = ("patchcore", "reconpatch")
DEMO_PRESET = "fast"
# IAD_DEMO_SIZE=small makes a tiny demo (tests, slow machines): fewer and smaller images.
DEMO_SIZES: dict[str, dict[str, int]] = {
    "default": {"n_train": 40, "n_test_good": 10, "n_test_defect": 20, "image_size": 256},
    "small": {"n_train": 10, "n_test_good": 4, "n_test_defect": 6, "image_size": 128},
}
# ...and shortens training whose cost does not shrink with the data (ReConPatch samples a fixed number of
# patches per epoch). The stored config records these deviations from the preset.
DEMO_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "small": {"reconpatch": {"epochs": 2, "patches_per_epoch": 2048}},
}



def parse_seeds(text: str) -> list[int]:
    """'0 1 2', '0,1,2' or '0-4' -> distinct seeds in order. Raises ValueError on anything else."""
    seeds: list[int] = []
    for token in re.split(r"[\s,;]+", text.strip()):
        if not token:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", token)
        if match is None:
            raise ValueError(f"seeds must be non-negative integers or ranges like 0-4, got {token!r}")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo or hi - lo > 1000:
            raise ValueError(f"bad seed range {token!r}")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError("give at least one seed")
    return list(dict.fromkeys(seeds))


def _acting(actor: accounts.Actor | None, permission: str, what: str) -> accounts.Actor:
    """`actor` (default: this session's user) if it holds `permission`; AccessDenied otherwise."""
    if actor is None:
        actor = auth.current_actor()
    accounts.require(actor, permission, what)
    return actor


def submit_matrix(requests: Sequence[queries.JobRequest], group_id: str | None = None,
                  actor: accounts.Actor | None = None) -> tuple[str, list[int]]:
    """Create the jobs and send them to the broker, exactly as `iad submit`. Returns (group id, job ids)."""
    from workers.celery_app import submit_jobs

    return submit_jobs(requests, group_id, actor=_acting(actor, "launch", "launch jobs"))


def cancel(job_ids: Iterable[int], actor: accounts.Actor | None = None) -> dict[int, str]:
    """Cancel queued/running jobs (database flag, plus a revoke where the broker supports it); researchers
    cancel their own jobs, admins anyone's (the others come back 'refused: ...')."""
    from workers.celery_app import cancel_jobs

    return cancel_jobs(list(job_ids), actor=_acting(actor, "launch", "cancel jobs"))


def expire_stale() -> int:
    """Expire jobs of lost workers (re-queue when IAD_MAX_ATTEMPTS allows); returns how many."""
    from workers.celery_app import expire_stale_jobs

    return len(expire_stale_jobs())


def request_of(job: Job, seed: int | None = None, categories: list[str] | None = None) -> queries.JobRequest:
    """The request that created `job` (optionally for another seed/category: a matrix cell)."""
    return queries.JobRequest(
        method=job.method, dataset=job.dataset.kind, root=job.dataset.root,
        categories=list(categories if categories is not None else job.categories), config=dict(job.config),
        preset=job.preset, seed=job.seed if seed is None else seed, device=job.device, queue=job.queue,
        split=dict(job.split or {}), frame=job.frame or LEGACY_FRAME,
    )


def copies_on_split(job_ids: Iterable[int], split: dict[str, Any]) -> tuple[list[queries.JobRequest], list[str]]:
    """Requests that re-run these jobs on another split (same method, complete stored config, seed, categories
    and device), each checked with the runner's own validation of that config; returns (requests, errors)."""
    import dataclasses

    from ad_core.errors import ConfigError, DatasetError, WeightsError
    from ad_core.runner import RunSpec

    requests, errors = [], []
    for job in sorted(queries.list_jobs(job_ids=list(job_ids), limit=None), key=lambda j: j.id):
        request = dataclasses.replace(request_of(job), split=dict(split))
        try:
            RunSpec(method=request.method, dataset=request.dataset, root=request.root,
                    categories=list(request.categories), seed=request.seed, split=dict(split),
                    config=dict(request.config), frame=request.frame).validate()
        except (ConfigError, DatasetError, WeightsError) as exc:
            errors.append(f"{request.method} on {', '.join(request.categories)}: {exc}")
            continue
        requests.append(request)
    return requests, errors


def rerun(job_ids: Iterable[int], actor: accounts.Actor | None = None) -> tuple[str, list[int]]:
    """Submit fresh copies of these jobs (same config, seed and categories) in their own group. Researchers
    re-run their own jobs, admins anyone's."""
    actor = _acting(actor, "launch", "re-run jobs")
    jobs = sorted(queries.list_jobs(job_ids=list(job_ids), limit=None), key=lambda j: j.id)
    others = [j.id for j in jobs if not accounts.may_manage_job(actor, j.launched_by)]
    if others:
        raise accounts.AccessDenied(f"{actor.name} ({actor.role}) may not re-run job(s) "
                                    f"{', '.join(map(str, others))} of other users: needs the admin role")
    groups = {j.group_id for j in jobs}
    # Re-runs of one matrix stay in it, so its "missing cells" and progress stay in one place.
    group = groups.pop() if len(groups) == 1 else None
    new_group, ids = submit_matrix([request_of(j) for j in jobs], group_id=group, actor=actor)
    accounts.audit(actor.name, "re-run", ", ".join(str(j.id) for j in jobs), {"new_jobs": ids})
    return new_group, ids


def _variant_key(job: Job) -> tuple:
    """What makes two jobs cells of the same matrix row: method, data, preset, config, device, split recipe,
    evaluation frame."""
    from ad_core.analysis.leaderboard import config_hash
    from ad_core.splits import SplitSpec

    return (job.method, job.dataset.kind, job.dataset.root, job.preset, config_hash(job.config), job.device,
            SplitSpec.from_dict(job.split).key, job.frame)


def missing_cells(group_id: str) -> list[queries.JobRequest]:
    """Cells of a matrix (method variant x category x seed) with no succeeded, queued or running job.

    The matrix is the full cross product of the variants, categories and seeds seen in the group, so a
    cell that failed, was cancelled, or was never created is "missing". A multi-class variant's cell is
    one job over all of its categories (one model), so it comes back whole.
    """
    jobs = queries.list_jobs(group_id=group_id, limit=None)
    if not jobs:
        return []
    variants: dict[tuple, Job] = {}
    categories: list[str] = []
    seeds: list[int] = []
    done: set[tuple] = set()
    for job in sorted(jobs, key=lambda j: j.id):
        key = _variant_key(job)
        variants.setdefault(key, job)
        categories.extend(job.categories)
        seeds.append(job.seed)
        if job.status in ("succeeded", "queued", "running"):
            done.add((key, tuple(job.categories), job.seed))
    cells = []
    for key, template in variants.items():
        shared = len(template.categories) > 1
        units = [tuple(template.categories)] if shared else [(c,) for c in dict.fromkeys(categories)]
        for unit in units:
            for seed in dict.fromkeys(seeds):
                if (key, unit, seed) not in done:
                    cells.append(request_of(template, seed=seed, categories=list(unit)))
    return cells


def rerun_missing(group_id: str, actor: accounts.Actor | None = None) -> list[int]:
    actor = _acting(actor, "launch", "re-run jobs")
    owners = {j.launched_by for j in queries.list_jobs(group_id=group_id, limit=None)}
    if not all(accounts.may_manage_job(actor, owner) for owner in owners):
        raise accounts.AccessDenied(f"{actor.name} ({actor.role}) may not fill in a matrix of other users: needs "
                                    "the admin role")
    cells = missing_cells(group_id)
    if not cells:
        return []
    ids = submit_matrix(cells, group_id=group_id, actor=actor)[1]
    accounts.audit(actor.name, "re-run missing cells", f"group {group_id}", {"new_jobs": ids})
    return ids


# --- the first-run demo ------------------------------------------------------------------------------------


def demo_size() -> str:
    size = os.environ.get("IAD_DEMO_SIZE", "default")
    return size if size in DEMO_SIZES else "default"


def demo_root() -> Path:
    """Where the demo data lives (a separate folder per size, so the two never collide)."""
    from ad_core.home import demo_root as home_demo_root

    root = home_demo_root()
    return root if demo_size() == "default" else root.with_name(f"{root.name}-{demo_size()}")


def demo_methods() -> list[str]:
    from ad_core.methods import available_methods

    available = set(available_methods())
    return [m for m in DEMO_METHOD_CANDIDATES if m in available]


def ensure_multiclass_demo() -> Path:
    """The 10-class demo (long-tailed and unified runs), generated on first use; same size setting as the demo."""
    from ad_core.data import MULTICLASS_DEMO_CATEGORIES, make_demo_dataset
    from ad_core.home import multiclass_demo_root

    root = multiclass_demo_root()
    root = root if demo_size() == "default" else root.with_name(f"{root.name}-{demo_size()}")
    return make_demo_dataset(root, categories=MULTICLASS_DEMO_CATEGORIES, **DEMO_SIZES[demo_size()])


def ensure_demo_dataset() -> Path:
    from ad_core.data import make_demo_dataset

    return make_demo_dataset(demo_root(), **DEMO_SIZES[demo_size()])


def launch_demo(actor: accounts.Actor | None = None) -> tuple[str, list[int]]:
    """Generate the demo dataset (if needed) and submit the demo comparison. Raises on invalid input."""
    from ad_core.data import DEMO_CATEGORIES

    actor = _acting(actor, "launch", "launch the demo")
    root = ensure_demo_dataset()
    requests, errors = [], {}
    for method in demo_methods():
        overrides = DEMO_OVERRIDES[demo_size()].get(method, {})
        plan = plan_jobs([method], "demo", str(root), list(DEMO_CATEGORIES), [0], preset=DEMO_PRESET,
                         overrides=overrides)
        requests += plan.requests
        errors.update(plan.errors)
    if errors or not requests:
        raise ValueError("; ".join(f"{k}: {v}" for k, v in errors.items()) or "no demo method available")
    return submit_matrix(requests, actor=actor)


def database_is_empty() -> bool:
    return sum(queries.job_counts().values()) == 0


# --- annotation (the Annotate pages; storage and rules in db.annotations / ad_core.annotations) -----------------


def annotation_sets(kind: str, root: str) -> list[Any]:
    """The annotation sets of one dataset (`db.annotations.SetInfo`), oldest first; none for an unknown root."""
    from db import annotations as dba

    return dba.list_sets(kind, root)


def add_annotation_dataset(kind: str, root: str, actor: accounts.Actor | None = None) -> tuple[str, str]:
    """Register a dataset folder for annotation (no run needed). Raises DatasetError when it cannot be read."""
    from ad_core.data import list_categories
    from db import annotations as dba

    _acting(actor, "annotate", "add datasets for annotation")
    root = str(Path(root).expanduser().absolute())
    if not list_categories(kind, root):
        from ad_core.errors import DatasetError

        raise DatasetError(f"no categories found under {root} (expected <category>/train/good and <category>/test)")
    dba.dataset_id(kind, root)
    return kind, root


def save_annotation(kind: str, root: str, path: str, label: int, defect_type: str, mask: Any, source: str,
                    detail: dict[str, Any], base_id: int | None, note: str = "",
                    actor: accounts.Actor | None = None) -> Any:
    """Store a new version of one image's annotation (`db.annotations.save_annotation`), authored by `actor`."""
    from db import annotations as dba

    actor = _acting(actor, "annotate", "annotate")
    saved = dba.save_annotation(kind, root, path, label, defect_type, mask, source=source, detail=detail,
                                base_id=base_id, note=note, author=actor.name)
    accounts.audit(actor.name, "annotation saved", path, {"root": root, "label": label, "source": source})
    return saved


def revert_annotation(kind: str, root: str, path: str, to_version: int, base_id: int | None,
                      actor: accounts.Actor | None = None) -> Any:
    from db import annotations as dba

    actor = _acting(actor, "annotate", "annotate")
    saved = dba.revert(kind, root, path, to_version, author=actor.name, base_id=base_id)
    accounts.audit(actor.name, "annotation reverted", path, {"root": root, "to_version": to_version})
    return saved


def create_annotation_set(kind: str, root: str, name: str, categories: Sequence[str] | None, note: str = "",
                          actor: accounts.Actor | None = None) -> Any:
    from db import annotations as dba

    actor = _acting(actor, "annotate", "make annotation sets")
    info = dba.create_set(kind, root, name, categories or None, author=actor.name, note=note)
    accounts.audit(actor.name, "annotation set made", name, {"root": root})
    return info


def import_annotation_set(kind: str, root: str, data: bytes, file_name: str, name: str | None,
                          actor: accounts.Actor | None = None) -> Any:
    import io

    from db import annotations as dba

    actor = _acting(actor, "annotate", "import annotation sets")
    buffer = io.BytesIO(data)
    buffer.name = file_name
    result = dba.import_set(kind, root, buffer, name=name or None, author=actor.name)
    accounts.audit(actor.name, "annotation set imported", file_name, {"root": root})
    return result


def export_annotation_set(set_id: int, include_train: bool = True, actor: accounts.Actor | None = None) -> bytes:
    import io

    from db import annotations as dba

    actor = _acting(actor, "export", "export")
    accounts.audit(actor.name, "annotation set exported", str(set_id))
    buffer = io.BytesIO()
    dba.export_set(set_id, buffer, include_train=include_train)
    return buffer.getvalue()
