"""Activity (admins): the audit log, newest first: jobs, cancels, re-runs, annotations, exports, sign-ins."""

from __future__ import annotations

import streamlit as st

from dashboard import auth
from db import accounts

st.title("Activity")
accounts.require(auth.current_actor(), "audit", "read the audit log")
log = accounts.audit_frame(limit=500)
who = st.selectbox("Actor", ["everyone", *sorted(set(log["actor"]))], key="activity_actor")
if who != "everyone":
    log = log[log["actor"] == who]
st.dataframe(log.assign(detail=log["detail"].astype(str)), hide_index=True, width="stretch")
st.caption("Every job submission, cancel, re-run, annotation version, export, sign-in (and refused sign-in) "
           "and user change, with who did it. Same as `iad users log`.")
