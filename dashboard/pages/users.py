"""Users (admins): accounts, roles, locks; whether sign-in is required. Same as `iad users ...`."""

from __future__ import annotations

import streamlit as st

from dashboard import auth
from db import accounts

st.title("Users")
actor = auth.current_actor()
accounts.require(actor, "manage_users", "manage users")  # also refused when the page is reached some other way

table = accounts.users_frame()
st.dataframe(table, hide_index=True, width="stretch")
st.caption(f"Roles are cumulative: {' < '.join(accounts.ROLES)}. Accounts lock after "
           f"{accounts.MAX_FAILED_LOGINS} failed sign-ins in a row.")

left, right = st.columns(2)
with left.form("add_user"):
    st.markdown("**Add a user**")
    name = st.text_input("Name", key="users_new_name")
    role = st.selectbox("Role", accounts.ROLES, key="users_new_role")
    email = st.text_input("E-mail (for OpenID Connect sign-in; optional)", key="users_new_email")
    password = st.text_input("Initial password (8+ characters)", type="password", key="users_new_password")
    if st.form_submit_button("Add"):
        try:
            accounts.add_user(name.strip(), role, password, email=email.strip() or None, actor=actor.name)
        except ValueError as exc:
            st.error(str(exc))
        else:
            st.success(f"Added {name} ({role}).")
            st.rerun()
if len(table):
    with right.form("change_user"):
        st.markdown("**Change a user**")
        who = st.selectbox("User", list(table["name"]), key="users_who")
        new_role = st.selectbox("Role", ["(unchanged)", *accounts.ROLES], key="users_role")
        state = st.radio("Account", ["(unchanged)", "enabled", "disabled"], horizontal=True, key="users_state")
        unlock = st.checkbox("Unlock (reset failed sign-ins)", key="users_unlock")
        if st.form_submit_button("Apply"):
            try:
                accounts.update_user(who, role=None if new_role == "(unchanged)" else new_role,
                                     disabled=None if state == "(unchanged)" else state == "disabled", unlock=unlock,
                                     actor=actor.name)
            except ValueError as exc:
                st.error(str(exc))
            else:
                st.success(f"Updated {who}; their open sessions end if their rights changed.")
                st.rerun()
