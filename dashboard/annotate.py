"""What the Annotate pages show: the image queue with its filters, the canvas background (image, optional heatmap,
the mask the drawing starts from), pre-fill masks from a run's stored maps. Reads only (writes go through
`dashboard.state`); numpy/PIL/pandas plus cached loaders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from ad_core import annotations as ann
from dashboard import heatmap, state, ui
from db import annotations as dba
from db import queries
from db.models import Job

# The canvas is shown this wide (px); the image is stretched onto it, so canvas px = image px x scale.
CANVAS_WIDTH = 512
# Alpha of every stroke on the canvas (paint and eraser); `ann.compose_mask` needs >= ann.MIN_STROKE_ALPHA.
STROKE_ALPHA = 0.7
PAINT = "rgba({}, {}, {}, {})".format(*ann.PAINT_RGB, STROKE_ALPHA)
ERASE = "rgba({}, {}, {}, {})".format(*ann.ERASE_RGB, STROKE_ALPHA)
BASE_MASK_RGB = (255, 40, 40)

FILTERS = {
    "all": "All test images",
    "unlabelled": "Unlabelled (a defect without a mask, never annotated)",
    "labelled": "Labelled",
    "changed": "Changed by someone (annotated)",
    "scores": "Highest anomaly scores (run)",
    "fp": "False positives at the run's threshold",
    "fn": "False negatives at the run's threshold",
    "disagree": "Methods disagree most (all runs on this category)",
}
RUN_FILTERS = ("scores", "fp", "fn")


def dataset_options() -> list[tuple[str, str]]:
    """(kind, root) of every dataset the database knows, plus the demo dataset when it exists on disk."""
    from db import results as db_results

    choices = db_results.dataset_choices()
    out = list(zip(choices["kind"], choices["root"], strict=True)) if len(choices) else []
    for kind, root in dba.known_datasets():
        if (kind, root) not in out:
            out.append((kind, root))
    demo = state.demo_root()
    if (demo / "dataset.json").is_file() and ("demo", str(demo)) not in out:
        out.append(("demo", str(demo)))
    return out


@st.cache_data(ttl=30, show_spinner=False)
def categories(kind: str, root: str) -> list[str]:
    from ad_core.data import list_categories

    return list_categories(kind, root)


@st.cache_data(ttl=10, show_spinner=False)
def images(kind: str, root: str, category: str) -> dict[str, dba.DatasetImage]:
    return dba.dataset_images(kind, root, [category])


def runs_for(kind: str, root: str, category: str) -> list[Job]:
    """Succeeded jobs on this dataset that scored `category`, newest first."""
    jobs = queries.list_jobs(status="succeeded", limit=500)
    return [j for j in jobs if j.dataset.kind == kind and j.dataset.root == root and category in j.categories]


@dataclass
class RunImages:
    """One run's stored results of one category, by image path relative to the dataset root."""

    scores: dict[str, float]
    labels: dict[str, int]  # as the run saw them
    map_rows: dict[str, tuple[str, int]]  # path -> (map file, index)
    threshold: float | None  # image-level F1-optimal threshold of the run


def _relative(root: str, path: str) -> str:
    p, base = Path(path), Path(root)
    return p.relative_to(base).as_posix() if p.is_relative_to(base) else p.as_posix()


@st.cache_data(ttl=60, show_spinner=False)
def run_images(job_id: int, root: str, category: str) -> RunImages:
    rows = queries.image_results(job_id, category)
    scores = {_relative(root, r.path): float(r.score) for r in rows}
    labels = {_relative(root, r.path): int(r.label) for r in rows}
    maps = {_relative(root, r.path): (r.map_path, int(r.map_index)) for r in rows
            if r.map_path is not None and r.map_index is not None}
    threshold = ann.f1_optimal_threshold(np.array(list(labels.values()), bool), np.array(list(scores.values())))
    return RunImages(scores, labels, maps, threshold)


def current_truths(kind: str, root: str, category: str) -> tuple[dict[str, dba.DatasetImage], dict]:
    return images(kind, root, category), dba.current_annotations(kind, root, [category])


