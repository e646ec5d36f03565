"""Annotation sets: freeze a dataset's current annotations as a named ground-truth version, download it in MVTec AD
layout, import one, and re-score finished runs against it (from their stored maps, on a worker)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ad_core import annotations as ann
from ad_core.errors import DatasetError
from dashboard import annotate as an
from dashboard import state, ui
from db import annotations as dba

st.title("Annotation sets")
ui.flash()
ss = st.session_state

datasets = an.dataset_options()
if not datasets:
    st.info("No dataset yet: open the **Annotate** page to add one.")
    st.page_link(ui.PAGES["annotate"], label="Open the Annotate page", icon=":material/draw:")
    st.stop()
if ss.get("ann_dataset") not in datasets:
    ss["ann_dataset"] = datasets[0]
kind, root = st.selectbox("Dataset", datasets, format_func=lambda d: f"{d[0]} · {d[1]}", key="ann_dataset")

current = dba.current_annotations(kind, root)
sets = dba.list_sets(kind, root)

st.subheader("Make a set from the current annotations")
try:
    cats = an.categories(kind, root)
except (DatasetError, OSError) as exc:
    st.error(str(exc))
    st.stop()
annotated = pd.Series([r.category for r in current.values()]).value_counts() if current else pd.Series(dtype=int)
st.caption(f"{len(current)} annotated image(s)" + (": " + ", ".join(f"{c} {n}" for c, n in annotated.items())
                                                  if len(annotated) else "."))
with st.form("ann_make_set"):
    c1, c2 = st.columns([2, 3])
    name = c1.text_input("Name", placeholder="e.g. bottle-fixes-2026-12")
    chosen = c2.multiselect("Categories", cats, default=cats)
    note = st.text_input("Note (optional)")
    if st.form_submit_button("Make the set", type="primary"):
        try:
            info = state.create_annotation_set(kind, root, name, chosen, note)
        except (ann.AnnotationError, DatasetError) as exc:
            st.error(str(exc))
        else:
            ss["flash"] = (f"Annotation set '{info.name}' made: {info.n_changed} image(s) differ from the dataset; "
                           f"ground-truth version {info.gt_version}.")
            st.rerun()

st.subheader("Sets")
if not sets:
    st.caption("No set yet.")
else:
    st.dataframe(pd.DataFrame([{
        "id": s.id, "name": s.name, "ground-truth version": s.gt_version, "changed images": s.n_changed,
        "categories": ", ".join(s.categories), "by": s.created_by, "made": s.created_at.strftime("%Y-%m-%d %H:%M"),
        "note": s.note} for s in sets]), hide_index=True, width="stretch")
    by_id = {s.id: s for s in sets}
    c1, c2, c3 = st.columns([3, 2, 2], vertical_alignment="bottom")
    pick = c1.selectbox("Set", list(by_id), format_func=lambda i: f"{by_id[i].name} ({by_id[i].gt_version})",
                        key="ann_set_pick")
    with_train = c2.toggle("Include training images", value=True, key="ann_set_train",
                           help="The zip then loads as a complete MVTec-layout dataset (--dataset folder).")
    if c3.button("Prepare the zip", key="ann_set_zip"):
        try:
            ss["ann_set_zip_data"] = (pick, with_train, state.export_annotation_set(pick, with_train))
        except (ann.AnnotationError, DatasetError) as exc:
            st.error(str(exc))
    ready = ss.get("ann_set_zip_data")
    if ready and ready[0] == pick and ready[1] == with_train:
        st.download_button(f"Download {by_id[pick].name}.zip", ready[2], file_name=f"{by_id[pick].name}.zip",
                           mime="application/zip", key="ann_set_download", icon=":material/download:")
    st.caption(f"Command line: `iad annotations export --root {root} --set {by_id[pick].name} --out "
               f"{by_id[pick].name}.zip`")

st.subheader("Import a set")
with st.form("ann_import"):
    upload = st.file_uploader("Annotation set (zip in MVTec AD layout)", type=["zip"])
    new_name = st.text_input("Name (default: the name in the zip's manifest)")
    if st.form_submit_button("Import") and upload is not None:
        try:
            result = state.import_annotation_set(kind, root, upload.getvalue(), upload.name, new_name)
        except (ann.AnnotationError, DatasetError) as exc:
            st.error(f"Nothing imported: {exc}")
        else:
            ss["flash"] = (f"Imported '{result.set.name}': {result.new_versions} new version(s), {result.unchanged} "
                           f"image(s) already as in the zip; ground-truth version {result.set.gt_version}.")
            st.rerun()
