"""`iad export`: the leaderboard of a dataset and metric as LaTeX, CSV or Markdown, from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ad_core.catalog import EXPORT_FORMATS, METRICS


def cmd_export(args: argparse.Namespace) -> int:
    from ad_core.analysis import export
    from db import results

    choices = results.dataset_choices()
    roots = sorted(choices.loc[choices["kind"] == args.dataset, "root"])
    if not roots:
        known = ", ".join(sorted(set(choices["kind"]))) or "none yet"
        print(f"error: no finished results for dataset {args.dataset!r} (datasets with results: {known})",
              file=sys.stderr)
        return 2
    root = args.root
    if root is None:
        if len(roots) > 1:
            # Two roots may hold different data (e.g. two demo sizes): never pool them silently.
            print(f"error: dataset {args.dataset!r} has results for several roots; pick one with --root:\n  "
                  + "\n  ".join(roots), file=sys.stderr)
            return 2
        root = roots[0]
    try:
        board = results.leaderboard(args.dataset, args.metric, root=root, metric_version=args.metric_version,
                                    methods=args.methods, categories=args.categories,
                                    include_random=not args.no_random, group_id=args.group, split=args.split)
    except ValueError as exc:  # an unknown split
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if board.empty:
        print("error: no results match these filters", file=sys.stderr)
        return 2
    if board.other_versions:
        print(f"note: results with other metric versions ({', '.join(board.other_versions)}) are not included; "
              "use --metric-version to pick one", file=sys.stderr)
    if board.other_splits:
        print(f"note: split {board.split_label}; results on other splits ({', '.join(board.other_splits)}) are "
              "in their own tables; use --split to pick one", file=sys.stderr)
    if board.excluded:
        print(f"note: {board.excluded} job(s) ran on an older version of the data (different split content hash) "
              "and are left out", file=sys.stderr)
    text = export.render(board, args.format, transpose=args.categories_as_rows, efficiency=args.efficiency)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def add_export_command(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a leaderboard table (LaTeX booktabs, CSV or Markdown)")
    p.add_argument("--dataset", required=True, help="dataset kind, e.g. mvtec, btad, demo")
    p.add_argument("--root", help="dataset root (needed when results exist for several roots)")
    p.add_argument("--metric", required=True, choices=list(METRICS))
    p.add_argument("--format", default="latex", choices=EXPORT_FORMATS)
    p.add_argument("--out", help="write to this file instead of stdout")
    p.add_argument("--metric-version", help="default: the newest version with results")
    p.add_argument("--methods", nargs="+", help="only these methods")
    p.add_argument("--categories", nargs="+", help="only these categories")
    p.add_argument("--group", help="only jobs of this group/sweep")
    p.add_argument("--split", help="split recipe label, e.g. 'few_shot(k=10, general)' (default: standard)")
    p.add_argument("--no-random", action="store_true", help="leave out runs with random backbone weights")
    p.add_argument("--categories-as-rows", action="store_true", help="categories in rows, methods in columns")
    p.add_argument("--efficiency", action="store_true", help="add images/s and training-time columns (latex, md)")
    p.set_defaults(func=cmd_export)
    return p