def queue(kind: str, root: str, category: str, show: str, run: Job | None, runs: list[Job]) -> pd.DataFrame:
    """The images to work through, in order: path, label, defect, status (dataset / vN by who), score."""
    imgs, current = current_truths(kind, root, category)
    rows = []
    for rel, image in sorted(imgs.items()):
        row = current.get(rel)
        label = row.label if row is not None else image.label
        defect = row.defect_type if row is not None else image.defect_type
        has_mask = (row.mask_sha256 is not None) if row is not None else image.mask_path is not None
        status = f"v{row.version} by {row.author}" if row is not None else "dataset"
        rows.append({"path": rel, "label": label, "defect": defect, "mask": has_mask, "status": status,
                     "annotated": row is not None, "unlabelled": row is None and label == 1 and not has_mask})
    frame = pd.DataFrame(rows, columns=["path", "label", "defect", "mask", "status", "annotated", "unlabelled"])
    frame["score"] = np.nan
    if show == "unlabelled":
        return frame[frame["unlabelled"]].reset_index(drop=True)
    if show == "labelled":
        return frame[~frame["unlabelled"]].reset_index(drop=True)
    if show == "changed":
        return frame[frame["annotated"]].reset_index(drop=True)
    if show in RUN_FILTERS:
        if run is None:
            return frame.iloc[0:0]
        info = run_images(run.id, root, category)
        frame["score"] = frame["path"].map(info.scores)
        frame = frame.dropna(subset=["score"])
        t = info.threshold
        if show == "fp":
            frame = frame[(frame["label"] == 0) & (frame["score"] >= t)] if t is not None else frame.iloc[0:0]
        elif show == "fn":
            frame = frame[(frame["label"] == 1) & (frame["score"] < t)] if t is not None else frame.iloc[0:0]
        return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    if show == "disagree":
        latest: dict[tuple, Job] = {}
        for job in runs:  # newest first: the latest run per method and preset
            latest.setdefault((job.method, job.preset), job)
        spread = ann.disagreement({j.id: run_images(j.id, root, category).scores for j in latest.values()})
        frame["score"] = frame["path"].map(spread)
        return frame.dropna(subset=["score"]).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    return frame


# --- pixels -------------------------------------------------------------------------------------------------------


@st.cache_data(max_entries=64, show_spinner=False)
def read_rgb(path: str, mtime: float) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def image_rgb(path: str) -> np.ndarray:
    return read_rgb(path, Path(path).stat().st_mtime)


def truth_pixels(image: dba.DatasetImage, row, size: tuple[int, int]) -> np.ndarray:  # noqa: ANN001 (Annotation | None)
    """The current ground truth's mask (bool [H, W])."""
    truth = dba.annotation_truth(row) if row is not None else image.dataset_truth()
    return truth.pixels(size)


@st.cache_data(max_entries=16, show_spinner=False)
def run_geometry(job_id: int) -> tuple[str, int, int]:
    job = queries.get_job(job_id)
    return job.map_geometry


def stored_map(job: Job, root: str, category: str, rel: str) -> np.ndarray | None:
    """The run's stored map of one image (in the run's frame), or None."""
    info = run_images(job.id, root, category)
    where = info.map_rows.get(rel)
    if where is None:
        return None
    loaded = ui.load_maps(where[0])
    return None if loaded is None else loaded[0][where[1]].astype(np.float32)


@st.cache_data(max_entries=16, show_spinner=False)
def pixel_threshold(job_id: int, kind: str, root: str, category: str) -> float | None:
    """The run's pixel-level F1-optimal threshold on its stored maps against the dataset's masks."""
    from ad_core.data import load_split
    from ad_core.reproduce import frame_masks

    job = queries.get_job(job_id)
    rows = sorted(queries.image_results(job_id, category), key=lambda r: r.map_index if r.map_index is not None else 0)
    if not rows or rows[0].map_path is None:
        return None
    loaded = ui.load_maps(rows[0].map_path)
    if loaded is None:
        return None
    split = load_split(kind, root, category)
    if not split.has_masks:
        return None
    by_path = {s.path: s for s in split.test}
    if any(r.path not in by_path for r in rows):
        return None
    frame, resize, crop = run_geometry(job.id)
    masks = frame_masks([by_path[r.path] for r in rows], frame, resize, crop)
    maps = loaded[0][[r.map_index for r in rows]].astype(np.float32)
    if masks.shape != maps.shape:
        return None
    return ann.f1_optimal_threshold(masks, maps)


@st.cache_data(max_entries=16, show_spinner=False)
def map_range(job_id: int, root: str, category: str) -> tuple[float, float]:
    info = run_images(job_id, root, category)
    files = {f for f, _ in info.map_rows.values()}
    values = [ui.load_maps(f) for f in files]
    arrays = [v[0] for v in values if v is not None]
    if not arrays:
        return 0.0, 1.0
    return float(min(a.min() for a in arrays)), float(max(a.max() for a in arrays))


