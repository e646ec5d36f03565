"""Run detail: per-class metrics, per-image scores, heatmap viewer (normal-anchored colours), provenance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from ad_core.analysis import leaderboard as lb
from ad_core.catalog import METRICS
from ad_core.frame import EvalFrame, frame_identity
from ad_core.splits import split_identity
from dashboard import annotate, evidence, heatmap, ui
from db import queries
from db import results as db_results

GT_COLOR = (0, 255, 0)
PRED_COLOR = (0, 200, 255)
GALLERY_SIZE = 8

st.title("Run detail")

jobs = ui.recent_jobs("succeeded")
if not jobs:
    st.info("No finished job yet. Launch one on the **Launch** page (or the demo from the Leaderboard page).")
    st.stop()
by_id = {j.id: j for j in jobs}
wanted = st.query_params.get("job")
if wanted is not None and wanted.isdigit() and int(wanted) not in by_id:
    extra = queries.get_job(int(wanted))
    if extra is not None and extra.status == "succeeded":
        by_id[extra.id] = extra
ids = list(by_id)
index = ids.index(int(wanted)) if wanted is not None and wanted.isdigit() and int(wanted) in by_id else 0
job_id = st.selectbox("Job", ids, index=index, format_func=lambda i: ui.job_label(by_id[i]), key="detail_job")
st.query_params["job"] = str(job_id)  # a shareable link to this run
job = by_id[job_id]
record = queries.run_record(job_id)
config = (record.config if record else None) or job.config
_, split_label, split_protocol = split_identity(job.split)
frame_key, _, frame_protocol = frame_identity(job.frame)

if record is not None and record.random_weights:
    st.warning(f"{lb.RANDOM_MARK}: this run used a randomly initialised backbone ({record.weights_source}); "
               "its numbers are not comparable with pretrained runs.")
if record is not None:
    evidence.bundle_button(job_id)


@st.cache_resource(max_entries=32, show_spinner=False)
def normal_scale(map_path: str, labels: tuple[int, ...], anchor: str) -> heatmap.Scale:
    maps, _ = ui.load_maps(map_path)
    return heatmap.normal_scale(maps, np.asarray(labels), anchor)


@st.cache_resource(max_entries=256, show_spinner=False)
def display_image(path: str, resize: int, crop: int, mask_path: str | None,
                  frame_size: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """The image (and mask) in the geometry of its stored maps: the full image at `frame_size` px (a full-image
    evaluation frame), or, for the native frame (`frame_size` 0), as the model saw it (resize + centre crop)."""
    from ad_core.data import Preprocess, read_image, read_mask
    from ad_core.frame import image_to_frame, mask_to_frame

    img = read_image(path)
    full_mask = read_mask(mask_path, img.size) if mask_path else None
    if frame_size:
        return image_to_frame(img, frame_size), None if full_mask is None else mask_to_frame(full_mask, frame_size)
    prep = Preprocess(resize=resize, crop=crop)
    mask = None if full_mask is None else prep.mask(full_mask)[0].numpy() > 0.5
    return prep.unnormalize(prep.image(img)), mask


def geometry(run_job) -> tuple[int, int, int]:  # noqa: ANN001
    """(resize, crop, frame size or 0) of a job's stored maps (a frame this version does not know: native)."""
    try:
        frame = EvalFrame.parse(frame_identity(run_job.frame)[0])
    except ValueError:
        frame = EvalFrame.parse("native")
    cfg = run_job.config
    return int(cfg.get("resize", 256)), int(cfg.get("crop", 224)), frame.size if frame.is_full else 0


def render_overlay(run_job, category: str, path: str, opacity: float, anchor: str, show_gt: bool,  # noqa: ANN001
                   show_pred: bool) -> tuple[np.ndarray, dict] | None:
    """Overlay of `run_job`'s map for image `path`, or None when the map or image is unavailable."""
    rows = queries.image_results(run_job.id, category)
    row = next((r for r in rows if r.path == path), None)
    if row is None or row.map_path is None or row.map_index is None:
        return None
    loaded = ui.load_maps(row.map_path)
    if loaded is None:
        return None
    maps, _ = loaded
    scale = normal_scale(row.map_path, tuple(r.label for r in rows), anchor)
    cfg = run_job.config
    masks = ui.mask_paths(run_job.dataset.kind, run_job.dataset.root, category)
    try:
        image, mask = display_image(path, *geometry(run_job)[:2], masks.get(path), geometry(run_job)[2])
    except Exception:  # the dataset moved or the file is unreadable: show the map alone
        image, mask = np.zeros((*maps.shape[1:], 3), dtype=np.uint8), None
    amap = maps[row.map_index].astype(np.float32)
    out = heatmap.overlay(image, amap, scale, opacity)
    if show_pred:
        out = heatmap.draw(out, heatmap.outline(heatmap.above_threshold(amap, scale, image.shape[:2])), PRED_COLOR)
    if show_gt and mask is not None:
        out = heatmap.draw(out, heatmap.outline(mask), GT_COLOR)
    # Rank among the good images: how many normals score at least as high.
    normals = np.array([r.score for r in rows if r.label == 0])
    info = {
        "method": f"{run_job.method}{f' ({run_job.preset})' if run_job.preset else ''}", "seed": run_job.seed,
        "score": row.score, "label": "anomalous" if row.label else "good", "defect": row.defect_type,
        "normals_above": int((normals >= row.score).sum()), "normals": len(normals), "scale": scale,
        "random": " ⚠ random weights" if cfg.get("weights") == "random" else "",
    }
    return out, info


