"""`iad export`: the leaderboard of a dataset and metric as LaTeX, CSV or Markdown, from the command line.

`--view imbalance` exports the head/medium/tail group table of a (long-tailed) split instead
(`ad_core.analysis.imbalance.group_table`; `--grouping literature|tertiles`); `--view paper` the paper-reported
numbers next to the reproduced ones (`ad_core.analysis.paper`). `--bundle JOB ...` writes reproducibility
bundles (`workers.cli.evidence`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ad_core.catalog import EXPORT_FORMATS, METRICS


def cmd_export(args: argparse.Namespace) -> int:
    from ad_core.analysis import export
    from db import accounts, results

    actor = accounts.cli_actor()
    accounts.require(actor, "export", "export")
    if args.bundle:
        from workers.cli.evidence import write_bundles

        code = write_bundles(args.bundle, args.out)
        accounts.audit(actor.name, "bundles exported", ", ".join(map(str, args.bundle)), {"exit": code})
        return code
    if not args.dataset or not args.metric:
        print("error: --dataset and --metric are required (except with --bundle)", file=sys.stderr)
        return 2
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
        if args.view == "imbalance":
            board = _imbalance_board(args, root)
        else:
            board = results.leaderboard(args.dataset, args.metric, root=root, metric_version=args.metric_version,
                                        methods=args.methods, categories=args.categories,
                                        include_random=not args.no_random, group_id=args.group, split=args.split,
                                        eval_frame=args.frame)
    except ValueError as exc:  # an unknown split or frame, no training counts for tertiles
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if board.empty:
        print("error: no results match these filters", file=sys.stderr)
        return 2
    if args.view == "paper":
        return _paper_view(args, board)
    if args.view == "imbalance" and args.efficiency:
        print("error: --efficiency applies to the leaderboard view only", file=sys.stderr)
        return 2
    if board.other_versions:
        print(f"note: results with other metric versions ({', '.join(board.other_versions)}) are not included; "
              "use --metric-version to pick one", file=sys.stderr)
    if board.other_splits:
        print(f"note: split {board.split_label}; results on other splits ({', '.join(board.other_splits)}) are "
              "in their own tables; use --split to pick one", file=sys.stderr)
    if board.other_frames:
        print(f"note: evaluation frame {board.eval_frame_label}; results in other frames "
              f"({', '.join(board.other_frames)}) are in their own tables; use --frame to pick one", file=sys.stderr)
    if board.excluded:
        print(f"note: {board.excluded} job(s) ran on an older version of the data (different split content hash) "
              "and are left out", file=sys.stderr)
    if getattr(board, "uncounted", 0):
        print(f"note: {board.uncounted} result(s) have no stored training count (older runs) and are left out",
              file=sys.stderr)
    if getattr(board, "empty_groups", None):
        print(f"note: no class in the {' and '.join(board.empty_groups)} group ({board.grouping.describe()}); "
              "those cells are empty", file=sys.stderr)
    if args.significance:
        if args.view != "leaderboard":
            print("error: --significance applies to the leaderboard view only", file=sys.stderr)
            return 2
        from ad_core.analysis import significance

        job_ids = board.seed_values["job_id"].dropna().astype(int).unique()
        evidence = significance.board_evidence(board, results.image_scores_frame(job_ids))
        if evidence.reason:
            print(f"note: {evidence.reason}", file=sys.stderr)
        if evidence.ranks is not None:
            print(f"note: {evidence.ranks.summary()}", file=sys.stderr)
        board = evidence.marked(board)
    if args.format == "latex":
        print("note: the table needs \\usepackage{booktabs} in the document's preamble", file=sys.stderr)
    text = export.render(board, args.format, transpose=args.categories_as_rows, efficiency=args.efficiency)
    accounts.audit(actor.name, "table exported", f"{args.dataset} {args.metric}", {"format": args.format})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _paper_view(args: argparse.Namespace, board) -> int:  # noqa: ANN001 (leaderboard.Leaderboard)
    """Paper-reported numbers next to the board's (`ad_core.analysis.paper`), only where the setting matches."""
    from ad_core.analysis import paper
    from db.evidence import configs_by_hash

    table = paper.paper_vs_reproduced(board, configs_by_hash(board))
    if table.empty:
        print(f"error: the paper table has no {board.metric} numbers for {board.dataset}", file=sys.stderr)
        return 2
    for item in table.to_dict(orient="records"):
        print(f"note: {item['method']} {item['category']}: {paper.summary_line(item)}", file=sys.stderr)
    text = paper.render(table, args.format, board)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _imbalance_board(args: argparse.Namespace, root: str):  # noqa: ANN202 (imbalance.GroupBoard)
    """The head/medium/tail group table (`ad_core.analysis.imbalance`) of one split recipe; default split: the
    long-tailed recipe with the most results."""
    from ad_core.analysis import imbalance
    from db import results

    frame = results.results_frame(dataset=args.dataset, root=root, metrics=[args.metric], group_id=args.group)
    points = imbalance.select_points(frame, args.metric, split=args.split, metric_version=args.metric_version,
                                     methods=args.methods, categories=args.categories,
                                     include_random=not args.no_random, dataset=args.dataset,
                                     eval_frame=args.frame)
    return imbalance.group_table(points, args.grouping)


