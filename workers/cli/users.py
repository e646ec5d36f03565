"""`iad users`: local accounts, roles, CLI tokens, the audit log and the sign-in setting (`db.accounts`).

With sign-in on, these commands act as the owner of IAD_TOKEN and need the admin role, except the very first
`iad users add NAME --role admin` (there is no admin to ask yet).
"""

from __future__ import annotations

import argparse
import getpass
import sys

ROLES = ("viewer", "annotator", "researcher", "admin")  # = db.accounts.ROLES (a test keeps them equal)


def _password(args: argparse.Namespace) -> str:
    """From stdin with --password-stdin (scripts), else prompted twice without echo."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def _admin(bootstrap: bool = False):  # noqa: ANN202 (db.accounts.Actor)
    from db import accounts

    if bootstrap and not accounts.has_admin():
        return accounts.local_actor()
    actor = accounts.cli_actor()
    accounts.require(actor, "manage_users", "manage users")
    return actor


def cmd_users(args: argparse.Namespace) -> int:
    from db import accounts
    from db.session import init_db

    init_db()
    try:
        if args.users_command == "add":
            actor = _admin(bootstrap=args.role == "admin")
            accounts.add_user(args.name, args.role, _password(args), email=args.email, actor=actor.name)
            print(f"added {args.name} ({args.role})")
        elif args.users_command == "list":
            _admin()
            table = accounts.users_frame()
            print(table.to_string(index=False) if len(table) else "no users")
        elif args.users_command == "set-role":
            accounts.update_user(args.name, role=args.role, actor=_admin().name)
            print(f"{args.name} is now {args.role} (their open sessions ended)")
        elif args.users_command == "password":
            actor = _admin()
            accounts.update_user(args.name, password=_password(args), actor=actor.name)
            print(f"password of {args.name} changed (sessions ended, account unlocked)")
        elif args.users_command in ("disable", "enable"):
            accounts.update_user(args.name, disabled=args.users_command == "disable", actor=_admin().name)
            print(f"{args.name} {args.users_command}d")
        elif args.users_command == "unlock":
            accounts.update_user(args.name, unlock=True, actor=_admin().name)
            print(f"{args.name} unlocked")
        elif args.users_command == "token":
            secret = accounts.create_token(args.name, args.days, actor=_admin().name)
            print(f"token for {args.name} (valid {args.days:g} days; shown once; use it as IAD_TOKEN):", file=sys.stderr)
            print(secret)
        elif args.users_command == "log":
            _admin()
            log = accounts.audit_frame(limit=args.limit, actor=args.actor)
            print(log.to_string(index=False) if len(log) else "no actions recorded")
        elif args.users_command == "sign-in":
            actor = _admin()
            if args.mode == "required" and not accounts.has_admin():
                raise ValueError("add an admin first: iad users add NAME --role admin")
            accounts.set_sign_in_required(args.mode == "required", actor=actor.name)
            print(f"sign-in {args.mode}")
    except accounts.AccessDenied as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_user_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("users", help="accounts and roles, CLI tokens, the audit log, whether sign-in is required")
    users = p.add_subparsers(dest="users_command", required=True)
    q = users.add_parser("add", help="add a local account (password prompted, or --password-stdin)")
    q.add_argument("name")
    q.add_argument("--role", required=True, choices=ROLES)
    q.add_argument("--email", help="for OpenID Connect sign-in (st.login), mapped to this account by e-mail")
    q.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    users.add_parser("list", help="accounts with role, lock and last sign-in")
    q = users.add_parser("set-role", help="change a user's role (ends their open sessions)")
    q.add_argument("name")
    q.add_argument("role", choices=ROLES)
    q = users.add_parser("password", help="set a new password (ends sessions, unlocks)")
    q.add_argument("name")
    q.add_argument("--password-stdin", action="store_true")
    for verb in ("disable", "enable", "unlock"):
        q = users.add_parser(verb, help=f"{verb} an account")
        q.add_argument("name")
    q = users.add_parser("token", help="a CLI token for a user (use it as IAD_TOKEN where sign-in is on)")
    q.add_argument("name")
    q.add_argument("--days", type=float, default=90.0)
    q = users.add_parser("log", help="recent actions (the audit log), newest first")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--actor", help="only this user's actions")
    q = users.add_parser("sign-in", help="require sign-in on the dashboard and the CLI, or turn it off")
    q.add_argument("mode", choices=("required", "off"))
    p.set_defaults(func=cmd_users)
