"""Annotation storage: versions of an image's ground truth and annotation sets (SQL + mask files).

Every save adds the next version of that image's annotation (`annotations` table): who (`IAD_USER`, else the OS
user), when, from what (`source`: drawn, prefill from a run at a threshold, imported, revert), which version the
author started from (`replaces_id`), and the mask PNG in the artifact store (written atomically, one file per
version, never overwritten). Nothing is updated or deleted, so nothing is lost; the highest version is current.
Two people saving the same image at once both get a version (the version number is unique per image; a save
that loses the race takes the next number); the later one is current and `SavedAnnotation.overtaken` names the
versions saved since the author's starting point. The dataset's files are never written.

An annotation set freezes the current annotations of a dataset under a name; its `gt_version` is the hash of
the images whose ground truth then differs from the dataset's files (`ad_core.annotations.gt_version_key`).
Export / import in MVTec AD layout: `export_set`, `import_set`.

Bad input (an image outside the dataset root, one that no longer exists or is not a test image, a mask of the
wrong size, a good image with defect pixels) raises `AnnotationError` before anything is written; a failure
after the mask files were written removes them again.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from ad_core.annotations import (
    DEFAULT_GT_LABEL,
    DEFAULT_GT_VERSION,
    SOURCES,
    AnnotationError,
    GroundTruth,
    check_mask_size,
    ground_truth_doc,
    image_size,
    mask_to_png,
    read_mvtec_export,
    relative_image_path,
)
from db import artifacts
from db.models import Annotation, AnnotationSet, AnnotationSetItem, Dataset
from db.session import init_db, session_scope, utcnow

_SAVE_ATTEMPTS = 20


def current_user() -> str:
    """Who saves: `IAD_USER`, else the OS user (until sign-in exists)."""
    user = os.environ.get("IAD_USER", "").strip()
    if user:
        return user
    try:
        return getpass.getuser()
    except Exception:  # no USER variable and no passwd entry (some containers)
        return "unknown"


# --- the dataset and its images -------------------------------------------------------------------------------


def dataset_id(kind: str, root: str, url: str | None = None) -> int:
    """The `datasets` row of (kind, root), created when missing (annotating a folder no run has used yet)."""
    from db.queries import ensure_dataset

    init_db(url)
    with session_scope(url) as s:
        return ensure_dataset(s, kind, str(root))


def known_datasets(url: str | None = None) -> list[tuple[str, str]]:
    """(kind, root) of every dataset row (those runs used and those added for annotation), oldest first."""
    init_db(url)
    with session_scope(url) as s:
        return [(k, r) for k, r in s.execute(select(Dataset.kind, Dataset.root).order_by(Dataset.id))]


@dataclass(frozen=True)
class DatasetImage:
    category: str
    path: str  # relative to the dataset root
    full_path: str
    label: int  # as the dataset's files say
    defect_type: str
    mask_path: str | None

    def dataset_truth(self) -> GroundTruth:
        from ad_core.annotations import read_mask_file

        mask = read_mask_file(self.mask_path) if self.mask_path else None
        return GroundTruth.of(self.label, self.defect_type, mask, self.mask_path)


def dataset_images(kind: str, root: str, categories: Iterable[str] | None = None) -> dict[str, DatasetImage]:
    """Relative path -> test image of the given categories (all when None), as the dataset's files say."""
    from ad_core.annotations import split_relative
    from ad_core.data import list_categories, load_split

    out: dict[str, DatasetImage] = {}
    for category in (list(categories) if categories is not None else list_categories(kind, root)):
        split = load_split(kind, root, category)
        for sample in split.test:
            rel = split_relative(split, sample)
            out[rel] = DatasetImage(category, rel, sample.path, sample.label, sample.defect_type, sample.mask_path)
    return out


def resolve_image(kind: str, root: str, path: str) -> DatasetImage:
    """The test image at `path` (relative to the root, or absolute inside it). AnnotationError when it is
    outside the root, no longer exists, or is not a test image of its category."""
    from ad_core.errors import DatasetError

    rel = relative_image_path(root, path)
    full = Path(root).expanduser().resolve() / rel
    if not full.is_file():
        raise AnnotationError(f"image {rel} no longer exists under {root}")
    category = rel.split("/", 1)[0]
    try:
        images = dataset_images(kind, root, [category])
    except DatasetError as exc:
        raise AnnotationError(f"{rel}: {exc}") from exc
    if rel not in images:
        raise AnnotationError(f"{rel} is not a test image of {kind} category {category!r}; only test images "
                              "(<category>/test/<defect>/...) are annotated")
    return images[rel]


