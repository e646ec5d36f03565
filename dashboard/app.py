"""IAD Workbench dashboard: `streamlit run dashboard/app.py` (or `iad up`, which also starts a worker).

Multipage app (st.navigation). Pages read through `db.queries` / `db.results` and act through
`dashboard.state`; none of them writes SQL. The database, broker and artifact store come from the usual
environment variables (IAD_DATABASE_URL, IAD_BROKER_URL, IAD_ARTIFACTS, IAD_HOME). Where sign-in is required
(`db.accounts`), nobody signed in sees only the Sign-in page, and each role only the pages it may use. While
the results database is unreachable (a restart, a failover), every page shows one message instead of a
traceback and the app reloads by itself once the database answers again.
"""

from __future__ import annotations

import datetime as dt

import streamlit as st
from sqlalchemy.exc import OperationalError

from dashboard import auth
from dashboard.pages import SIGN_IN, pages_for

RETRY_S = 5

st.set_page_config(page_title="IAD Workbench", page_icon=":material/biotech:", layout="wide")


def database_reachable() -> bool:
    from sqlalchemy import text

    from db.session import get_engine

    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except OperationalError:
        return False


@st.fragment(run_every=RETRY_S)
def wait_for_the_database() -> None:
    """Checks every RETRY_S seconds; reloads the app once the database answers."""
    if database_reachable():
        st.rerun(scope="app")
    st.caption(f"Still unreachable at {dt.datetime.now():%H:%M:%S}; next check in {RETRY_S} s.")


try:
    actor = auth.signed_in()
    specs = (SIGN_IN,) if actor is None else pages_for(actor.role)
    sections: dict[str, list] = {}
    for p in specs:
        sections.setdefault(p.section, []).append(st.Page(p.file, title=p.title, icon=p.icon, default=p.default))
    if actor is not None and (st.session_state.get(auth.SESSION_KEY)
                              or (auth.oidc_configured() and st.user.is_logged_in)):
        with st.sidebar:
            st.caption(f"Signed in as **{actor.name}** ({actor.role})")
            if st.button("Sign out", key="sign_out", icon=":material/logout:"):
                auth.sign_out()
                st.rerun()
    st.navigation(sections).run()
except OperationalError as exc:
    from db.session import database_url
    from workers.settings import redact

    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
    st.error(f"The results database {redact(database_url())} is unreachable ({reason}). Nothing is lost: "
             "running jobs keep going and store their results when it is back. This page reloads by itself.")
    wait_for_the_database()
