"""Team access: argon2 accounts, counted and locking failed sign-ins, expiring and revocable sessions, the role
table, server-side refusals of the dashboard's actions, the audit log, and the CLI acting as a named user."""

from __future__ import annotations

import io
import time

import pytest

from dashboard import state
from db import accounts, queries
from workers.cli import main as iad

PASSWORD = "correct horse battery"


def _job(launched_by: str) -> int:
    request = queries.JobRequest(method="patchcore", dataset="demo", root="/data/demo", categories=["brick"],
                                 config={})
    return queries.create_jobs([request], launched_by=launched_by)[0]


def test_passwords_are_argon2_hashes_and_sign_in_checks_them(url: str) -> None:
    accounts.add_user("alice", "researcher", PASSWORD)
    from db.models import User
    from db.session import session_scope

    with session_scope() as s:
        stored = s.query(User).filter_by(name="alice").one().password_hash
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    actor, secret = accounts.sign_in("alice", PASSWORD)
    assert actor == accounts.Actor("alice", "researcher")
    assert accounts.actor_of(secret) == actor
    accounts.sign_out(secret)
    assert accounts.actor_of(secret) is None
    with pytest.raises(ValueError, match="exists"):
        accounts.add_user("alice", "viewer", PASSWORD)
    with pytest.raises(ValueError, match="at least 8"):
        accounts.add_user("bob", "viewer", "short")
    with pytest.raises(ValueError, match="unknown role"):
        accounts.add_user("bob", "owner", PASSWORD)


def test_wrong_passwords_are_refused_counted_and_lock_the_account(url: str) -> None:
    accounts.add_user("alice", "viewer", PASSWORD)
    for _ in range(3):
        with pytest.raises(accounts.SignInError, match="wrong user name or password"):
            accounts.sign_in("alice", "not it at all")
    with pytest.raises(accounts.SignInError, match="wrong user name or password"):
        accounts.sign_in("mallory", "whatever123")  # unknown names get the same message
    users = accounts.users_frame().set_index("name")
    assert users.at["alice", "failed sign-ins"] == 3
    log = accounts.audit_frame()
    assert (log["action"] == "sign-in refused").sum() == 4
    accounts.sign_in("alice", PASSWORD)  # a success resets the count
    assert accounts.users_frame().set_index("name").at["alice", "failed sign-ins"] == 0
    for _ in range(accounts.MAX_FAILED_LOGINS):
        with pytest.raises(accounts.SignInError):
            accounts.sign_in("alice", "not it at all")
    with pytest.raises(accounts.SignInError, match="locked"):
        accounts.sign_in("alice", PASSWORD)  # even the right password, until an admin unlocks
    accounts.update_user("alice", unlock=True, actor="root")
    assert accounts.sign_in("alice", PASSWORD)[0].name == "alice"