# --- versions -------------------------------------------------------------------------------------------------


@dataclass
class SavedAnnotation:
    id: int
    version: int
    path: str
    # Versions saved by others after the one this save started from (a concurrent edit): (version, author).
    overtaken: list[tuple[int, str]] = field(default_factory=list)


def annotation_truth(row: Annotation, root: Path | None = None) -> GroundTruth:
    """The ground truth one stored version says (mask file as an absolute path, read on demand)."""
    mask_file = str((root or artifacts.artifacts_root()) / row.mask_path) if row.mask_path else None
    return GroundTruth(row.label, row.defect_type, row.mask_sha256, mask_file)


def _insert_version(dataset: int, category: str, path: str, truth: GroundTruth, mask_path: str | None, source: str,
                    detail: Mapping[str, Any], author: str, base_id: int | None, note: str,
                    url: str | None) -> SavedAnnotation:
    """Insert the next version of one image, retrying when another save takes the same number first."""
    last: Exception | None = None
    for attempt in range(_SAVE_ATTEMPTS):
        try:
            with session_scope(url) as s:
                rows = s.execute(select(Annotation.id, Annotation.version, Annotation.author)
                                 .where(Annotation.dataset_id == dataset, Annotation.path == path)
                                 .order_by(Annotation.version)).all()
                base_version = next((v for i, v, _ in rows if i == base_id), 0)
                if base_id is not None and not any(i == base_id for i, _, _ in rows):
                    raise AnnotationError(f"version id {base_id} is not an annotation of {path}")
                version = (rows[-1][1] if rows else 0) + 1
                row = Annotation(dataset_id=dataset, category=category, path=path, version=version,
                                 label=truth.label, defect_type=truth.defect_type, mask_path=mask_path,
                                 mask_sha256=truth.mask_sha256, source=source, source_detail=dict(detail),
                                 author=author, created_at=utcnow(), replaces_id=base_id, note=note)
                s.add(row)
                s.flush()
                overtaken = [(v, a) for _, v, a in rows if v > base_version]
                return SavedAnnotation(row.id, version, path, overtaken)
        except (IntegrityError, OperationalError) as exc:  # the same version number taken at once; or locked
            last = exc
            time.sleep(0.01 * (attempt + 1))
    raise AnnotationError(f"could not save {path}: the database stayed busy ({last})")


def save_annotation(
    kind: str,
    root: str,
    path: str,
    label: int,
    defect_type: str,
    mask: np.ndarray | None,
    source: str = "drawn",
    detail: Mapping[str, Any] | None = None,
    author: str | None = None,
    base_id: int | None = None,
    note: str = "",
    url: str | None = None,
) -> SavedAnnotation:
    """Store a new version of one test image's annotation. `mask`: bool [H, W] at the image's size (None or all
    zero: no defect pixels). `base_id`: the version the author started from (None: the dataset's ground truth).
    Raises AnnotationError (nothing written) on bad input."""
    if source not in SOURCES:
        raise AnnotationError(f"unknown annotation source {source!r}; expected one of {', '.join(SOURCES)}")
    image = resolve_image(kind, root, path)
    if mask is not None:
        check_mask_size(mask, image_size(image.full_path))
    truth = GroundTruth.of(label, defect_type, mask)
    init_db(url)
    dataset = dataset_id(kind, root, url)
    rel_mask = artifacts.annotation_mask_path(dataset, image.path) if truth.has_pixels else None
    if rel_mask is not None:
        artifacts.write_atomic(rel_mask, mask_to_png(truth.mask))
    try:
        return _insert_version(dataset, image.category, image.path, truth, rel_mask, source, detail or {},
                               author or current_user(), base_id, note, url)
    except BaseException:
        if rel_mask is not None:
            (artifacts.artifacts_root() / rel_mask).unlink(missing_ok=True)
        raise


