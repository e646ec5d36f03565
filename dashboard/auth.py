"""Who is using this dashboard session (`db.accounts`): the local user when sign-in is off, else the user of
the session signed in on the Sign-in page. The session secret lives in Streamlit's session state and is checked
against the database on every script run, so an expired, revoked or disabled session ends at once.

Teams with an identity provider configure Streamlit's OpenID Connect sign-in (`[auth]` in
`.streamlit/secrets.toml`, see docs/deployment.md): a user signed in there (`st.user`) acts as the account
whose e-mail matches (`db.accounts.actor_for_email`), with that account's role."""

from __future__ import annotations

import streamlit as st

from db import accounts

SESSION_KEY = "iad_session"


def signed_in() -> accounts.Actor | None:
    """The acting user: the local user (sign-in off), the signed-in user, or None (sign-in needed)."""
    if not accounts.sign_in_required():
        return accounts.local_actor()
    actor = accounts.actor_of(st.session_state.get(SESSION_KEY))
    if actor is None:
        st.session_state.pop(SESSION_KEY, None)
        if oidc_configured() and st.user.is_logged_in:
            actor = accounts.actor_for_email(st.user.get("email"))
    return actor


def oidc_configured() -> bool:
    """Whether `.streamlit/secrets.toml` configures an identity provider for `st.login`."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def current_actor() -> accounts.Actor:
    """The acting user for an action; AccessDenied when nobody is signed in where sign-in is required."""
    actor = signed_in()
    if actor is None:
        raise accounts.AccessDenied("sign in first: this dashboard requires sign-in")
    return actor


def sign_in(name: str, password: str) -> accounts.Actor:
    """Check the password (`db.accounts.sign_in`: counted when wrong) and start this browser session."""
    actor, secret = accounts.sign_in(name, password)
    st.session_state[SESSION_KEY] = secret
    return actor


def sign_out() -> None:
    secret = st.session_state.pop(SESSION_KEY, None)
    if secret:
        accounts.sign_out(secret)
    elif oidc_configured() and st.user.is_logged_in:
        st.logout()
