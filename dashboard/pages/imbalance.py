"""Imbalance: how each method degrades from head to tail classes on a long-tailed split (issue 10).

Per class: the metric against the class's training images (log x) with a least-squares trend per method;
many / medium / few groups (the long-tail literature's >100 / 20-100 / <20 images, or tertiles of the
split's own counts) with mean ± std over seeds and the head-tail gap; the same method on the standard split
(the drop caused by imbalance), with a button that launches the missing standard runs; exports of the
group table. Analysis in `ad_core.analysis.imbalance`; reads through `db.results`, acts through `state`.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative

from ad_core.analysis import export
from ad_core.analysis import imbalance as imb
from ad_core.analysis import leaderboard as lb
from ad_core.catalog import DEFAULT_FRAME, METRICS
from ad_core.splits import split_identity
from dashboard import state, ui
from db import accounts, queries
from db import results as db_results

st.title("Imbalance")
st.caption("How each method degrades from head to tail classes: one point per class (and seed) at its number "
           "of training images. Made for long-tailed splits (`long_tail`); on the standard split it shows the "
           "dataset's own imbalance.")
ui.flash()

choices = db_results.dataset_choices()
if choices.empty:
    st.info("No finished results yet. Launch a long-tailed comparison on the **Launch** page (or with "
            "`iad submit --split long_tail:exp100`); this page fills in as jobs succeed.")
    st.stop()

saved = st.session_state.get(ui.VIEW_KEY, {})
STANDARD_SPLIT = {"kind": "standard", "seed": None}


def _index(options: list, value: object, default: int = 0) -> int:
    return options.index(value) if value in options else default


datasets = list(zip(choices["kind"], choices["root"], strict=True))
jobs_per = dict(zip(datasets, choices["jobs"], strict=True))
c1, c2, c3 = st.columns([3, 2, 2])
kind, root = c1.selectbox("Dataset", datasets, index=_index(datasets, (saved.get("dataset"), saved.get("root"))),
                          format_func=lambda d: f"{d[0]} · {d[1]} ({jobs_per[d]} jobs)", key="imb_dataset")
metrics = list(METRICS)
metric = c2.selectbox("Metric", metrics, index=_index(metrics, saved.get("metric")), format_func=METRICS.get,
                      key="imb_metric")
results = db_results.results_frame(dataset=kind, root=root, metrics=[metric])
if results.empty:
    st.info(f"No {METRICS[metric]} results on this dataset.")
    st.stop()

recipes = results.drop_duplicates("split_key").set_index("split_key")["split_label"]
keys = sorted(recipes.index, key=lambda k: (imb.split_kind(k) != imb.LONG_TAIL_KIND, k != lb.STANDARD_SPLIT_KEY,
                                            recipes[k]))
split_key = c3.selectbox("Split", keys, index=_index(keys, imb.default_split(results)), format_func=recipes.get,
                         key="imb_split", help="Results on different split recipes are never pooled.")
on_split = results[results["split_key"] == split_key]
frames = on_split.drop_duplicates("eval_frame").set_index("eval_frame")["eval_frame_label"]
frame_keys = sorted(frames.index, key=lambda k: (k != DEFAULT_FRAME, k))
eval_frame = frame_keys[0] if frame_keys else None
if len(frame_keys) > 1:
    eval_frame = st.selectbox("Evaluation frame", frame_keys, format_func=lambda k: f"{k}: {frames[k]}",
                              key="imb_frame", help="On which pixels the pixel metrics were computed (native: each "
                                                    "method's own crop). Results in different frames are never pooled.")
on_split = on_split[on_split["eval_frame"] == eval_frame]
versions = lb.metric_versions(on_split)[::-1]  # newest first
c4, c5, c6 = st.columns([3, 2, 2])
methods = c4.multiselect("Methods", sorted(on_split["method"].unique()), placeholder="all methods", key="imb_methods")
grouping_name = c5.radio(
    "Groups", list(imb.GROUPINGS), horizontal=True, key="imb_grouping",
    format_func={imb.LITERATURE: f"literature (>{imb.MANY_ABOVE} / {imb.FEW_BELOW}–{imb.MANY_ABOVE} / <{imb.FEW_BELOW})",
                 imb.TERTILES: "tertiles of this split"}.get,
    help=f"literature: many-shot > {imb.MANY_ABOVE}, medium {imb.FEW_BELOW}–{imb.MANY_ABOVE}, few-shot < "
         f"{imb.FEW_BELOW} training images per class (Liu et al., CVPR 2019). tertiles: thresholds at the 1/3 and "
         "2/3 quantiles of this split's own per-class training counts.")
version = versions[0] if versions else None
if len(versions) > 1:
    version = c6.selectbox("Metric version", versions, key="imb_version")
include_random = c6.toggle("Random-weight runs", value=True, key="imb_random",
                           help="Results from randomly initialised backbones; always marked, never ranked.")

points = imb.select_points(results, metric, split=split_key, metric_version=version, methods=methods or None,
                           include_random=include_random, dataset=kind, eval_frame=eval_frame)
if points.other_versions:
    st.warning(f"Results computed with other metric versions ({', '.join(points.other_versions)}) are not shown: "
               "numbers from different metric implementations are never mixed.")
if points.excluded:
    st.warning(f"{points.excluded} job(s) ran on an older version of this data (different split content hash) "
               "and are left out.")
if points.uncounted:
    st.warning(f"{points.uncounted} result(s) have no stored training count (runs from before training counts "
               "were recorded) and are left out.")
if split_key == lb.STANDARD_SPLIT_KEY:
    st.info("This is the standard split: the points show the dataset's own imbalance between classes. Pick a "
            "long-tailed split to see the drop against the full training set.")
if points.empty:
    st.info("No results with training counts match these filters.")
    st.stop()
if any(points.is_random(v) for v in points.variants):
    st.warning(f"Rows marked **{lb.RANDOM_MARK}** used randomly initialised backbones (test/demo runs): shown, "
               "never ranked against pretrained ones.")

seeds = points.seeds
seeds_text = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"

# --- per class: metric vs training images ----------------------------------------------------------------------
st.subheader("Per class: metric vs training images")
scatter = imb.scatter_points(points)
trends = imb.trend_lines(points)
palette = qualitative.Plotly
fig = go.Figure()
for i, variant in enumerate(points.variants):
    colour = palette[i % len(palette)]
    label = points.label(variant)
    mine = scatter[scatter["variant"] == variant]
    fig.add_scatter(
        x=mine["n_train"], y=mine["value"], mode="markers", name=label, legendgroup=variant,
        marker={"color": colour, "size": 9, "symbol": "x" if points.is_random(variant) else "circle"},
        customdata=mine[["category", "seeds", "values", "n_seeds"]].to_numpy(),
        hovertemplate=(f"<b>%{{customdata[0]}}</b> · {label}<br>training images: %{{x:.0f}}<br>"
                       f"{points.metric_label}: %{{y:.3f}}<br>seed(s): %{{customdata[1]}} "
                       "(values %{customdata[2]})<extra></extra>"),
    )
    fit = trends.loc[variant]
    if pd.notna(fit["slope"]):
        xs = pd.Series([fit["n_min"], fit["n_max"]], dtype=float)
        fig.add_scatter(
            x=xs, y=fit["intercept"] + fit["slope"] * np.log10(xs), mode="lines",
            name=f"{label}: trend", legendgroup=variant, showlegend=False,
            line={"color": colour, "dash": "dash"},
            hovertemplate=f"{label}<br>trend: {fit['slope']:+.3f} per 10× images (r = {fit['r']:.2f})<extra></extra>",
        )
grouping = imb.make_grouping(grouping_name, points.counts["n_train"])
low, high = points.frame["value"].min(), points.frame["value"].max()
for threshold in sorted({grouping.few_below, grouping.many_above}):
    fig.add_scatter(x=[threshold, threshold], y=[low, high], mode="lines", showlegend=False,
                    line={"color": "grey", "dash": "dot", "width": 1},
                    hovertemplate=f"group threshold n = {threshold:.4g}<extra></extra>")
fig.update_xaxes(type="log", title="training images of the class (log scale)")
fig.update_yaxes(title=points.metric_label)
fig.update_layout(height=460, margin={"t": 30, "b": 10}, legend={"orientation": "h", "y": -0.2})
st.plotly_chart(fig, width="stretch", key="imb_scatter")
st.caption(f"One point per method, class and training count: the mean over the seeds that gave the class that "
           f"count (with `seed=None` recipes each seed draws its own head and tail classes). Dashed: least squares "
           f"of the metric on log10(training images) over the per-seed points. Dotted: group thresholds "
           f"({grouping.describe()}). Split {points.split_label}, metric version {points.metric_version}.")
trend_table = pd.DataFrame({
    "method": [points.label(v) for v in trends.index],
    "slope per 10× images": trends["slope"].to_numpy(),
    "r": trends["r"].to_numpy(),
    "p (slope = 0)": trends["p_value"].to_numpy(),
    "points": trends["n_points"].to_numpy(),
    "images min": trends["n_min"].to_numpy(),
    "images max": trends["n_max"].to_numpy(),
})
st.dataframe(trend_table, hide_index=True, key="imb_trends", column_config={
    "slope per 10× images": st.column_config.NumberColumn(
        format="%+.4f", help="change of the metric for ten times more training images (least squares on log10 n)"),
    "r": st.column_config.NumberColumn(format="%.2f"),
    "p (slope = 0)": st.column_config.NumberColumn(format="%.3g"),
    "images min": st.column_config.NumberColumn(format="%.0f"),
    "images max": st.column_config.NumberColumn(format="%.0f"),
})

# --- head / medium / tail groups ---------------------------------------------------------------------------------
st.subheader("Head, medium and tail classes")
board = imb.group_table(points, grouping)
st.table(ui.styled_matrix(board))
st.caption(board.caption())
st.markdown(
    f"Each cell is the **mean over {seeds_text} of the per-seed group mean** (the mean over the classes that fall "
    f"in the group in that seed, each with its own training count), ± the std over seeds (none for one seed). "
    f"**{imb.GAP}** = {imb.MANY} − {imb.FEW}, computed per seed. Groups: {grouping.describe()}."
)
for group in board.empty_groups:
    rule = grouping.rules()[group]
    gap = " so the head−tail gap is undefined" if group in (imb.MANY, imb.FEW) else ""
    st.info(f"No class of this split has {rule} training images: the **{group}** group is empty,{gap} "
            "(shown as –, never filled in).")
dropped = [points.label(v) for v in points.variants if v not in board.mean.index]
if dropped:
    st.warning(f"No seed of {', '.join(dropped)} covers all of its categories, so it has no group means here "
               "(its points are in the chart).")
if board.partial:
    st.warning(f"Seeds that lack some categories (unfinished sweeps) are left out for: {', '.join(board.partial)}.")
with st.expander("Per-seed group means and class membership"):
    per_seed = imb.per_seed_groups(points, grouping)
    st.dataframe(per_seed, hide_index=True, key="imb_per_seed",
                 column_config={"value": st.column_config.NumberColumn(points.metric_label, format="%.4f")})
    membership = points.frame.assign(group=grouping.assign(points.frame["n_train"]))
    st.dataframe(membership[["variant", "seed", "category", "n_train", "group", "value", "job_id"]]
                 .sort_values(["variant", "seed", "n_train"], ascending=[True, True, False]),
                 hide_index=True, key="imb_membership",
                 column_config={"value": st.column_config.NumberColumn(points.metric_label, format="%.4f"),
                                "n_train": st.column_config.NumberColumn("training images", format="%.0f")})

# --- long-tailed vs full training set ---------------------------------------------------------------------------
st.subheader("Long-tailed vs full training set")
drop = imb.drop_table(results, metric, split=split_key, metric_version=version, methods=methods or None,
                      include_random=include_random, dataset=kind, eval_frame=eval_frame)
if drop.note:
    st.info(drop.note[0].upper() + drop.note[1:] + ".")
else:
    shown = drop.table.assign(variant=[points.label(v) for v in drop.table["variant"]])
    st.dataframe(
        shown.drop(columns=["method", "random_weights"]), hide_index=True, key="imb_drop",
        column_config={
            "variant": "method",
            "n_train": st.column_config.NumberColumn("images (long-tailed)", format="%.0f"),
            "seeds": st.column_config.TextColumn("seed(s)", help="the seeds that gave the class this count"),
            "n_train_full": st.column_config.NumberColumn("images (full)", format="%.0f"),
            "long_tail": st.column_config.NumberColumn("long-tailed", format="%.4f"),
            "long_tail_std": st.column_config.NumberColumn("± std", format="%.4f"),
            "long_tail_seeds": None,
            "full": st.column_config.NumberColumn("full", format="%.4f"),
            "full_std": st.column_config.NumberColumn("± std (full)", format="%.4f"),
            "full_seeds": "seeds (full)",
            "drop": st.column_config.NumberColumn("drop", format="%+.4f", help="full − long-tailed"),
            "relative_drop": st.column_config.NumberColumn("drop / full", format="%+.1%"),
        },
    )
    st.caption(f"{points.metric_label}, metric version {drop.metric_version}, evaluation frame "
               f"{drop.eval_frame_label or 'not recorded'}: the same method variant (method, "
               f"preset and full config) on {drop.split_label} and on the standard split of the same dataset root, "
               "one row per class and long-tailed training count. Long-tailed: the mean over the seeds that gave the "
               "class this count; full: the mean over the variant's standard-split seeds of the class (± sample "
               "std); drop = full − long-tailed, empty where the standard run is missing.")

    # Missing standard runs: the long-tailed jobs re-planned on the standard split (same config, seed,
    # categories, device), minus those already queued or running.
    missing = drop.missing
    pending = set()
    if len(missing):
        for job in queries.list_jobs(status=["queued", "running"], limit=None):
            if ((job.dataset.kind, job.dataset.root) == (kind, root) and job.frame == eval_frame
                    and split_identity(job.split)[0] == lb.STANDARD_SPLIT_KEY):
                pending.update((job.method, job.preset or "", lb.config_hash(job.config), job.seed, c)
                               for c in job.categories)
        waiting = [all((r.method, r.preset or "", r.config_hash, r.seed, c) in pending for c in r.missing_categories)
                   for r in missing.itertuples()]
        missing = missing[[not w for w in waiting]]
        if any(waiting):
            st.info(f"{sum(waiting)} standard run(s) for these classes are already queued or running.")
    if len(missing):
        cells = sum(len(c) for c in missing["missing_categories"])
        st.warning(f"{cells} class × seed cell(s) have no result on the standard split for the same variant, so "
                   f"their drop is empty. Launching re-runs {len(missing)} long-tailed job(s) on the standard split "
                   "(same method, full config, seed, categories and device).")
        with st.expander("Jobs to launch"):
            st.dataframe(missing.assign(categories=[", ".join(c) for c in missing["categories"]],
                                        missing_categories=[", ".join(c) for c in missing["missing_categories"]]),
                         hide_index=True, key="imb_missing")
        if st.button(f"Launch the missing standard run(s) ({len(missing)} job(s))", key="imb_launch_full",
                     type="primary"):
            # Copies of the long-tailed jobs on the standard split, checked with the exact stored config.
            requests, errors = state.copies_on_split([int(i) for i in missing["job_id"]], STANDARD_SPLIT)
            if errors or not requests:
                st.error("Cannot launch: " + ("; ".join(errors) or "the long-tailed jobs are gone"))
            else:
                try:
                    group, ids = state.submit_matrix(requests)
                except (state.SubmitError, accounts.AccessDenied) as exc:
                    st.error(str(exc))
                else:
                    st.session_state["flash"] = (f"Submitted {len(ids)} standard-split job(s) in group {group}; the "
                                                 "drop fills in as they succeed (Jobs page).")
                    st.rerun()

# --- export -------------------------------------------------------------------------------------------------------
st.subheader("Export the group table")
stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{kind}-{metric}-{points.split_label}-{grouping.convention}")
e1, e2, e3 = st.columns(3)
e1.download_button("Download LaTeX", export.to_latex(board), file_name=f"{stem}.tex", mime="text/x-tex",
                   key="imb_dl_latex", icon=":material/description:")
e2.download_button("Download CSV", export.to_csv(board), file_name=f"{stem}.csv", mime="text/csv",
                   key="imb_dl_csv", icon=":material/table:")
e3.download_button("Download Markdown", export.to_markdown(board), file_name=f"{stem}.md", mime="text/markdown",
                   key="imb_dl_md", icon=":material/article:")
cli = ["iad export", f"--dataset {kind}", f"--root {root}", f"--metric {metric}", "--view imbalance",
       f"--split '{points.split_label}'", f"--grouping {grouping.convention}"]
if eval_frame and eval_frame != DEFAULT_FRAME:
    cli.append(f"--frame {eval_frame}")
if version and len(versions) > 1:
    cli.append(f"--metric-version {version}")
if methods:
    cli.append("--methods " + " ".join(methods))
if not include_random:
    cli.append("--no-random")
st.markdown("Same table from the command line (needs `\\usepackage{booktabs}` for LaTeX):")
st.code(" ".join(cli) + " --format latex", language="bash")
