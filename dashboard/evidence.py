"""Evidence widgets: the reproducibility bundle button (Run detail), the metric version of a job's table (Run
detail), and the "Paper vs reproduced" section (Leaderboard)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ad_core.analysis import leaderboard as lb


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
