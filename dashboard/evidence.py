"""Evidence widgets: the reproducibility bundle button (Run detail), the metric version of a job's table (Run
detail), the "Paper vs reproduced" section, the significance of the ranking and the critical-difference
diagram (Leaderboard)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ad_core.analysis import leaderboard as lb
from dashboard import ui


def bundle_button(job_id: int) -> None:
    """One click: the job's reproducibility bundle (zip), built when clicked (`ad_core.reproduce.write_bundle`)."""
    from ad_core.reproduce import bundle_bytes, bundle_name
    from db.evidence import stored_run

    st.download_button(
        "Download reproducibility bundle", data=lambda: bundle_bytes(stored_run(job_id)),
        file_name=bundle_name(job_id), mime="application/zip", icon=":material/download:",
        help="A zip with the config, seed, split recipe and file list (with its hash), weights checksums, package "
             "versions, git commit, metric versions, per-image scores and the exact `iad run` command. "
             "`iad reproduce <zip>` re-runs it on the CPU and compares every metric.",
        key=f"bundle_{job_id}", on_click="ignore",
    )


def one_metric_version(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """A job's metric rows of one version: this code's (or the newest) by default, a selector when the job has
    several (rows re-scored with `iad rescore` sit next to the ones it ran with)."""
    if frame.empty:
        return frame
    versions = lb.metric_versions(frame)[::-1]  # newest first
    version = versions[0]
    if len(versions) > 1:
        version = st.selectbox("Metric version", versions, key=key,
                               help="This job has metrics of several versions (re-scored from its stored maps).")
    return frame[frame["metric_version"] == version]


def paper_section(board: lb.Leaderboard) -> None:
    """Expander: the paper-reported numbers of this table's dataset and metric next to the reproduced ones, with
    the difference only where the setting matches (`ad_core.analysis.paper`)."""
    from ad_core.analysis import paper
    from db.evidence import configs_by_hash

    with st.expander("Paper vs reproduced"):
        table = paper.paper_vs_reproduced(board, configs_by_hash(board))
        if table.empty:
            st.info(f"The paper table holds no {board.metric_label} numbers for {board.dataset}.")
            return
        shown = table.assign(setting=[paper.summary_line(r) for r in table.to_dict(orient="records")])
        st.dataframe(
            shown[["method", "variant", "category", "paper", "reproduced", "difference", "comparable", "setting",
                   "source", "evidence"]],
            hide_index=True,
            column_config={
                "paper": st.column_config.NumberColumn("paper %", format="%.2f"),
                "reproduced": st.column_config.NumberColumn("reproduced %", format="%.2f"),
                "difference": st.column_config.NumberColumn("Δ (points)", format="%+.2f"),
                "evidence": st.column_config.TextColumn(
                    "evidence", help="P paper text, C official code/results, S secondary source, U unofficial "
                                     "transcription"),
            },
        )
        st.caption(paper.caption(board) + " Numbers from `ad_core/analysis/paper_numbers.csv` (versioned with the "
                   "code; each row names its source, table and the setting it was obtained in). Same as "
                   "`iad export --view paper`.")


# --- significance (`ad_core.analysis.significance`) ----------------------------------------------------------


@st.cache_data(max_entries=32, show_spinner="Bootstrapping the test images…")
def _board_evidence(metric: str, job_ids: tuple[int, ...], cells: tuple, posthoc: str, _board: lb.Leaderboard):  # noqa: ANN202
    """Cached on what determines the result: the metric, the jobs, the table's cells and the post-hoc test."""
    from ad_core.analysis import significance
    from db import results as db_results

    scores = db_results.image_scores_frame(job_ids) if metric in significance.IMAGE_METRICS else None
    if scores is None:
        scores = db_results.image_scores_frame([])
    return significance.board_evidence(_board, scores, posthoc=posthoc)


def board_evidence(board: lb.Leaderboard, posthoc: str = "nemenyi"):  # noqa: ANN201 (BoardEvidence)
    """The evidence behind `board` (intervals from the stored per-image scores; the rank test)."""
    jobs = tuple(sorted(int(j) for j in board.seed_values["job_id"].dropna().unique()))
    cells = tuple(map(tuple, board.mean.round(6).reset_index().astype(str).to_numpy()))
    return _board_evidence(board.metric, jobs, cells, posthoc, board)


def cd_figure(ranks) -> go.Figure:  # noqa: ANN001 (significance.RankTest)
    """Critical-difference diagram (Demšar 2006): methods on the average-rank axis (1 = best, left), a thick
    bar joining each group of methods that are not significantly different, the CD interval above (Nemenyi)."""
    average = ranks.average_ranks
    k = len(average)
    fig = go.Figure()
    axis = {"color": "#444", "width": 1.5}
    fig.add_shape(type="line", x0=1, x1=k, y0=0, y1=0, line=axis)
    for r in range(1, k + 1):
        fig.add_shape(type="line", x0=r, x1=r, y0=0, y1=0.08, line=axis)
        fig.add_annotation(x=r, y=0.12, text=str(r), showarrow=False, yanchor="bottom", font={"size": 12})
    if ranks.cd is not None:
        fig.add_shape(type="line", x0=1, x1=1 + ranks.cd, y0=0.55, y1=0.55, line={"color": "#c0392b", "width": 2})
        for x in (1, 1 + ranks.cd):
            fig.add_shape(type="line", x0=x, x1=x, y0=0.48, y1=0.62, line={"color": "#c0392b", "width": 2})
        fig.add_annotation(x=1 + ranks.cd / 2, y=0.64, text=f"CD = {ranks.cd:.2f}", showarrow=False, yanchor="bottom",
                           font={"color": "#c0392b"})
    # Groups not significantly different: thick bars just below the axis.
    for j, clique in enumerate(ranks.cliques):
        y = -0.25 - 0.18 * j
        fig.add_shape(type="line", x0=average[clique[0]] - 0.03, x1=average[clique[-1]] + 0.03, y0=y, y1=y,
                      line={"color": "#222", "width": 5})
    # Labels: the better half on the left, the rest on the right, each with an elbow line to its rank.
    top = -0.35 - 0.18 * max(len(ranks.cliques), 1)
    half = (k + 1) // 2
    for i, (name, rank) in enumerate(average.items()):
        left = i < half
        row = i if left else k - 1 - i
        y = top - 0.32 * row
        edge = 0.55 if left else k + 0.45
        fig.add_shape(type="line", x0=rank, x1=rank, y0=0, y1=y, line={"color": "#666", "width": 1})
        fig.add_shape(type="line", x0=rank, x1=edge, y0=y, y1=y, line={"color": "#666", "width": 1})
        fig.add_annotation(x=edge, y=y, text=f"{name} ({rank:.2f})", showarrow=False,
                           xanchor="right" if left else "left", font={"size": 13})
    fig.add_scatter(x=list(average.values), y=[0] * k, mode="markers", marker={"size": 8, "color": "#222"},
                    text=[f"{n}: average rank {r:.3f}" for n, r in average.items()], hoverinfo="text", showlegend=False)
    low = top - 0.32 * (half - 1) - 0.3
    fig.update_layout(height=int(120 + 45 * half + 25 * len(ranks.cliques)), margin={"t": 10, "b": 10, "l": 10, "r": 10},
                      plot_bgcolor="white")
    width = max(len(n) for n in average.index) * 0.09 + 0.6  # room for the labels, in rank units
    fig.update_xaxes(visible=False, range=[0.55 - width, k + 0.45 + width])
    fig.update_yaxes(visible=False, range=[low, 0.95])
    return fig


def significance_section(board: lb.Leaderboard, evidence) -> None:  # noqa: ANN001 (significance.BoardEvidence)
    """'Is the lead real?' (best vs second per column, with intervals) and the critical-difference diagram."""
    from ad_core.analysis import significance

    st.subheader("Is the lead real?")
    if evidence.reason:
        st.info(evidence.reason)
    table = evidence.table(board.precision)
    if not table.empty:
        st.dataframe(table, hide_index=True, column_config={
            "lead": st.column_config.NumberColumn("lead over the second", format=f"%+.{board.precision + 1}f"),
            "significant": st.column_config.CheckboxColumn(
                "significant", help="the 95 % interval of the lead excludes 0"),
            "gap < seed std": st.column_config.CheckboxColumn(
                help="the lead is smaller than the larger std over seeds of the two entries"),
        })
        st.caption(f"Lead = best minus second; interval: {significance.N_BOOT} paired resamples of the test images "
                   "(the same images for both methods, normal and anomalous images resampled separately, seeded), "
                   "of the seed-mean difference; for the mean column, of the mean over the categories. DeLong's "
                   "test (image AUROC, one p per seed pair) is the closed-form check. Hover a diamond in the "
                   "chart for any entry against the column's best.")
    st.subheader("Ranks across categories")
    if evidence.ranks is None:
        st.info(f"No critical-difference diagram: {evidence.rank_reason}.")
        return
    posthoc = st.radio("Post-hoc test", significance.POSTHOCS, horizontal=True, key="lb_posthoc",
                       help="Nemenyi: all pairs, one critical difference (Demšar 2006). Wilcoxon signed-rank with "
                            "Holm's correction: more power, no single CD (Benavoli et al. 2016).")
    ranks = evidence.ranks if posthoc == evidence.ranks.posthoc else significance.rank_test(
        significance.rank_table(board), posthoc=posthoc)
    st.plotly_chart(cd_figure(ranks), width="stretch", key="cd_diagram")
    st.caption(ranks.summary() + ". Methods joined by a bar are not significantly different; "
               "average rank over the categories, 1 = best (Demšar 2006). With few categories the test has "
               "little power: a missing bar is evidence, a bar is only the absence of it.")


@st.cache_data(max_entries=32, show_spinner="Bootstrapping the test images…")
def _compare(job_a: int, job_b: int, pixel: bool) -> pd.DataFrame:
    from workers.compare import compare_jobs

    return compare_jobs(job_a, job_b, pixel=pixel)


def comparison_section(job, others: list) -> None:  # noqa: ANN001 (db.models.Job and a list of them)
    """Run detail's 'Compare' tab: this run against another on the shared categories, each metric's difference
    with its paired-bootstrap interval over the test images (and DeLong's p for image AUROC)."""
    from ad_core.analysis import significance

    candidates = {j.id: j for j in others if j.id != job.id and j.dataset_id == job.dataset_id
                  and set(j.categories) & set(job.categories)}
    if not candidates:
        st.info("No other finished run on the same dataset and categories to compare with.")
        return
    ranked = sorted(candidates.values(), key=lambda j: (j.method == job.method, j.seed != job.seed, -j.id))
    other = st.selectbox("Compare with", [j.id for j in ranked], format_func=lambda i: ui.job_label(candidates[i]),
                         key="compare_with")
    pixel = st.toggle("Pixel AUROC and AUPRO too (reads both runs' stored maps and the masks)", key="compare_pixel")
    shared = set(job.categories) & set(candidates[other].categories)
    # A few seconds per category on a CPU the first time (then cached): large runs compare on request.
    if len(shared) > 3 and not st.toggle(f"Compare the {len(shared)} shared categories", key="compare_go"):
        return
    table = _compare(job.id, other, pixel)
    shown = table.assign(interval=[
        "" if r.note else f"[{r.low:+.4f}, {r.high:+.4f}]" for r in table.itertuples()])
    st.dataframe(
        shown[["category", "metric_label", "a", "b", "difference", "interval", "significant", "delong_p", "images",
               "note"]],
        hide_index=True,
        column_config={
            "metric_label": st.column_config.TextColumn("metric"),
            "a": st.column_config.NumberColumn(f"#{job.id}", format="%.4f"),
            "b": st.column_config.NumberColumn(f"#{other}", format="%.4f"),
            "difference": st.column_config.NumberColumn(f"#{job.id} − #{other}", format="%+.4f"),
            "interval": st.column_config.TextColumn("95% interval"),
            "significant": st.column_config.CheckboxColumn(help="the interval excludes 0"),
            "delong_p": st.column_config.NumberColumn("DeLong p", format="%.3g"),
        },
    )
    st.caption(f"Paired bootstrap over the test images: {significance.N_BOOT} resamples (seeded), the same images "
               "for both runs, normal and anomalous images resampled separately. Pixel metrics are resampled by "
               "image too (per-image pixel counts over 1,000 thresholds; the interval is centred on the exact "
               f"difference). Same as `iad compare {job.id} {other}{' --pixel' if pixel else ''}`.")
