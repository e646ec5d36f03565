"""Sign in (shown alone while nobody is signed in on a deployment that requires sign-in)."""

from __future__ import annotations

import streamlit as st

from dashboard import auth
from db import accounts

st.title("Sign in")
st.caption("This IAD Workbench requires sign-in. Accounts are created by an admin (`iad users add NAME --role R`).")
with st.form("sign_in_form"):
    name = st.text_input("User name", key="sign_in_name")
    password = st.text_input("Password", type="password", key="sign_in_password")
    submitted = st.form_submit_button("Sign in", icon=":material/login:")
if auth.oidc_configured():
    if st.user.is_logged_in:  # signed in at the provider, but no account here has that e-mail
        st.warning(f"{st.user.get('email')} has no account here: an admin adds one with "
                   "`iad users add NAME --role R --email ADDRESS`.")
    st.button("Sign in with your identity provider", on_click=st.login, icon=":material/key:")
if submitted:
    try:
        auth.sign_in(name.strip(), password)
    except accounts.SignInError as exc:
        st.error(str(exc))
    else:
        st.rerun()