def history(kind: str, root: str, path: str, url: str | None = None) -> list[Annotation]:
    """Every version of one image's annotation, oldest first ([] = never annotated)."""
    init_db(url)
    rel = relative_image_path(root, path)
    with session_scope(url) as s:
        ds = s.execute(select(Dataset.id).filter_by(kind=kind, root=str(root))).scalar_one_or_none()
        if ds is None:
            return []
        return list(s.scalars(select(Annotation).where(Annotation.dataset_id == ds, Annotation.path == rel)
                              .order_by(Annotation.version)))


def current_annotations(kind: str, root: str, categories: Iterable[str] | None = None,
                        url: str | None = None) -> dict[str, Annotation]:
    """Relative image path -> its current (highest) version, for the annotated images of a dataset."""
    init_db(url)
    with session_scope(url) as s:
        ds = s.execute(select(Dataset.id).filter_by(kind=kind, root=str(root))).scalar_one_or_none()
        if ds is None:
            return {}
        latest = (select(Annotation.path, func.max(Annotation.version).label("v"))
                  .where(Annotation.dataset_id == ds).group_by(Annotation.path).subquery())
        query = (select(Annotation).join(latest, (Annotation.path == latest.c.path) & (Annotation.version == latest.c.v))
                 .where(Annotation.dataset_id == ds))
        if categories is not None:
            query = query.where(Annotation.category.in_(list(categories)))
        return {row.path: row for row in s.scalars(query)}


def revert(kind: str, root: str, path: str, to_version: int, author: str | None = None,
           base_id: int | None = None, url: str | None = None) -> SavedAnnotation:
    """Make an earlier version current again by saving it as the next version (`source` revert). `to_version`
    0 = the dataset's own ground truth."""
    image = resolve_image(kind, root, path)
    if to_version == 0:
        truth = image.dataset_truth()
        mask = truth.pixels(image_size(image.full_path)) if truth.has_pixels else None
        return save_annotation(kind, root, image.path, truth.label, truth.defect_type, mask, "revert",
                               {"to_version": 0}, author, base_id, url=url)
    versions = {row.version: row for row in history(kind, root, image.path, url)}
    if to_version not in versions:
        raise AnnotationError(f"{image.path} has no version {to_version} (versions: {sorted(versions) or 'none'})")
    old = versions[to_version]
    dataset = dataset_id(kind, root, url)
    # Mask files are immutable: the new version may share the old one's file.
    return _insert_version(dataset, image.category, image.path,
                           GroundTruth(old.label, old.defect_type, old.mask_sha256), old.mask_path, "revert",
                           {"to_version": to_version}, author or current_user(), base_id, "", url)


# --- annotation sets ------------------------------------------------------------------------------------------


@dataclass
class SetInfo:
    id: int
    dataset_id: int
    kind: str
    root: str
    name: str
    gt_version: str
    categories: list[str]
    n_changed: int
    created_by: str
    created_at: dt.datetime
    note: str

    @property
    def label(self) -> str:
        return f"annotation set '{self.name}' ({self.gt_version})"


def _info(row: AnnotationSet) -> SetInfo:
    return SetInfo(row.id, row.dataset_id, row.dataset.kind, row.dataset.root, row.name, row.gt_version,
                   list(row.categories or []), row.n_changed, row.created_by, row.created_at, row.note)


def changed_truths(kind: str, root: str, rows: Iterable[Annotation],
                   images: Mapping[str, DatasetImage] | None = None) -> dict[str, GroundTruth]:
    """Of the given annotation versions, the ground truths that differ from the dataset's files (these define
    a ground-truth version). AnnotationError when an annotated image no longer exists in the dataset."""
    rows = list(rows)
    if images is None:
        images = dataset_images(kind, root, sorted({r.category for r in rows}))
    out: dict[str, GroundTruth] = {}
    for row in rows:
        image = images.get(row.path)
        if image is None:
            raise AnnotationError(f"annotated image {row.path} is no longer a test image of {kind} {root}")
        truth = annotation_truth(row)
        if not truth.same_as(image.dataset_truth()):
            out[row.path] = truth
    return out


