"""Export: the current leaderboard view as LaTeX (booktabs), CSV and Markdown, with download buttons."""

from __future__ import annotations

import re

import streamlit as st

from ad_core.analysis import export
from dashboard import auth, ui
from db import accounts

st.title("Export")
st.caption("The leaderboard view below (same filters as on the Leaderboard page) as a paper-ready table.")

picked = ui.view_controls("ex")
if picked is None:
    st.info("Nothing to export yet: no job has finished.")
    st.stop()
view, results = picked
board = view.board(results)
if board.empty:
    st.info("No results match these filters.")
    st.stop()

efficiency = st.toggle("Efficiency columns (images/s, training time)", value=False, key="ex_efficiency",
                       disabled=view.transpose, help="methods-as-rows tables only")
latex = export.to_latex(board, transpose=view.transpose, efficiency=efficiency)
csv = export.to_csv(board)
markdown = export.to_markdown(board, transpose=view.transpose, efficiency=efficiency)
stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{view.dataset}-{view.metric}")



def exported(kind: str) -> None:
    """The audit log records who exported what."""
    accounts.audit(auth.current_actor().name, "table exported", f"{view.dataset} {view.metric}", {"format": kind})


c1, c2, c3 = st.columns(3)
c1.download_button("Download LaTeX", latex, file_name=f"{stem}.tex", mime="text/x-tex", key="ex_dl_latex",
                   icon=":material/description:", on_click=exported, args=("latex",))
c2.download_button("Download CSV", csv, file_name=f"{stem}.csv", mime="text/csv", key="ex_dl_csv",
                   icon=":material/table:", on_click=exported, args=("csv",))
c3.download_button("Download Markdown", markdown, file_name=f"{stem}.md", mime="text/markdown", key="ex_dl_md",
                   icon=":material/article:", on_click=exported, args=("md",))

tab_latex, tab_md, tab_csv = st.tabs(["LaTeX", "Markdown", "CSV"])
tab_latex.code(latex, language="latex")
tab_latex.caption(r"Needs `\usepackage{booktabs}` in the preamble.")
tab_md.markdown(markdown, unsafe_allow_html=True)  # <u> for the second-best value
tab_md.code(markdown, language="markdown")
tab_csv.dataframe(board.long(), hide_index=True)
st.markdown("Same table from the command line:")
st.code(view.cli() + (" --efficiency" if efficiency and not view.transpose else ""), language="bash")