def test_sessions_expire_and_end_when_rights_change(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    accounts.add_user("alice", "researcher", PASSWORD)
    monkeypatch.setenv("IAD_SESSION_HOURS", str(0.2 / 3600))  # 0.2 s
    _, short = accounts.sign_in("alice", PASSWORD)
    assert accounts.actor_of(short) is not None
    time.sleep(0.3)
    assert accounts.actor_of(short) is None
    monkeypatch.setenv("IAD_SESSION_HOURS", "12")
    _, session = accounts.sign_in("alice", PASSWORD)
    token = accounts.create_token("alice", days=1)
    accounts.update_user("alice", role="viewer", actor="root")
    assert accounts.actor_of(session) is None and accounts.actor_of(token) is None  # old rights end
    _, session = accounts.sign_in("alice", PASSWORD)
    accounts.update_user("alice", disabled=True, actor="root")
    assert accounts.actor_of(session) is None
    with pytest.raises(accounts.SignInError):
        accounts.sign_in("alice", PASSWORD)


def test_the_role_table() -> None:
    expected = {
        "viewer": {"view", "export"},
        "annotator": {"view", "export", "annotate"},
        "researcher": {"view", "export", "annotate", "launch"},
        "admin": set(accounts.PERMISSIONS),
    }
    for role, permissions in expected.items():
        assert {p for p in accounts.PERMISSIONS if accounts.allowed(role, p)} == permissions, role
    assert not accounts.allowed("root", "view")
    from dashboard.pages import pages_for

    assert [p.key for p in pages_for("viewer")] == ["leaderboard", "imbalance", "jobs", "run_detail", "export"]
    assert [p.key for p in pages_for("annotator")][-2:] == ["annotate", "annotation_sets"]
    assert "launch" in [p.key for p in pages_for("researcher")] and "users" not in [p.key for p in pages_for("researcher")]
    assert [p.key for p in pages_for("admin")][-2:] == ["users", "activity"]


def test_dashboard_actions_are_refused_server_side_for_the_wrong_role(url: str) -> None:
    viewer, annotator = accounts.Actor("vera", "viewer"), accounts.Actor("anna", "annotator")
    alice, bob, admin = accounts.Actor("alice", "researcher"), accounts.Actor("bob", "researcher"), accounts.Actor(
        "root", "admin")
    mine, theirs = _job("alice"), _job("bob")
    request = queries.JobRequest(method="patchcore", dataset="demo", root="/data/demo", categories=["brick"], config={})
    for actor in (viewer, annotator):
        with pytest.raises(accounts.AccessDenied, match="needs the researcher role"):
            state.submit_matrix([request], actor=actor)
        with pytest.raises(accounts.AccessDenied, match="needs the researcher role"):
            state.cancel([mine], actor=actor)
        with pytest.raises(accounts.AccessDenied, match="needs the researcher role"):
            state.rerun([mine], actor=actor)
        with pytest.raises(accounts.AccessDenied):
            state.launch_demo(actor=actor)
    with pytest.raises(accounts.AccessDenied, match="needs the annotator role"):
        state.save_annotation("demo", "/data/demo", "brick/test/x.png", 1, "crack", None, "drawn", {}, None,
                              actor=viewer)
    with pytest.raises(accounts.AccessDenied, match="needs the annotator role"):
        state.create_annotation_set("demo", "/data/demo", "v1", None, actor=viewer)
    # Researchers manage their own jobs only; admins anyone's.
    with pytest.raises(accounts.AccessDenied, match="of other users"):
        state.rerun([theirs], actor=alice)
    outcome = state.cancel([mine, theirs], actor=alice)
    assert outcome[mine] == "cancelled" and outcome[theirs].startswith("refused: alice (researcher) may not cancel")
    assert queries.get_job(theirs).status == "queued"
    assert state.cancel([theirs], actor=admin)[theirs] == "cancelled"
    log = accounts.audit_frame()
    assert list(log[log["action"] == "cancel"]["actor"]) == ["root", "alice"]  # newest first
    assert bob.name == queries.get_job(theirs).launched_by


def test_sign_in_required_means_no_anonymous_action(url: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # The first admin can always be added (there is nobody to ask); then sign-in is switched on.
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert iad(["users", "add", "root", "--role", "admin", "--password-stdin"]) == 0
    assert iad(["users", "sign-in", "required"]) == 0  # sign-in still off: the local user is admin
    assert accounts.sign_in_required()
    job = _job("alice")
    capsys.readouterr()
    assert iad(["cancel", str(job)]) == 2
    assert "set IAD_TOKEN" in capsys.readouterr().err
    assert iad(["users", "list"]) == 2  # no token: not even an admin command
    # An admin token works; it creates a researcher and a token for them.
    monkeypatch.setenv("IAD_TOKEN", accounts.create_token("root", days=1))
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert iad(["users", "add", "alice", "--role", "researcher", "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert iad(["users", "add", "vera", "--role", "viewer", "--password-stdin"]) == 0
    capsys.readouterr()
    assert iad(["users", "token", "vera", "--days", "1"]) == 0
    vera = capsys.readouterr().out.strip()
    monkeypatch.setenv("IAD_TOKEN", vera)
    assert iad(["cancel", str(job)]) == 2
    assert "vera (viewer) may not cancel jobs: needs the researcher role" in capsys.readouterr().err
    assert iad(["users", "list"]) == 2
    monkeypatch.setenv("IAD_TOKEN", accounts.create_token("alice", days=1))
    monkeypatch.setenv("IAD_USER", "vera")
    assert iad(["cancel", str(job)]) == 2
    assert "IAD_TOKEN belongs to 'alice'" in capsys.readouterr().err
    monkeypatch.delenv("IAD_USER")
    assert iad(["cancel", str(job)]) == 0
    assert queries.get_job(job).status == "cancelled"
    monkeypatch.setenv("IAD_TOKEN", "forged")
    assert iad(["jobs"]) == 0  # reading needs no token here (the database is the boundary for reads)
    assert iad(["export", "--dataset", "demo", "--metric", "image_auroc"]) == 2
    assert "unknown, expired or revoked" in capsys.readouterr().err
    log = accounts.audit_frame()
    assert {"user added", "sign-in setting", "token created", "cancel"} <= set(log["action"])
    assert log[log["action"] == "cancel"]["actor"].tolist()[0] == "alice"


def test_iad_up_refuses_the_network_without_an_admin(url: str, capsys) -> None:
    assert iad(["up", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "iad users add NAME --role admin" in capsys.readouterr().err
    assert not accounts.sign_in_required()


def test_cli_role_list_matches_the_accounts_module() -> None:
    from workers.cli import users

    assert users.ROLES == accounts.ROLES


def test_identity_provider_users_map_to_accounts_by_email(url: str) -> None:
    accounts.add_user("bo", "researcher", PASSWORD, email="Bo@Lab.example")
    accounts.add_user("cy", "viewer", PASSWORD, email="cy@lab.example")
    assert accounts.actor_for_email("bo@lab.example") == accounts.Actor("bo", "researcher")
    assert accounts.actor_for_email("nobody@lab.example") is None and accounts.actor_for_email(None) is None
    accounts.update_user("cy", disabled=True, actor="root")
    assert accounts.actor_for_email("cy@lab.example") is None
