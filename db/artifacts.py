"""Anomaly-map artifacts: one compressed float32 `.npz` per job x category under `IAD_ARTIFACTS`.

Each file holds `maps` (float32 [N, H, W]: PatchCore-style maps are squared distances that exceed float16's
65504, and re-scoring from stored maps must give the metrics computed in memory; files written by
earlier versions hold float16 and still load) and `paths` (the N image paths, in map order). The database
stores paths *relative* to the artifacts root, so hosts that mount shared storage (NFS, an S3 mount) at
different places still find the files. Annotation masks (`db.annotations`) live under `annotations/`, one
PNG per saved version, written with `write_atomic`. Files are written to a temporary name and renamed into place, so
a reader never sees half a file. Layout: `maps/job-<id>/a<attempt>/<category>.npz` (one folder per attempt,
so a worker that lost its lease can never overwrite the files of the attempt that replaced it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from ad_core.home import app_home


def artifacts_root() -> Path:
    """`IAD_ARTIFACTS`, default `$IAD_HOME/artifacts`."""
    root = os.environ.get("IAD_ARTIFACTS")
    return Path(root).expanduser() if root else app_home() / "artifacts"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "_"


def job_dir(job_id: int, attempt: int | None = None) -> str:
    """Relative folder of a job's maps (of one attempt when given)."""
    base = f"maps/job-{job_id:06d}"
    return base if attempt is None else f"{base}/a{attempt}"


class ArtifactStoreFull(OSError):
    """The artifact store ran out of space (ENOSPC) or quota (EDQUOT) while a file was written."""


@contextlib.contextmanager
def _full_store_is_clear(root: Path, what: str) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT into ArtifactStoreFull, naming the store and the fix (other errors unchanged)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        full = ArtifactStoreFull(f"the artifact store {root} (IAD_ARTIFACTS) is full while writing {what}: free "
                                 "space there or point IAD_ARTIFACTS at a larger disk; nothing of this job was kept")
        full.errno = exc.errno
        raise full from exc


def _write_atomically(target: Path, root: Path, what: str, write: Callable[[IO[bytes]], object]) -> None:
    """`write` into a temporary file next to `target`, fsync, rename: readers see the whole file or none, and
    a failed or interrupted write leaves no temporary file behind."""
    with _full_store_is_clear(root, what):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def save_maps(
    job_id: int, attempt: int, category: str, maps: np.ndarray, paths: Sequence[str], root: Path | None = None
) -> str:
    """Write one job x category map file atomically; return its path relative to the artifacts root."""
    if len(maps) != len(paths):
        raise ValueError(f"{len(maps)} maps but {len(paths)} paths")
    root = root or artifacts_root()
    rel = f"{job_dir(job_id, attempt)}/{_safe(category)}.npz"
    target = root / rel
    _write_atomically(target, root, f"the maps of {category}", lambda handle: np.savez_compressed(
        handle, maps=np.asarray(maps, dtype=np.float32), paths=np.asarray(list(paths), dtype=str)))
    return rel


def write_atomic(rel_path: str, data: bytes, root: Path | None = None) -> Path:
    """Write `data` to `rel_path` under the artifacts root atomically (temporary name, fsync, rename): a
    reader sees the whole file or none. Returns the absolute path."""
    target = (root or artifacts_root()) / rel_path
    _write_atomically(target, root or artifacts_root(), rel_path, lambda handle: handle.write(data))
    return target


def annotation_mask_path(dataset_id: int, image_path: str) -> str:
    """A new, unique relative path for one saved mask of one image (`annotations/ds-<id>/<image>/<uuid>.png`).
    Mask files are never overwritten: every version of an annotation has its own."""
    import uuid

    return f"annotations/ds-{dataset_id:06d}/{_safe(image_path)}/{uuid.uuid4().hex}.png"


def load_map_file(rel_path: str, root: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """All maps ([N, H, W]; float32, or float16 in files of earlier versions) and image paths of one file."""
    with np.load((root or artifacts_root()) / rel_path, allow_pickle=False) as data:
        return data["maps"], [str(p) for p in data["paths"]]


def load_maps(rel_path: str, indices: Sequence[int] | None = None, root: Path | None = None) -> np.ndarray:
    """Maps of one stored file as float32 [len(indices), H, W] (all of them when `indices` is None)."""
    maps, _ = load_map_file(rel_path, root)
    if indices is not None:
        maps = maps[np.asarray(indices, dtype=np.int64)]
    return maps.astype(np.float32)


def delete_job_maps(job_id: int, attempt: int | None = None, root: Path | None = None) -> bool:
    """Remove the maps of a job (or of one attempt). Returns whether anything was there."""
    folder = (root or artifacts_root()) / job_dir(job_id, attempt)
    if not folder.exists():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    parent = folder.parent
    if attempt is not None and parent.exists() and not any(parent.iterdir()):
        parent.rmdir()
    return True
