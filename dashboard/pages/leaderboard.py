"""Leaderboard: method x category matrix of one metric on one dataset, mean ± std over seeds."""

from __future__ import annotations

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import streamlit as st

from ad_core.analysis import leaderboard as lb
from dashboard import evidence, state, ui

st.title("Leaderboard")
ui.flash()

picked = ui.view_controls("lb")
if picked is None:
    if state.database_is_empty():
        ui.first_run_box()
    else:
        st.info("No finished results yet. Jobs that are queued or running appear on the **Jobs** page; "
                "the leaderboard fills in as they succeed.")
        st.page_link(ui.PAGES["jobs"], label="Open the Jobs page", icon=":material/list_alt:")
    st.stop()

view, results = picked
board = view.board(results)
if board.other_versions:
    st.warning(f"Results computed with other metric versions ({', '.join(board.other_versions)}) are not shown: "
               "numbers from different metric implementations are never mixed. Pick a version above.")
if board.excluded:
    st.warning(f"{board.excluded} job(s) ran on an older version of this data (their split content hash differs "
               "from the newest runs of the same categories and seeds) and are left out of this table.")
if board.empty:
    st.info("No results match these filters.")
    st.stop()
if board.any_random:
    st.warning(f"Rows marked **{lb.RANDOM_MARK}** used randomly initialised backbones (test/demo runs). "
               "They are shown for completeness and excluded from the best/second ranking.")

# The evidence behind the ranking: best entries not significantly better than the second are marked.
support = evidence.board_evidence(board)
board = support.marked(board)
st.table(ui.styled_matrix(board, view.transpose))
st.caption(board.caption())

# Efficiency next to accuracy: the same variants, from the stored timings.
rows = board.rows
efficiency = pd.DataFrame({
    "method": [board.row_label(v) for v in rows.index],
    "images/s": rows.get("images_per_s"),
    "kNN search": rows.get("scorer"),
    "fit s / category": rows.get("fit_s"),
    "peak RSS MB": rows.get("peak_rss_mb"),
    "device": rows["device"],
    "seeds": rows["seeds"],
    "jobs": rows["jobs"],
    "weights": rows["weights_source"],
    "config": rows["config_hash"],
}).reset_index(drop=True)
st.subheader("Efficiency")
st.dataframe(efficiency, hide_index=True, column_config={
    "images/s": st.column_config.NumberColumn(format="%.1f", help="test images scored per second (mean over runs)"),
    "fit s / category": st.column_config.NumberColumn(format="%.1f", help="training time per category (mean)"),
    "peak RSS MB": st.column_config.NumberColumn(format="%.0f"),
    "kNN search": st.column_config.TextColumn(
        help="nearest-neighbour search of memory-bank methods: exact, or the named approximation (config nn_index)"),
})

# Chart: a dot plot (positions, not bar lengths, carry the values, so the axis need not start at 0): per
# column and variant a diamond for the mean with ± std whiskers, and one small dot per seed spread beside it.
fig = go.Figure()
columns = [*board.categories, lb.MEAN]
palette = plotly.colors.qualitative.Plotly
slot = 0.7 / max(len(board.mean.index), 1)  # the width of one variant within a column
for i, variant in enumerate(board.mean.index):
    label, color = board.row_label(variant), palette[i % len(palette)]
    random_weights = bool(rows.at[variant, "random_weights"])
    offset = -0.35 + (i + 0.5) * slot
    seeds = board.seed_values[board.seed_values["variant"] == variant]
    rank = seeds.groupby("column")["seed"].rank(method="first") - 1  # spread a column's seeds evenly
    count = seeds.groupby("column")["seed"].transform("count")
    jitter = ((rank + 0.5) / count - 0.5) * 0.6 * slot
    fig.add_scatter(
        name=label, legendgroup=label, showlegend=False, mode="markers",
        x=seeds["column"].map(columns.index) + offset + jitter, y=seeds["value"],
        customdata=seeds[["column", "seed"]].to_numpy(),
        marker={"size": 6, "color": color, "opacity": 0.55, "symbol": "circle-open" if random_weights else "circle"},
        hovertemplate=f"{label}<br>%{{customdata[0]}}, seed %{{customdata[1]}}: %{{y:.3f}}<extra></extra>",
    )
    against_best = [
        "best in this column" if support.best.get(c) == variant
        else ("best − this: " + support.vs_best[c][variant].text(board.precision) if variant in support.vs_best.get(c, {}) else "")
        for c in columns
    ]
    fig.add_scatter(
        name=label, legendgroup=label, mode="markers",
        x=[k + offset for k in range(len(columns))], y=board.mean.loc[variant, columns],
        customdata=list(zip(columns, against_best, strict=True)),
        error_y={"type": "data", "array": board.std.loc[variant, columns].fillna(0), "visible": True,
                 "color": color, "thickness": 1.5, "width": 5},
        marker={"size": 11, "color": color, "symbol": "diamond-open" if random_weights else "diamond",
                "line": {"width": 2 if random_weights else 0, "color": color}},
        hovertemplate=f"{label}<br>%{{customdata[0]}}: mean %{{y:.3f}}<br>%{{customdata[1]}}<extra></extra>",
    )
fig.add_vline(x=len(board.categories) - 0.5, line={"dash": "dot", "width": 1, "color": "gray"})
fig.update_layout(yaxis_title=board.metric_label, height=420, margin={"t": 30, "b": 10},
                  legend={"orientation": "h", "y": -0.15})
fig.update_xaxes(tickmode="array", tickvals=list(range(len(columns))), ticktext=columns,
                 range=[-0.5, len(columns) - 0.5], showgrid=False, zeroline=False)
# The y axis spans the dots and whiskers (every metric here lies in [0, 1]).
spread = board.std[columns].fillna(0)
values = pd.concat([board.seed_values["value"], (board.mean[columns] - spread).stack(),
                    (board.mean[columns] + spread).stack()]).dropna().clip(0.0, 1.0)
if len(values):
    low, high = float(values.min()), float(values.max())
    pad = max(0.08 * (high - low), 0.005)
    fig.update_yaxes(range=[low - pad, high + pad])
st.plotly_chart(fig, width="stretch")
st.caption("Dots: one per seed; diamond: the mean, whiskers ± std over seeds (open markers: random weights). "
           "The axis spans the values shown and does not start at 0.")

evidence.significance_section(board, support)
evidence.paper_section(board)

with st.expander("Jobs behind this table"):
    shown = results[results["metric_version"] == board.metric_version]
    shown = shown[shown["method"].isin(rows["method"]) & shown["category"].isin(board.categories)]
    shown = shown.assign(detail=[f"run_detail?job={j}" for j in shown["job_id"]])
    st.dataframe(
        shown[["job_id", "method", "preset", "category", "seed", "value", "random_weights", "group_id", "detail"]]
        .sort_values(["method", "category", "seed"]),
        hide_index=True,
        column_config={"value": st.column_config.NumberColumn(board.metric_label, format="%.4f"),
                       "detail": st.column_config.LinkColumn("heatmaps", display_text="open")},
    )
    st.page_link(ui.PAGES["export"], label="Export this table (LaTeX, CSV, Markdown)", icon=":material/download:")