def create_set(kind: str, root: str, name: str, categories: Sequence[str] | None = None, author: str | None = None,
               note: str = "", url: str | None = None) -> SetInfo:
    """Freeze the current annotations of a dataset (of `categories`, default: every category) as a named
    ground-truth version."""
    from ad_core.annotations import gt_version_key
    from ad_core.data import list_categories

    name = name.strip()
    if not name:
        raise AnnotationError("an annotation set needs a name")
    cats = sorted(categories) if categories else list_categories(kind, root)
    rows = list(current_annotations(kind, root, cats, url).values())
    changed = changed_truths(kind, root, rows)
    dataset = dataset_id(kind, root, url)
    try:
        with session_scope(url) as s:
            row = AnnotationSet(dataset_id=dataset, name=name, gt_version=gt_version_key(changed), categories=cats,
                                n_changed=len(changed), created_by=author or current_user(), created_at=utcnow(),
                                note=note)
            s.add(row)
            s.flush()
            s.add_all(AnnotationSetItem(set_id=row.id, annotation_id=r.id) for r in rows)
            s.flush()
            s.refresh(row)
            return _info(row)
    except IntegrityError as exc:
        raise AnnotationError(f"dataset {kind} {root} already has an annotation set named {name!r}") from exc


def list_sets(kind: str | None = None, root: str | None = None, url: str | None = None) -> list[SetInfo]:
    init_db(url)
    with session_scope(url) as s:
        query = select(AnnotationSet).join(Dataset, Dataset.id == AnnotationSet.dataset_id)
        if kind is not None:
            query = query.where(Dataset.kind == kind)
        if root is not None:
            query = query.where(Dataset.root == str(root))
        return [_info(r) for r in s.scalars(query.order_by(AnnotationSet.id))]


def get_set(set_ref: int | str, kind: str | None = None, root: str | None = None, url: str | None = None) -> SetInfo:
    """An annotation set by id, name (within `kind`/`root` when given) or gt_version key."""
    sets = list_sets(kind, root, url)
    for info in sets:
        if str(info.id) == str(set_ref):
            return info
    matches = [i for i in sets if set_ref in (i.name, i.gt_version)]
    if not matches:
        raise AnnotationError(f"no annotation set {set_ref!r}" + (f" for {kind} {root}" if kind or root else ""))
    if len({m.id for m in matches}) > 1 and len({m.gt_version for m in matches}) > 1:
        raise AnnotationError(f"{set_ref!r} names several annotation sets (ids {[m.id for m in matches]}); use the id")
    return matches[0]


def set_rows(set_id: int, url: str | None = None) -> list[Annotation]:
    with session_scope(url) as s:
        return list(s.scalars(select(Annotation).join(AnnotationSetItem, AnnotationSetItem.annotation_id == Annotation.id)
                              .where(AnnotationSetItem.set_id == set_id).order_by(Annotation.path)))


def set_truths(set_id: int, url: str | None = None) -> tuple[SetInfo, dict[str, GroundTruth]]:
    """(the set, relative path -> ground truth of every image whose ground truth it changes)."""
    init_db(url)
    info = get_set(set_id, url=url)
    return info, changed_truths(info.kind, info.root, set_rows(set_id, url))


def ground_truth_of(set_ref: int | str, kind: str, root: str, url: str | None = None) -> dict[str, Any]:
    """The ground truth of an annotation set (id, name or gt_version) on dataset `kind` `root`, as the plain
    data a run takes (`ad_core.annotations.ground_truth_doc`; mask files as absolute paths in the artifact
    store). AnnotationError when there is no such set for that dataset."""
    info = get_set(set_ref, kind, str(root), url)
    info, truths = set_truths(info.id, url)
    return ground_truth_doc(info.gt_version, info.name, truths)


def gt_labels(url: str | None = None) -> dict[str, str]:
    """gt_version -> readable label (the dataset's own ground truth, and every annotation set's)."""
    labels = {DEFAULT_GT_VERSION: DEFAULT_GT_LABEL}
    for info in list_sets(url=url):
        labels.setdefault(info.gt_version, info.label)
    return labels


