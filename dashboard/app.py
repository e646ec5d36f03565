"""IAD Workbench dashboard: `streamlit run dashboard/app.py` (or `iad up`, which also starts a worker).

Multipage app (st.navigation). Pages read through `db.queries` / `db.results` and act through
`dashboard.state`; none of them writes SQL. The database, broker and artifact store come from the usual
environment variables (IAD_DATABASE_URL, IAD_BROKER_URL, IAD_ARTIFACTS, IAD_HOME). Where sign-in is required
(`db.accounts`), nobody signed in sees only the Sign-in page, and each role only the pages it may use.
"""

from __future__ import annotations

import streamlit as st

from dashboard import auth
from dashboard.pages import SIGN_IN, pages_for

st.set_page_config(page_title="IAD Workbench", page_icon=":material/biotech:", layout="wide")

actor = auth.signed_in()
specs = (SIGN_IN,) if actor is None else pages_for(actor.role)
sections: dict[str, list] = {}
for p in specs:
    sections.setdefault(p.section, []).append(st.Page(p.file, title=p.title, icon=p.icon, default=p.default))
if actor is not None and (st.session_state.get(auth.SESSION_KEY) or (auth.oidc_configured() and st.user.is_logged_in)):
    with st.sidebar:
        st.caption(f"Signed in as **{actor.name}** ({actor.role})")
        if st.button("Sign out", key="sign_out", icon=":material/logout:"):
            auth.sign_out()
            st.rerun()
st.navigation(sections).run()