def fmt_score(value: float) -> str:
    """Four significant digits in fixed-point notation, never scientific: 1.848, 12346, 0.0001234."""
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    return f"{value:.{min(10, max(0, 3 - math.floor(math.log10(abs(value)))))}f}"


def label_text(label: str, defect: str | None) -> str:
    """'anomalous (scratch)', and just 'good' for a good image (whose defect type is 'good' as well)."""
    return f"{label} ({defect})" if defect and defect != label else label


def short_caption(info: dict) -> str:
    return f"{info['method']}{info['random']} · seed {info['seed']} · score {fmt_score(info['score'])}"


tab_images, tab_metrics, tab_compare, tab_prov = st.tabs(["Images", "Metrics", "Compare", "Provenance"])

with tab_compare:
    evidence.comparison_section(job, list(by_id.values()))

with tab_metrics:
    frame = evidence.one_metric_version(queries.metrics_frame(job_ids=[job_id]), key="detail_metric_version")
    if frame.empty:
        st.info("This job stored no metrics.")
    else:
        table = frame.pivot_table(index="category", columns="metric", values="value", aggfunc="first", dropna=False)
        table = table.reindex(columns=[m for m in METRICS if m in table.columns])
        table.columns = [METRICS[m] for m in table.columns]
        if len(table) > 1:
            table.loc["mean"] = table.mean()
        st.dataframe(table.style.format("{:.4f}", na_rep="–"))
        st.caption(f"Metric version {frame['metric_version'].iloc[0]}; evaluation frame {frame_key} "
                   f"({frame_protocol}). Pixel metrics are empty for categories without ground-truth masks.")
        annotate.ground_truth_changes(job_id)
    runs = queries.category_runs(job_id)
    timings = pd.DataFrame([{
        "category": r.category, "fit s": r.fit_s, "predict s": r.predict_s, "images/s": r.images_per_s,
        "peak RSS MB": r.peak_rss_mb, "peak GPU MB": r.peak_gpu_mb, "test images": r.n_images,
        "notes": "; ".join(r.notes or []),
    } for r in runs])
    if len(timings) and timings["peak GPU MB"].isna().all():  # a CPU run: no GPU memory to report
        timings = timings.drop(columns="peak GPU MB")
        st.caption("CPU run: no GPU memory to report.")
    st.dataframe(timings, hide_index=True, column_config={
        name: st.column_config.NumberColumn(format=fmt)
        for name, fmt in {"fit s": "%.1f", "predict s": "%.1f", "images/s": "%.1f", "peak RSS MB": "%.0f",
                          "peak GPU MB": "%.0f"}.items()
    })

