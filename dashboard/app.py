"""IAD Workbench dashboard: `streamlit run dashboard/app.py` (or `iad up`, which also starts a worker).

Multipage app (st.navigation). Pages read through `db.queries` / `db.results` and act through
`dashboard.state`; none of them writes SQL. The database, broker and artifact store come from the usual
environment variables (IAD_DATABASE_URL, IAD_BROKER_URL, IAD_ARTIFACTS, IAD_HOME).
"""

from __future__ import annotations

import streamlit as st

from dashboard.pages import REGISTRY

st.set_page_config(page_title="IAD Workbench", page_icon=":material/biotech:", layout="wide")

sections: dict[str, list] = {}
for p in REGISTRY:
    sections.setdefault(p.section, []).append(st.Page(p.file, title=p.title, icon=p.icon, default=p.default))
st.navigation(sections).run()
