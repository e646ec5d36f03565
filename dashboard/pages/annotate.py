"""Annotate: a queue of test images, a drawing canvas over the image (and a run's heatmap), versions with history
and revert. Every save is a new version; the dataset's files are never touched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from streamlit_drawable_canvas import st_canvas

from ad_core import annotations as ann
from ad_core.errors import DatasetError
from dashboard import annotate as an
from dashboard import state, ui
from db import annotations as dba

TOOLS = {"Brush": "freedraw", "Eraser": "freedraw", "Rectangle": "rect", "Polygon": "polygon"}
NEW_TYPE = "➕ new defect type…"
START = {"current": "Current ground truth", "empty": "Empty mask", "prefill": "Pre-fill from a run's anomaly map"}

st.set_page_config(page_title="Annotate · IAD Workbench", layout="wide")  # also when opened by its URL
st.title("Annotate")
ui.flash()
ss = st.session_state

datasets = an.dataset_options()
with st.expander("Annotate another dataset folder", expanded=not datasets):
    c1, c2, c3 = st.columns([1, 4, 1], vertical_alignment="bottom")
    new_kind = c1.selectbox("Kind", ["folder", "mvtec", "btad", "demo"], key="ann_new_kind")
    new_root = c2.text_input("Root folder", key="ann_new_root",
                             placeholder="/data/my_product (MVTec layout: <category>/train/good, <category>/test/<defect>)")
    if c3.button("Add", key="ann_add") and new_root.strip():
        try:
            ss["ann_dataset"] = state.add_annotation_dataset(new_kind, new_root.strip())
            st.rerun()
        except (DatasetError, OSError) as exc:
            st.error(str(exc))
    if st.button("Generate the demo dataset", key="ann_demo"):
        root = state.ensure_demo_dataset()
        ss["ann_dataset"] = ("demo", str(root))
        st.rerun()
if not datasets:
    st.info("No dataset yet: add a folder above, or generate the demo dataset.")
    st.stop()

c1, c2, c3, c4 = st.columns([4, 2, 3, 3])
if ss.get("ann_dataset") not in datasets:
    ss["ann_dataset"] = datasets[0]
kind, root = c1.selectbox("Dataset", datasets, format_func=lambda d: f"{d[0]} · {d[1]}", key="ann_dataset")
try:
    cats = an.categories(kind, root)
except (DatasetError, OSError) as exc:
    st.error(f"Cannot read {kind} {root}: {exc}")
    st.stop()
if not cats:
    st.warning(f"No categories under {root}.")
    st.stop()
category = c2.selectbox("Category", cats, key="ann_category")
show = c3.selectbox("Show", list(an.FILTERS), format_func=an.FILTERS.get, key="ann_filter")
runs = an.runs_for(kind, root, category)
run_ids = [j.id for j in runs]
by_id = {j.id: j for j in runs}
run_id = c4.selectbox("Run (scores, heatmap, pre-fill)", [None, *run_ids],
                      format_func=lambda i: "none" if i is None else ui.job_label(by_id[i]), key="ann_run",
                      index=1 if run_ids else 0)
run = by_id.get(run_id)
if show in an.RUN_FILTERS and run is None:
    st.info("This filter ranks images by a run's scores: pick a run (none has finished on this category yet).")
    st.stop()

try:
    q = an.queue(kind, root, category, show, run, runs)
except (DatasetError, OSError) as exc:
    st.error(str(exc))
    st.stop()
if q.empty:
    st.info(f"No image matches “{an.FILTERS[show]}”.")
    st.stop()
paths = list(q["path"])
if ss.get("ann_path") not in paths:
    ss["ann_path"] = paths[0]


def _step(delta: int) -> None:
    i = paths.index(ss["ann_path"]) if ss.get("ann_path") in paths else 0
    ss["ann_path"] = paths[(i + delta) % len(paths)]


info_by_path = q.set_index("path")
n1, n2, n3 = st.columns([1.3, 8, 1.3], vertical_alignment="bottom")
n1.button("Previous", on_click=_step, args=(-1,), shortcut="Alt+P", key="ann_prev", help="Alt+P",
          icon=":material/arrow_back:")
n3.button("Next", on_click=_step, args=(1,), shortcut="Alt+N", key="ann_next", help="Alt+N",
          icon=":material/arrow_forward:")


def _label(p: str) -> str:
    r = info_by_path.loc[p]
    score = "" if pd.isna(r["score"]) else f" · score {r['score']:.4g}"
    return f"{paths.index(p) + 1}/{len(paths)} · {p} · {r['defect']} · {r['status']}{score}"


rel = n2.selectbox("Image", paths, format_func=_label, key="ann_path")

images, current = an.current_truths(kind, root, category)
image = images[rel]
row = current.get(rel)
rgb = an.image_rgb(image.full_path)
size = (rgb.shape[1], rgb.shape[0])
# The version this editor started from stays fixed while you draw, even when someone else saves meanwhile.
bases = ss.setdefault("ann_bases", {})
key_base = (kind, root, rel)
if key_base not in bases:
    bases[key_base] = row.id if row is not None else None
base_id = bases[key_base]
history = dba.history(kind, root, rel)
base_row = next((r for r in history if r.id == base_id), None)

canvas_col, side = st.columns([3, 2])
with side:
    tool = st.radio("Tool", list(TOOLS), horizontal=True, key="ann_tool")
    brush = st.slider("Brush size (canvas px)", 2, 80, 16, key="ann_brush", disabled=tool in ("Rectangle", "Polygon"))
    opacity = st.slider("Mask opacity", 0.0, 1.0, 0.45, 0.05, key="ann_opacity")
    start = st.radio("Start from", list(START), format_func=START.get, key="ann_start", horizontal=False,
                     help="The mask the drawing starts from; strokes add (red) or erase (cyan) on top of it.")
    threshold = None
    threshold_kind = ""
    if start == "prefill":
        if run is None:
            st.warning("Pick a run above to pre-fill from its anomaly map.")
        else:
            lo, hi = an.map_range(run.id, root, category)
            f1 = an.pixel_threshold(run.id, kind, root, category)
            mode = st.radio("Threshold", ["F1-optimal", "chosen"] if f1 is not None else ["chosen"], horizontal=True,
                            key="ann_thr_mode",
                            help="F1-optimal: the threshold with the best pixel F1 of this run against the dataset's "
                                 "masks.")
            if mode == "F1-optimal":
                threshold, threshold_kind = float(f1), "pixel F1-optimal"
                st.caption(f"threshold {threshold:.4g}")
            else:
                default = float(f1) if f1 is not None else lo + 0.75 * (hi - lo)
                threshold = float(st.number_input("Threshold", value=default, min_value=lo, max_value=hi,
                                                  format="%.4g", key=f"ann_thr_{run.id}"))
                threshold_kind = "chosen"
    show_heat = st.toggle("Run's heatmap under the drawing", value=False, key="ann_heat", disabled=run is None)

    truth_row = base_row if base_row is not None else None
    label_now = truth_row.label if truth_row is not None else image.label
    defect_now = truth_row.defect_type if truth_row is not None else image.defect_type
    label = st.radio("Image label", ["good", "defect"], index=label_now, horizontal=True, key=f"ann_label_{rel}")
    defect_type = "good"
    if label == "defect":
        types = sorted({i.defect_type for i in images.values()} | {r.defect_type for r in current.values()} - {"good"})
        types = [t for t in types if t != "good"]
        choice = st.selectbox("Defect type", [*types, NEW_TYPE],
                              index=types.index(defect_now) if defect_now in types else 0, key=f"ann_type_{rel}")
        defect_type = st.text_input("New defect type", key=f"ann_newtype_{rel}") if choice == NEW_TYPE else choice
    note = st.text_input("Note (optional)", key=f"ann_note_{rel}")

# The mask the drawing starts from.
amap = an.stored_map(run, root, category, rel) if run is not None else None
if start == "current":
    base_mask = an.truth_pixels(image, base_row, size)
    origin = (f"current ground truth: version {base_row.version} by {base_row.author} ({an.source_text(base_row)})"
              if base_row is not None else "current ground truth: the dataset's files")
elif start == "prefill" and amap is not None and threshold is not None:
    frame, resize, crop = an.run_geometry(run.id)
    base_mask = ann.prefill_mask(amap, threshold, frame, size, resize, crop)
    origin = f"pre-filled from run #{run.id} ({run.method}) at threshold {threshold:.4g} ({threshold_kind})"
else:
    base_mask = np.zeros((size[1], size[0]), bool)
    origin = "empty mask"

heat = an.map_on_image(run, amap, size) if (show_heat and amap is not None) else None
scale = an.heat_scale(run.id, root, category) if heat is not None else None
cw, ch = an.canvas_size(size)
bg = an.background(rgb, base_mask, opacity, heat, scale, (cw, ch))
nonce = ss.setdefault("ann_nonce", 0)
canvas_key = f"ann_canvas|{kind}|{root}|{rel}|{base_id}|{start}|{run_id if start == 'prefill' else ''}|{threshold}|{nonce}"
erase = tool == "Eraser"
with canvas_col:
    result = st_canvas(
        fill_color=an.PAINT, stroke_width=1 if tool in ("Rectangle", "Polygon") else brush,
        stroke_color=an.ERASE if erase else an.PAINT, background_image=bg, update_streamlit=True,
        height=ch, width=cw, drawing_mode=TOOLS[tool], return_image_data=True, key=canvas_key,
    )
    st.caption(f"**Mask source:** {origin}. Red strokes add to the mask, cyan strokes erase; undo / redo / reset "
               "are in the canvas toolbar (hover the canvas). Polygon: click the vertices, then the first one again.")

drawing = result.image_data if result is not None else None
drawn = drawing is not None and bool((np.asarray(drawing)[..., 3] > 0).any())
try:
    mask = ann.compose_mask(base_mask, drawing, size, an.STROKE_ALPHA)
except ann.AnnotationError as exc:
    st.error(str(exc))
    st.stop()
# The save / revert confirmation stays until the next stroke or another image. A one-shot flash was lost now and
# then: the fresh canvas reports its first value when it mounts, and the rerun that causes cleared the message.
# It shows beside the canvas, never above it: a canvas that moves when the message goes moves under the pointer.
confirmation = ss.get("ann_confirmation")
if confirmation is not None and (confirmation["image"] != key_base or confirmation["nonce"] != nonce or drawn):
    del ss["ann_confirmation"]
    confirmation = None
latest = history[-1] if history else None
if latest is not None and latest.id != base_id:
    st.warning(f"{latest.author} saved version {latest.version} of this image while you were editing "
               f"(you started from {'version ' + str(base_row.version) if base_row else 'the dataset'}). Saving "
               f"makes yours version {latest.version + 1} and current; theirs stays in the history.")

with side:
    st.caption(f"{int(mask.sum())} mask pixels of {mask.size} ({100 * mask.mean():.2f} %)"
               + (" · drawn on" if drawn else ""))
    if st.button("Save", type="primary", shortcut="Alt+S", help="Alt+S", key="ann_save", icon=":material/save:"):
        source, detail = "drawn", {}
        if start == "prefill" and run is not None and threshold is not None:
            source = "prefill"
            detail = {"job_id": run.id, "method": run.method, "threshold": threshold, "threshold_kind": threshold_kind,
                      "edited": drawn}
        try:
            saved = state.save_annotation(kind, root, rel, 1 if label == "defect" else 0, defect_type,
                                          mask if mask.any() else None, source, detail, base_id, note)
        except ann.AnnotationError as exc:
            st.error(f"Not saved: {exc}")
        else:
            message = f"Saved version {saved.version} of {rel} (current)."
            if saved.overtaken:
                others = ", ".join(f"version {v} by {a}" for v, a in saved.overtaken)
                message += f" Meanwhile {others} was saved; it stays in the history."
            ss["ann_confirmation"] = {"image": key_base, "nonce": nonce + 1, "text": message}
            bases[key_base] = saved.id
            ss["ann_nonce"] = nonce + 1
            an.images.clear()
            st.rerun()
    if confirmation is not None:
        st.success(confirmation["text"])

st.subheader("History")
if not history:
    st.caption("Never annotated: the ground truth is the dataset's own files.")
else:
    table = pd.DataFrame([{
        "version": f"v{r.version}" + (" (current)" if r is history[-1] else ""),
        "saved (UTC)": r.created_at.strftime("%Y-%m-%d %H:%M:%S"), "by": r.author,
        "label": "defect" if r.label else "good", "defect type": r.defect_type,
        "mask": "–" if r.mask_path is None else "yes", "source": an.source_text(r),
        "replaced": next((f"v{o.version}" for o in history if o.id == r.replaces_id), "dataset"), "note": r.note,
    } for r in reversed(history)])
    st.table(table.set_index("version"))
    h1, h2 = st.columns([2, 5], vertical_alignment="bottom")
    versions = [r.version for r in history][::-1] + [0]
    target = h1.selectbox("Revert to", versions, key=f"ann_revert_{rel}",
                          format_func=lambda v: "the dataset's ground truth" if v == 0 else f"version {v}")
    if h2.button("Revert", key="ann_revert_btn"):
        try:
            saved = state.revert_annotation(kind, root, rel, int(target), base_id)
        except ann.AnnotationError as exc:
            st.error(str(exc))
        else:
            text = f"Reverted: version {saved.version} of {rel} is a copy of " + (
                "the dataset's ground truth." if target == 0 else f"version {target}.")
            ss["ann_confirmation"] = {"image": key_base, "nonce": nonce + 1, "text": text}
            bases[key_base] = saved.id
            ss["ann_nonce"] = nonce + 1
            st.rerun()