with tab_images:
    category = st.selectbox("Category", job.categories, key="detail_category")
    rows = queries.image_results(job_id, category)
    if not rows:
        st.info("No per-image results stored for this category.")
    else:
        root = Path(job.dataset.root)
        table = pd.DataFrame([{
            "image": str(Path(r.path).relative_to(root)) if Path(r.path).is_relative_to(root) else r.path,
            "label": "anomalous" if r.label else "good", "defect type": r.defect_type, "score": r.score,
            "path": r.path,
        } for r in rows]).sort_values("score", ascending=False, ignore_index=True)
        st.dataframe(table.drop(columns="path"), hide_index=True, height=240, column_config={
            "score": st.column_config.NumberColumn(format="%.4f"),
        })
        paths = list(table["path"])
        names = dict(zip(table["path"], table["image"], strict=True))
        scores = dict(zip(table["path"], table["score"], strict=True))
        path = st.selectbox("Image (by score)", paths, key="detail_image",
                            format_func=lambda p: f"{scores[p]:.4f} · {names[p]}")
        c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
        opacity = c1.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="detail_opacity")
        anchor = c2.radio("Colour threshold", heatmap.ANCHORS, horizontal=True, key="detail_anchor",
                          format_func={"max": "max of good maps", "p99": "99th pct of good maps"}.get,
                          help="Colours are anchored to the anomaly maps of this run's good test images, not "
                               "stretched per image: a good image stays blue.")
        show_gt = c3.checkbox("Ground-truth contour", value=True, key="detail_gt")
        show_pred = c4.checkbox("Above-threshold contour", value=False, key="detail_pred")

        rendered = render_overlay(job, category, path, opacity, anchor, show_gt, show_pred)
        if rendered is None:
            st.warning("The anomaly map of this image is not in the artifact store (deleted or on another host).")
        else:
            masks = ui.mask_paths(job.dataset.kind, job.dataset.root, category)
            left, middle, right = st.columns([2, 2, 1])
            try:
                image, mask = display_image(path, *geometry(job)[:2], masks.get(path), geometry(job)[2])
                if show_gt and mask is not None:
                    image = heatmap.draw(image, heatmap.outline(mask), GT_COLOR)
                left.image(image, caption=f"{names[path]} (ground truth in green)", width="stretch")
            except Exception as exc:
                left.warning(f"Cannot read the image: {exc}")
            overlay, info = rendered
            middle.image(overlay, caption=f"anomaly map, {short_caption(info)}", width="stretch")
            scale = info["scale"]
            right.markdown(
                f"**{label_text(info['label'], info['defect'])}**  \n"
                f"score **{fmt_score(info['score'])}**  \n"
                f"{info['normals_above']} of {info['normals']} good images score as high  \n"
                f"colour threshold **{fmt_score(scale.threshold)}** ({scale.anchor} of the good images' maps"
                f"{'' if scale.from_normals else '; no good image: all images'})"
            )
            right.image(heatmap.colorbar(), caption="median of good maps → threshold (tick) → saturation",
                        width="stretch")
        # The same image under other methods/seeds that scored it.
        others = [i for i in db_results.jobs_with_image(category, path) if i != job_id]
        if others:
            other_jobs = {j.id: j for j in queries.list_jobs(job_ids=others, limit=None)}
            # Default: one run per other method (same seed when there is one), then other seeds.
            ranked = sorted(other_jobs.values(), key=lambda j: (j.method == job.method, j.seed != job.seed, j.id))
            default = list({j.method: j.id for j in reversed(ranked)}.values())[::-1][:3] or [ranked[0].id]
            picked = st.multiselect("Compare side by side with", list(other_jobs), default=default,
                                    format_func=lambda i: ui.job_label(other_jobs[i]), key="detail_compare")
            if picked:
                cols = st.columns(4)  # fixed width: panels stay thumbnail-sized
                panels = [(job, rendered)] + [
                    (other_jobs[i], render_overlay(other_jobs[i], category, path, opacity, anchor, show_gt, show_pred))
                    for i in picked
                ]
                for k, (panel_job, panel) in enumerate(panels):
                    col = cols[k % len(cols)]
                    if panel is None:
                        col.warning(f"#{panel_job.id}: map not available")
                    else:
                        col.image(panel[0], caption=f"#{panel_job.id} · {short_caption(panel[1])}",
                                  width="stretch")

        with st.expander("Most anomalous images (thumbnails)", expanded=False):
            top = paths[:GALLERY_SIZE]
            thumbs = [render_overlay(job, category, p, opacity, anchor, show_gt, False) for p in top]
            shown = [(t[0], f"{scores[p]:.3f} · {names[p]}") for p, t in zip(top, thumbs, strict=True) if t is not None]
            if shown:
                st.image([s[0] for s in shown], caption=[s[1] for s in shown], width=160)

with tab_prov:
    if record is None:
        st.info("No provenance record stored for this job.")
    else:
        st.table(pd.DataFrame({"value": {
            "method": job.method, "preset": job.preset or "", "dataset": f"{job.dataset.kind} · {job.dataset.root}",
            "categories": ", ".join(job.categories), "seed": record.seed, "weights source": record.weights_source,
            "random weights": "yes" if record.random_weights else "no", "metric version": record.metric_version,
            "git commit": record.git_commit, "device": record.device, "host": record.host or "",
            "worker": job.worker_host or "", "group": job.group_id or "", "launched by": job.launched_by,
            "config hash": lb.config_hash(config), "split": split_label, "split protocol": split_protocol,
            "evaluation frame": f"{frame_key} ({frame_protocol})",
            "torch threads": record.threads if record.threads is not None else "",
        }}).astype(str))
        runs = queries.category_runs(job.id)
        splits = {s.id: s for s in queries.list_splits(job.dataset_id)}
        st.markdown("**Splits** (content hash of the files each class was trained and tested on)")
        st.dataframe(pd.DataFrame([{
            "category": r.category, "content hash": splits[r.split_id].content_hash[:16] if r.split_id else "",
            "train": splits[r.split_id].n_train if r.split_id else None,
            "labelled anomalies in train": splits[r.split_id].n_train_anomalous if r.split_id else None,
            "test": splits[r.split_id].n_test if r.split_id else None, "fit unit": r.fit_unit,
        } for r in runs]), hide_index=True)
        units = queries.fit_units(job.id)
        if units:
            st.markdown("**Fits** (one model per unit; time and memory recorded once)")
            st.dataframe(pd.DataFrame([{
                "unit": u.unit_index, "categories": ", ".join(u.categories), "fit s": u.fit_s,
                "peak RSS MB": u.peak_rss_mb, "weights": u.weights_source,
            } for u in units]), hide_index=True)
        c1, c2 = st.columns(2)
        c1.markdown("**Config**")
        c1.json(config)
        c2.markdown("**Packages**")
        c2.json(record.packages)
        details = {u.unit_index: u.details for u in units if u.details}
        if details:
            st.markdown("**What the method reported about its fit** (`describe()`)")
            st.json(details)
