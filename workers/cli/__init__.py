"""The `iad` command line (console script `iad = "workers.cli:main"`, also `python -m workers.cli`).

- `core`: run, demo, methods (ad_core only: no database, no broker);
- `jobs`: submit, jobs, cancel, worker, migrate, up (the job system);
- `export`: export (leaderboard tables from the results database, reproducibility bundles);
- `evidence`: reproduce (re-run a bundle), rescore (metrics of stored runs under a new metric version);
- `annotations`: annotation sets (list, make, export/import in MVTec layout, re-score runs against one);
- `users`: accounts, roles, CLI tokens, the audit log, the sign-in setting.

Every module imports its heavy dependencies (torch, the methods, the database, Celery) inside the
commands, so that `iad --help` and `iad jobs` start without torch.
"""

from __future__ import annotations

import argparse
import os
import sys

from ad_core.errors import AnnotationError, ConfigError, DatasetError, WeightsError
from workers.cli.annotations import add_annotation_commands
from workers.cli.core import add_core_commands
from workers.cli.evidence import add_evidence_commands
from workers.cli.export import add_export_command
from workers.cli.jobs import add_job_commands, stop_process_group
from workers.cli.users import add_user_commands

__all__ = ["build_parser", "dispatch", "main", "stop_process_group"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iad", description="IAD Workbench: benchmark industrial visual anomaly detection methods"
    )
    sub = parser.add_subparsers(dest="command")
    add_core_commands(sub)
    add_job_commands(sub)
    add_export_command(sub)
    add_evidence_commands(sub)
    add_annotation_commands(sub)
    add_user_commands(sub)
    return parser


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse and run; expected user errors print one clear line and exit 2 instead of a traceback."""
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows up here, not in Python's exit-time flush
        return code
    except (ConfigError, DatasetError, WeightsError, AnnotationError, PermissionError) as exc:
        # PermissionError: db.accounts.AccessDenied (a role may not do this, or sign-in is on and no IAD_TOKEN)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `iad jobs | head`: the reader went away. Point stdout at /dev/null so that Python's exit-time
        # flush does not raise again, and exit like a command killed by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return dispatch(build_parser(), argv)
