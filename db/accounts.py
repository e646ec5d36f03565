"""Team access: local accounts, roles, sessions, CLI tokens, the audit log, and whether sign-in is required.

Roles are cumulative: a **viewer** reads (leaderboard, run detail, export); an **annotator** also annotates; a
**researcher** also launches jobs and cancels / re-runs their own; an **admin** also manages users and acts
on anyone's jobs. `allowed(role, permission)` is the one table of who may do what: the dashboard hides the
pages a role may not use and `dashboard.state` refuses the actions server-side with the same table.

Passwords are hashed with argon2id (`argon2-cffi`'s defaults, RFC 9106); sessions and CLI tokens are random
secrets of which only the SHA-256 is stored, with an expiry, revocable. Consecutive failed sign-ins are
counted; after `MAX_FAILED_LOGINS` the account is locked until an admin unlocks it (`iad users unlock`).

Sign-in is off for a single user on 127.0.0.1 and required as soon as the dashboard is served on the network
(`iad up --host 0.0.0.0` turns it on: the `sign_in` setting in the database, which the CLI reads too).
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AppSetting, AuditEntry, User, UserSession
from db.session import init_db, session_scope, utcnow

ROLES = ("viewer", "annotator", "researcher", "admin")
# The lowest role that holds each permission (roles are cumulative).
PERMISSIONS = {
    "view": "viewer",
    "export": "viewer",
    "annotate": "annotator",
    "launch": "researcher",  # submit jobs; cancel and re-run one's own
    "manage_any_job": "admin",  # cancel and re-run anyone's
    "manage_users": "admin",
    "audit": "admin",
}
MAX_FAILED_LOGINS = 10
SESSION_HOURS = 12.0  # dashboard sign-ins (IAD_SESSION_HOURS)
TOKEN_DAYS = 90.0  # CLI tokens (iad users token --days)
SIGN_IN_SETTING = "sign_in"


class AccessDenied(PermissionError):
    """An action the actor's role does not allow (or no signed-in actor where sign-in is required)."""


class SignInError(ValueError):
    """A refused sign-in: unknown user, wrong password, disabled or locked account (one message for all
    but the lock, so that names cannot be probed)."""


@dataclass(frozen=True)
class Actor:
    """Who acts: a user name and role. `LOCAL` is the single local user when sign-in is off."""

    name: str
    role: str

    def can(self, permission: str) -> bool:
        return allowed(self.role, permission)


def local_actor() -> Actor:
    """The single user of a local install (sign-in off): the OS user, with every permission."""
    try:
        name = getpass.getuser()
    except Exception:  # no USER variable and no passwd entry (some containers)
        name = "local"
    return Actor(name, "admin")


def allowed(role: str, permission: str) -> bool:
    if role not in ROLES:
        return False
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")
    return ROLES.index(role) >= ROLES.index(PERMISSIONS[permission])


def require(actor: Actor, permission: str, what: str = "") -> None:
    """Raise AccessDenied unless `actor` may `permission`."""
    if not actor.can(permission):
        needed = PERMISSIONS[permission]
        raise AccessDenied(f"{actor.name} ({actor.role}) may not {what or permission}: needs the {needed} role")


def may_manage_job(actor: Actor, launched_by: str) -> bool:
    """Cancel / re-run: researchers their own jobs, admins anyone's."""
    return actor.can("manage_any_job") or (actor.can("launch") and launched_by == actor.name)


@contextmanager
def _session(url: str | None) -> Iterator[Session]:
    init_db(url)  # cached after the first call per process
    with session_scope(url) as s:
        yield s


def _hasher():  # noqa: ANN202 (argon2.PasswordHasher)
    from argon2 import PasswordHasher

    return PasswordHasher()


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- users -----------------------------------------------------------------------------------------------


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")


def add_user(name: str, role: str, password: str, email: str | None = None, actor: str | None = None,
             url: str | None = None) -> None:
    """Create a local account. ValueError for an existing name, an unknown role or a short password."""
    _check_role(role)
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError("user names are 1-64 letters, digits, '.', '-' or '_'")
    if len(password) < 8:
        raise ValueError("passwords need at least 8 characters")
    with _session(url) as s:
        if s.scalar(select(User).where(User.name == name)) is not None:
            raise ValueError(f"user {name!r} exists; change it with `iad users set-role` / `iad users password`")
        s.add(User(name=name, role=role, password_hash=_hasher().hash(password), email=email or None,
                   disabled=False, failed_logins=0, created_at=utcnow()))
    audit(actor or local_actor().name, "user added", name, {"role": role}, url=url)


