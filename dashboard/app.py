"""IAD Workbench dashboard: `streamlit run dashboard/app.py` (or `iad up`, which also starts a worker).

Multipage app (st.navigation). Pages read through `db.queries` / `db.leaderboard` and act through
`dashboard.state`; none of them writes SQL. The database, broker and artifact store come from the usual
environment variables (IAD_DATABASE_URL, IAD_BROKER_URL, IAD_ARTIFACTS, IAD_HOME).
"""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="IAD Workbench", page_icon=":material/biotech:", layout="wide")

pages = [
    st.Page("pages/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:", default=True),
    st.Page("pages/launch.py", title="Launch", icon=":material/rocket_launch:"),
    st.Page("pages/jobs.py", title="Jobs", icon=":material/list_alt:"),
    st.Page("pages/run_detail.py", title="Run detail", icon=":material/image_search:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]
st.navigation(pages).run()