def map_on_image(job: Job, amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    frame, resize, crop = run_geometry(job.id)
    return ann.map_on_image(amap, frame, size, resize, crop)


@st.cache_data(max_entries=16, show_spinner=False)
def heat_scale(job_id: int, root: str, category: str) -> heatmap.Scale:
    info = run_images(job_id, root, category)
    files = sorted({f for f, _ in info.map_rows.values()})
    loaded = ui.load_maps(files[0]) if files else None
    if loaded is None:
        return heatmap.Scale(0.0, 1.0, "max", False)
    order = sorted(info.map_rows.items(), key=lambda kv: kv[1][1])
    labels = np.array([info.labels[p] for p, _ in order])
    return heatmap.normal_scale(loaded[0][[i for _, (_, i) in order]], labels)


def background(rgb: np.ndarray, base: np.ndarray, opacity: float, heat: np.ndarray | None,
               scale: heatmap.Scale | None, canvas_size: tuple[int, int]) -> Image.Image:
    """What the canvas shows under the drawing: the image, the run's heatmap (optional), the starting mask
    tinted at `opacity` with its outline, resized to the canvas."""
    out = rgb
    if heat is not None and scale is not None:
        out = heatmap.overlay(out, heat, scale, 0.55)
    if base.any() and opacity > 0:
        tint = np.asarray(BASE_MASK_RGB, np.float32)
        blended = out.astype(np.float32)
        blended[base] = blended[base] * (1 - opacity) + tint * opacity
        out = blended.round().astype(np.uint8)
    big = Image.fromarray(out).resize(canvas_size, resample=Image.NEAREST if rgb.shape[1] < canvas_size[0] else Image.BILINEAR)
    if base.any():
        edge = heatmap.outline(np.asarray(Image.fromarray(base.astype(np.uint8) * 255).resize(canvas_size, Image.NEAREST)) > 127)
        arr = np.asarray(big).copy()
        arr[edge] = BASE_MASK_RGB
        big = Image.fromarray(arr)
    return big


def canvas_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    return CANVAS_WIDTH, max(1, round(CANVAS_WIDTH * h / w))


def source_text(row) -> str:  # noqa: ANN001 (Annotation)
    """Where a stored version's mask came from, in words."""
    d = row.source_detail or {}
    if row.source == "prefill":
        edited = " and edited" if d.get("edited") else ""
        return (f"pre-filled from run #{d.get('job_id')} ({d.get('method', '?')}) at threshold "
                f"{d.get('threshold', float('nan')):.4g} ({d.get('threshold_kind', 'chosen')}){edited}")
    if row.source == "imported":
        return f"imported from {d.get('file', '?')} (set {d.get('set', '?')})"
    if row.source == "revert":
        to = d.get("to_version")
        return "reverted to the dataset's ground truth" if to == 0 else f"reverted to version {to}"
    return "drawn"


def ground_truth_changes(job_id: int) -> None:
    """Run detail: for each annotation set this job was re-scored against, every metric before (the dataset's
    ground truth) and after (the set's), from the same stored maps."""
    from ad_core.analysis.ground_truth import before_after
    from ad_core.catalog import METRICS

    frame = queries.metrics_frame(job_ids=[job_id], gt_version=None)
    keys = sorted(set(frame["gt_version"]) - {ann.DEFAULT_GT_VERSION}) if len(frame) else []
    if not keys:
        st.caption("Ground truth: the dataset's own files. Re-score this run against an annotation set (Annotation "
                   "sets page, or `iad annotations rescore`) to see what a correction changes.")
        return
    labels = dba.gt_labels()
    st.markdown("**Ground-truth corrections** (re-scored from this run's stored maps)")
    for key in keys:
        table = before_after(frame, key)
        table["metric"] = table["metric"].map(lambda m: METRICS.get(m, m))
        st.caption(f"{labels.get(key, key)} vs the dataset's ground truth · metric version "
                   f"{table['metric_version'].iloc[0] if len(table) else '–'}")
        st.dataframe(table.drop(columns="metric_version"), hide_index=True, column_config={
            "before": st.column_config.NumberColumn("dataset ground truth", format="%.4f"),
            "after": st.column_config.NumberColumn(labels.get(key, key), format="%.4f"),
            "change": st.column_config.NumberColumn(format="%+.4f"),
        })