def update_user(name: str, role: str | None = None, password: str | None = None, disabled: bool | None = None,
                unlock: bool = False, actor: str | None = None, url: str | None = None) -> None:
    """Change a user's role, password, disabled flag, or unlock it (reset the failed sign-in count)."""
    if role is not None:
        _check_role(role)
    if password is not None and len(password) < 8:
        raise ValueError("passwords need at least 8 characters")
    changes: dict[str, Any] = {}
    with _session(url) as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            raise ValueError(f"no user {name!r}")
        if role is not None and role != user.role:
            changes["role"] = [user.role, role]
            user.role = role
        if password is not None:
            user.password_hash = _hasher().hash(password)
            changes["password"] = "changed"
        if disabled is not None and disabled != user.disabled:
            user.disabled = disabled
            changes["disabled"] = disabled
        if unlock or password is not None:
            changes.update({"unlocked": True} if user.failed_logins else {})
            user.failed_logins = 0
        if changes.get("role") or disabled or password is not None:  # old sessions end with the old rights
            for session in s.scalars(select(UserSession).where(UserSession.user_id == user.id)):
                session.revoked = True
    if changes:
        audit(actor or local_actor().name, "user changed", name, changes, url=url)


def users_frame(url: str | None = None) -> pd.DataFrame:
    with _session(url) as s:
        rows = [{"name": u.name, "role": u.role, "email": u.email or "", "disabled": u.disabled,
                 "failed sign-ins": u.failed_logins, "locked": u.failed_logins >= MAX_FAILED_LOGINS,
                 "last sign-in": u.last_login_at, "created": u.created_at}
                for u in s.scalars(select(User).order_by(User.name))]
    return pd.DataFrame(rows, columns=["name", "role", "email", "disabled", "failed sign-ins", "locked",
                                       "last sign-in", "created"])


def has_admin(url: str | None = None) -> bool:
    with _session(url) as s:
        return s.scalar(select(User.id).where(User.role == "admin", User.disabled.is_(False)).limit(1)) is not None


# --- sign-in, sessions, tokens -------------------------------------------------------------------------------


def _new_session(s: Session, user: User, kind: str, hours: float) -> str:
    secret = secrets.token_urlsafe(32)
    s.add(UserSession(token_sha256=_sha256(secret), user_id=user.id, kind=kind, created_at=utcnow(),
                      expires_at=utcnow() + dt.timedelta(hours=hours), revoked=False))
    return secret


def session_hours() -> float:
    return float(os.environ.get("IAD_SESSION_HOURS", SESSION_HOURS))


def sign_in(name: str, password: str, url: str | None = None) -> tuple[Actor, str]:
    """(actor, session secret) for a correct password; SignInError otherwise, counting the failure."""
    from argon2.exceptions import VerifyMismatchError

    refused = SignInError("wrong user name or password")
    with _session(url) as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            _hasher().hash(password)  # the same work as for a real user: no timing hint that the name is unknown
        elif user.failed_logins >= MAX_FAILED_LOGINS:
            refused = SignInError(f"account {name!r} is locked after {user.failed_logins} failed sign-ins; an "
                                  f"admin unlocks it (iad users unlock {name})")
        elif not user.disabled:
            try:
                _hasher().verify(user.password_hash, password)
            except VerifyMismatchError:
                user.failed_logins += 1
            else:
                user.failed_logins, user.last_login_at = 0, utcnow()
                if _hasher().check_needs_rehash(user.password_hash):
                    user.password_hash = _hasher().hash(password)
                secret = _new_session(s, user, "dashboard", session_hours())
                actor = Actor(user.name, user.role)
                s.flush()
                audit_in(s, actor.name, "signed in")
                return actor, secret
        failures = user.failed_logins if user is not None else None
    audit(name or "?", "sign-in refused", name, {"failed_logins": failures}, url=url)
    raise refused


def actor_of(secret: str | None, url: str | None = None) -> Actor | None:
    """The actor of a live session or CLI token (None: unknown, expired, revoked, or the user is disabled)."""
    if not secret:
        return None
    with _session(url) as s:
        row = s.scalar(select(UserSession).where(UserSession.token_sha256 == _sha256(secret)))
        if row is None or row.revoked or row.expires_at <= utcnow() or row.user.disabled:
            return None
        return Actor(row.user.name, row.user.role)