def export_set(set_id: int, target: str | Path | IO[bytes], include_train: bool = True,
               url: str | None = None) -> dict[str, Any]:
    """Write an annotation set in MVTec AD layout (zip); returns its manifest."""
    from ad_core.annotations import export_mvtec
    from ad_core.data import load_split

    info, truths = set_truths(set_id, url)
    splits = {c: load_split(info.kind, info.root, c) for c in info.categories}
    return export_mvtec(splits, truths, target, include_train=include_train, info={
        "name": info.name, "dataset": info.kind, "root": info.root, "created_by": info.created_by,
        "created_at": info.created_at.isoformat(), "note": info.note})


@dataclass
class ImportResult:
    set: SetInfo
    new_versions: int
    unchanged: int


def import_set(kind: str, root: str, source: str | Path | IO[bytes], name: str | None = None,
               author: str | None = None, url: str | None = None) -> ImportResult:
    """Import an annotation set in MVTec AD layout (zip or folder, `ad_core.annotations.read_mvtec_export`) into a
    dataset: every image whose imported ground truth differs from its current one gets a new version (source
    'imported'), then a set named `name` (default: the manifest's name) freezes the result. All or nothing:
    every entry is checked first (image in the dataset, mask size) and the versions are written in one
    transaction."""
    imported = read_mvtec_export(source)
    name = (name or imported.info.get("name") or "").strip()
    if not name:
        raise AnnotationError("the import has no set name in its manifest: give one")
    if any(i.name == name for i in list_sets(kind, root, url)):
        raise AnnotationError(f"dataset {kind} {root} already has an annotation set named {name!r}")
    rels = [relative_image_path(root, e.source) for e in imported.entries]  # refuses paths outside the root
    categories = sorted({rel.split("/", 1)[0] for rel in rels})
    images = dataset_images(kind, root, [c for c in categories if (Path(root) / c / "test").is_dir()])
    current = current_annotations(kind, root, categories, url)
    author = author or current_user()
    file_name = getattr(source, "name", None) or str(source)
    plan: list[tuple[DatasetImage, GroundTruth, int | None]] = []
    unchanged = 0
    for entry, rel in zip(imported.entries, rels, strict=True):
        image = images.get(rel)
        if image is None:
            raise AnnotationError(f"{entry.source} is not a test image of {kind} {root}; nothing was imported")
        if entry.mask is not None:
            check_mask_size(entry.mask, image_size(image.full_path), f"the mask of {rel}")
        truth = GroundTruth.of(entry.label, entry.defect_type, entry.mask)
        now = annotation_truth(current[rel]) if rel in current else image.dataset_truth()
        if truth.same_as(now):
            unchanged += 1
            continue
        plan.append((image, truth, current[rel].id if rel in current else None))
    dataset = dataset_id(kind, root, url)
    written: list[str] = []
    try:
        for image, truth, _ in plan:
            if truth.has_pixels:
                rel_mask = artifacts.annotation_mask_path(dataset, image.path)
                artifacts.write_atomic(rel_mask, mask_to_png(truth.mask))
                written.append(rel_mask)
            else:
                written.append("")
        with session_scope(url) as s:
            for (image, truth, base), rel_mask in zip(plan, written, strict=True):
                version = (s.execute(select(func.max(Annotation.version)).where(
                    Annotation.dataset_id == dataset, Annotation.path == image.path)).scalar() or 0) + 1
                s.add(Annotation(dataset_id=dataset, category=image.category, path=image.path, version=version,
                                 label=truth.label, defect_type=truth.defect_type, mask_path=rel_mask or None,
                                 mask_sha256=truth.mask_sha256, source="imported",
                                 source_detail={"file": Path(file_name).name, "set": name}, author=author,
                                 created_at=utcnow(), replaces_id=base, note=""))
    except BaseException:
        for rel_mask in written:
            if rel_mask:
                (artifacts.artifacts_root() / rel_mask).unlink(missing_ok=True)
        raise
    info = create_set(kind, root, name, categories, author, note=f"imported from {Path(file_name).name}", url=url)
    return ImportResult(info, len(plan), unchanged)


__all__ = [
    "ImportResult", "SavedAnnotation", "SetInfo", "DatasetImage", "annotation_truth", "changed_truths", "create_set",
    "current_annotations", "current_user", "dataset_id", "export_set", "get_set", "ground_truth_of", "gt_labels", "history",
    "import_set", "known_datasets", "list_sets", "resolve_image", "revert", "save_annotation", "set_rows", "set_truths",
    "dataset_images",
]
