"""Launch: methods x dataset x categories x seeds x preset -> one job per cell, validated before submit."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ad_core.catalog import DATASET_KINDS
from ad_core.config_text import parse_overrides
from ad_core.data import DatasetError, list_categories
from ad_core.frame import DEFAULT_FRAME, NATIVE, EvalFrame
from ad_core.methods import ConfigError, available_methods, get_method
from ad_core.splits import SplitSpec
from dashboard import state, ui

st.title("Launch a comparison")
ui.flash()
if state.database_is_empty():
    ui.first_run_box()

methods_available = available_methods()
presets = sorted({"paper", *(p for m in methods_available for p in get_method(m).Config.PRESETS)})

c1, c2 = st.columns(2)
baseline = ["patchcore"] if "patchcore" in methods_available else methods_available[:1]
methods = c1.multiselect("Methods", methods_available, default=baseline, key="launch_methods",
                         format_func=lambda m: f"{m} ({get_method(m).learning_type.replace('_', '-')})")
preset = c2.selectbox("Preset", presets, index=presets.index("fast") if "fast" in presets else 0, key="launch_preset",
                      help="fast: CPU demos; paper: the papers' settings (GPU workers)")

c1, c2 = st.columns([1, 3])
kind = c1.selectbox("Dataset kind", DATASET_KINDS, index=DATASET_KINDS.index("demo"), key="launch_kind")
default_root = str(state.demo_root()) if kind == "demo" else ""
root = c2.text_input("Dataset root", value=default_root, key=f"launch_root_{kind}",
                     placeholder="/data/mvtec_ad (the folder holding the categories)")

if kind == "demo":
    def _use_multiclass_demo() -> None:
        st.session_state["launch_root_demo"] = str(state.ensure_multiclass_demo())

    c2.button("Use the 10-class demo (for long-tailed and unified runs)", on_click=_use_multiclass_demo,
              key="launch_multiclass_demo", help="Generates it on first use (a few seconds).")

categories_available: list[str] = []
if kind == "demo" and not Path(root).expanduser().is_dir():
    st.info("The demo dataset has not been generated yet.")
    if st.button("Generate the demo dataset", key="launch_make_demo"):
        with st.spinner("Generating..."):
            state.ensure_demo_dataset()
        st.rerun()
elif root:
    try:
        categories_available = list_categories(kind, root)
    except (DatasetError, OSError) as exc:
        st.error(str(exc))

# Keyed by the root: a newly chosen root starts with all of its categories selected.
categories = st.multiselect("Categories", categories_available, default=categories_available,
                            key=f"launch_categories_{kind}_{root}")

c1, c2, c3 = st.columns([1, 1, 2])
split_kind = c1.selectbox("Split", ["standard", "few_shot", "long_tail"], key="launch_split",
                          help="standard: the dataset as downloaded. few_shot: DRA's protocol, k labelled anomalies "
                               "per class drawn with the run's seed and removed from the test set (every method runs "
                               "on the same reduced test set; one-class methods do not see the anomalies). "
                               "long_tail: long-tailed training sets over the chosen classes (test sets unchanged).")
split: dict = {"kind": split_kind}
# Annotation sets of this dataset: a run can train on and be scored against one instead of the dataset's files.
sets = state.annotation_sets(kind, str(Path(root).expanduser())) if root and categories_available else []
if split_kind == "few_shot":
    split["k"] = int(c2.number_input("k (anomalies per class)", min_value=1, value=10, key="launch_split_k"))
    split["setting"] = c3.radio("Setting", ["general", "hard"], horizontal=True, key="launch_split_setting",
                                help="hard: the k anomalies come from one defect type, which leaves the test set")
    if sets:
        source = c3.radio("Labelled anomalies from", ["all", "annotated"], horizontal=True, key="launch_split_source",
                          format_func={"all": "any anomalous test image",
                                       "annotated": "images of the annotation set"}.get,
                          help="annotated: draw the k anomalies only from images the chosen annotation set labels "
                               "(with their masks), e.g. defects your team annotated")
        if source == "annotated":
            split["source"] = "annotated"
elif split_kind == "long_tail":
    profile = c2.selectbox("Profile", ["exp100", "step100", "step_k4", "pareto", "imported list"],
                           key="launch_split_profile",
                           help="exp100: exponential counts, imbalance ratio 100; step100 / step_k4: 60 % of the "
                                "classes cut to n_max/100 or to 4 images; pareto: Pareto-shaped counts (>= 5); "
                                "imported list: a published split file (TailedCore JSON, or txt/csv/json paths)")
    if profile == "imported list":
        split["list"] = c3.text_input("List file", key="launch_split_list",
                                      placeholder="/data/splits/mvtec_step_random_nr00_tk4_tr60_seed101.json")
    else:
        try:
            split.update(SplitSpec.parse(f"long_tail:{profile}").to_dict())
        except ConfigError as exc:
            st.error(str(exc))

frame = st.radio(
    "Evaluation frame", [DEFAULT_FRAME, NATIVE], horizontal=True, key="launch_frame",
    format_func=lambda k: f"{k}: {EvalFrame.parse(k).label}",
    help="On which pixels the pixel metrics are computed. full:256 (default): every method on the full image at "
         "256x256 px; a method that crops (PatchCore, ReConPatch: 224 of 256) has its map put back into the full "
         "image and the cut-away border gets that image's lowest score, so all methods are scored on the same "
         "pixels. native: each method's own resize + crop, as in the papers (not comparable across geometries). "
         "Results in different frames are never pooled.")

annotation_set = None
if sets:
    choice = st.selectbox(
        "Ground truth", [None, *sets], key=f"launch_gt_{kind}_{root}",
        format_func=lambda s: "the dataset's own files" if s is None else f"{s.label} · {s.n_changed} image(s) changed",
        help="The labels and masks the jobs train on (few-shot draws) and are scored against. Results against "
             "different ground truths are never pooled on the leaderboard.")
    annotation_set = None if choice is None else choice.id
elif split.get("source") == "annotated":
    st.caption("Labelled anomalies from an annotation set need one: create it on the Annotation sets page.")

c1, c2, c3 = st.columns(3)
seeds_text = c1.text_input("Seeds", value="0", key="launch_seeds", help="e.g. `0 1 2` or `0-4`")
device = c2.selectbox("Device", ["cpu", "cuda"], key="launch_device", help="cuda jobs go to the gpu queue")
weights = c3.selectbox("Backbone weights", ["(preset)", "imagenet", "bundled", "random"], key="launch_weights",
                       help="random: tests only; results are labelled as random weights")
with st.expander("Advanced: backbone and config overrides"):
    backbone = st.text_input("Backbone (timm name)", value="", key="launch_backbone", placeholder="(preset)")
    overrides_text = st.text_area("Config overrides, one key=value per line", value="", key="launch_overrides",
                                  placeholder="coreset_ratio=0.01")

errors: dict[str, str] = {}
try:
    seeds = state.parse_seeds(seeds_text)
except ValueError as exc:
    seeds, errors["seeds"] = [], str(exc)
try:
    overrides = parse_overrides([line for line in overrides_text.splitlines() if line.strip()])
except ConfigError as exc:
    overrides, errors["overrides"] = {}, str(exc)

# One job per category x seed, except multi-class methods: one job (one model) over all categories per seed.
shared = [m for m in methods if get_method(m).learning_type == "multi_class"]
n_jobs = (len(methods) - len(shared)) * len(categories) * len(seeds) + len(shared) * len(seeds) * bool(categories)
st.markdown(f"**{len(methods)} method(s) × {len(categories)} categor{'y' if len(categories) == 1 else 'ies'} "
            f"× {len(seeds)} seed(s) = {n_jobs} job(s)**"
            + (f" ({', '.join(shared)}: one model over all categories per seed)" if shared else ""))

if n_jobs == 0:
    reasons = [why for why, missing in (("choose at least one method", not methods),
                                        ("choose a dataset root with categories" if not categories_available
                                         else "choose at least one category", not categories),
                                        ("give at least one seed", not seeds)) if missing]
    st.caption("Launch is disabled: " + "; ".join(reasons) + ".")
if st.button(f"Launch {n_jobs} job(s)", type="primary", disabled=n_jobs == 0, key="launch_submit"):
    plan = state.MatrixPlan(errors=errors)
    if not errors:
        with st.spinner("Validating..."):
            plan = state.plan_jobs(methods, kind, root, categories, seeds, split=split, preset=preset, device=device,
                                     backbone=backbone.strip() or None,
                                     weights=None if weights == "(preset)" else weights, overrides=overrides,
                                     frame=frame, annotations=annotation_set)
    if plan.errors:
        for what, message in plan.errors.items():
            st.error(f"**{what}**: {message}")
    else:
        try:
            group, ids = state.submit_matrix(plan.requests)
        except state.SubmitError as exc:
            st.error(str(exc))
        else:
            st.success(f"Submitted {len(ids)} job(s) in group `{group}` (jobs {ids[0]}–{ids[-1]}).")
            st.page_link(ui.PAGES["jobs"], label="Watch them on the Jobs page", icon=":material/list_alt:")
elif errors:
    for what, message in errors.items():
        st.error(f"**{what}**: {message}")