def sign_out(secret: str, url: str | None = None) -> None:
    with _session(url) as s:
        row = s.scalar(select(UserSession).where(UserSession.token_sha256 == _sha256(secret)))
        if row is not None and not row.revoked:
            row.revoked = True
            audit_in(s, row.user.name, "signed out")


def create_token(name: str, days: float = TOKEN_DAYS, actor: str | None = None, url: str | None = None) -> str:
    """A CLI token for `name` (IAD_TOKEN); shown once, stored as its SHA-256."""
    with _session(url) as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            raise ValueError(f"no user {name!r}")
        secret = _new_session(s, user, "cli", days * 24)
        audit_in(s, actor or local_actor().name, "token created", name, {"days": days})
    return secret


def actor_for_email(email: str | None, url: str | None = None) -> Actor | None:
    """The account an identity provider's user maps to (OpenID Connect sign-in via `st.login`): the enabled
    user with this e-mail (case-insensitive), else None (signed in at the provider, but no role here)."""
    if not email:
        return None
    with _session(url) as s:
        for user in s.scalars(select(User).where(User.email.is_not(None), User.disabled.is_(False))):
            if user.email and user.email.lower() == email.lower():
                return Actor(user.name, user.role)
    return None


# --- who acts: sign-in required or not ------------------------------------------------------------------


def sign_in_required(url: str | None = None) -> bool:
    """Whether this deployment requires sign-in (the `sign_in` setting; IAD_SIGN_IN=required forces it)."""
    if os.environ.get("IAD_SIGN_IN", "").lower() == "required":
        return True
    with _session(url) as s:
        setting = s.get(AppSetting, SIGN_IN_SETTING)
        return setting is not None and setting.value == "required"


def set_sign_in_required(required: bool, actor: str | None = None, url: str | None = None) -> None:
    with _session(url) as s:
        setting = s.get(AppSetting, SIGN_IN_SETTING)
        value = "required" if required else "off"
        if setting is None:
            s.add(AppSetting(key=SIGN_IN_SETTING, value=value))
        elif setting.value != value:
            setting.value = value
        else:
            return
        audit_in(s, actor or local_actor().name, "sign-in setting", value)


def cli_actor(url: str | None = None) -> Actor:
    """Who the CLI acts as: the local user when sign-in is off; with sign-in on, the owner of IAD_TOKEN
    (AccessDenied, saying how to get one, otherwise: the CLI never acts anonymously)."""
    if not sign_in_required(url):
        return local_actor()
    actor = actor_of(os.environ.get("IAD_TOKEN"), url)
    if actor is None:
        raise AccessDenied("sign-in is required on this deployment: set IAD_TOKEN to a token of yours (an admin "
                           "creates one with `iad users token NAME`)" if not os.environ.get("IAD_TOKEN")
                           else "IAD_TOKEN is unknown, expired or revoked: ask an admin for a new one")
    user = os.environ.get("IAD_USER")
    if user and user != actor.name:
        raise AccessDenied(f"IAD_USER is {user!r} but IAD_TOKEN belongs to {actor.name!r}")
    return actor


# --- the audit log ------------------------------------------------------------------------------------------


def audit_in(s: Session, actor: str, action: str, target: str = "", detail: dict[str, Any] | None = None) -> None:
    """Record an action inside the caller's transaction (it is kept only if the action is)."""
    s.add(AuditEntry(at=utcnow(), actor=actor, action=action, target=str(target)[:512], detail=dict(detail or {})))


def audit(actor: str, action: str, target: str = "", detail: dict[str, Any] | None = None,
          url: str | None = None) -> None:
    with _session(url) as s:
        audit_in(s, actor, action, target, detail)


def audit_frame(limit: int = 200, actor: str | None = None, url: str | None = None) -> pd.DataFrame:
    """The most recent actions, newest first: at, actor, action, target, detail."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    with _session(url) as s:
        rows = [{"at": e.at, "actor": e.actor, "action": e.action, "target": e.target, "detail": e.detail}
                for e in s.scalars(query)]
    return pd.DataFrame(rows, columns=["at", "actor", "action", "target", "detail"])


__all__ = [
    "MAX_FAILED_LOGINS", "PERMISSIONS", "ROLES", "AccessDenied", "Actor", "SignInError", "actor_for_email", "actor_of", "add_user",
    "allowed", "audit", "audit_frame", "audit_in", "cli_actor", "create_token", "has_admin", "local_actor",
    "may_manage_job", "require", "set_sign_in_required", "sign_in", "sign_in_required", "sign_out",
    "update_user", "users_frame",
]