def add_export_command(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a leaderboard table (LaTeX booktabs, CSV or Markdown)")
    p.add_argument("--dataset", help="dataset kind, e.g. mvtec, btad, demo (required except with --bundle)")
    p.add_argument("--root", help="dataset root (needed when results exist for several roots)")
    p.add_argument("--metric", choices=list(METRICS), help="required except with --bundle")
    p.add_argument("--format", default="latex", choices=EXPORT_FORMATS)
    p.add_argument("--out", help="write to this file instead of stdout (--bundle: the folder for the zips)")
    p.add_argument("--metric-version", help="default: the newest version with results")
    p.add_argument("--methods", nargs="+", help="only these methods")
    p.add_argument("--categories", nargs="+", help="only these categories")
    p.add_argument("--group", help="only jobs of this group/sweep")
    p.add_argument("--split", help="split recipe label, e.g. 'few_shot(k=10, general)' (default: standard; "
                                         "imbalance view: the long-tailed recipe with the most results)")
    p.add_argument("--frame", help="evaluation frame, e.g. full:256 or native (default: full:256 when it has "
                                   "results, else the frame with the most results; results stored before frames "
                                   "were recorded are native)")
    p.add_argument("--no-random", action="store_true", help="leave out runs with random backbone weights")
    p.add_argument("--categories-as-rows", action="store_true", help="categories in rows, methods in columns")
    p.add_argument("--significance", action="store_true",
                   help="mark best entries not significantly better than the second (paired bootstrap over test "
                        "images, image metrics) or within the seed spread; print the Friedman/Nemenyi summary")
    p.add_argument("--efficiency", action="store_true", help="add images/s and training-time columns (latex, md)")
    p.add_argument("--view", default="leaderboard", choices=("leaderboard", "imbalance", "paper"),
                   help="leaderboard: methods x categories; imbalance: methods x head/medium/tail groups of "
                        "training images per class, plus the head-tail gap (default split: the long-tailed one); "
                        "paper: paper-reported numbers next to the reproduced ones, compared only where the "
                        "setting (backbone, resolution, split, frame) matches")
    p.add_argument("--bundle", type=int, nargs="+", metavar="JOB",
                   help="write a reproducibility bundle (zip) per job instead of a table: config, seed, split file "
                        "list and hash, weights checksums, package versions, git commit, per-image scores and the "
                        "`iad run` command (`iad reproduce` re-runs it)")
    p.add_argument("--grouping", default="literature", choices=("literature", "tertiles"),
                   help="imbalance view: literature = many > 100, medium 20-100, few < 20 images per class; "
                        "tertiles = tertiles of the split's own per-class counts")
    p.set_defaults(func=cmd_export)
    return p
