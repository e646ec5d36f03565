"""Evidence commands: `iad reproduce BUNDLE`, `iad rescore`, and the bundles of `iad export --bundle`.

- `iad export --bundle JOB [JOB ...] [--out DIR]` writes one reproducibility bundle (zip) per job
  (`ad_core.reproduce.write_bundle`): config, seed, split recipe and file list with its hash, weights and their
  checksums, package versions, git commit, metric versions, per-image scores and the `iad run` command.
- `iad reproduce BUNDLE` re-runs the bundle's job on the CPU with the job's torch thread count and prints
  stored vs reproduced per metric; exit 1 when any metric differs by more than `--tolerance` (default 1e-9,
  absolute: CPU runs with the same threads give identical numbers) or the data changed.
- `iad rescore` stores metric rows of this code's `METRIC_VERSION` for every stored run that lacks them,
  computed from the stored maps (`workers.rescore`): on a worker (a message on the cpu queue) or `--inline`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def write_bundles(job_ids: list[int], out: str | None) -> int:
    """`iad export --bundle`: one zip per job into `out` (default: the current folder)."""
    from ad_core.reproduce import bundle_name, write_bundle
    from db.evidence import NotReproducible, stored_run

    folder = Path(out or ".")
    code = 0
    for job_id in dict.fromkeys(job_ids):
        try:
            run = stored_run(job_id)
        except NotReproducible as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
            continue
        target = folder / bundle_name(job_id)
        manifest = write_bundle(run, target)
        print(f"wrote {target}")
        for category, split in manifest["splits"].items():
            if split["matches_stored"] is False:
                print(f"note: job {job_id} {category}: the data on disk differs from what the job ran on (split "
                      "content hash); the bundle's file list is today's", file=sys.stderr)
            elif split["matches_stored"] is None:
                print(f"note: job {job_id} {category}: no file list ({split.get('error')})", file=sys.stderr)
    return code


def _fmt(value: object) -> str:
    return "null" if value is None else (f"{value:.10g}" if isinstance(value, float) else str(value))


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ad_core.reproduce import read_bundle, reproduce
    from workers.cli.core import tqdm_progress

    bundle = read_bundle(args.bundle)
    m = bundle.manifest
    print(f"job {m['job_id']}: {m['method']} on {m['dataset']} {', '.join(m['categories'])}, seed {m['seed']}, "
          f"split {m['split'].get('kind')}, frame {m['frame']} (ran at commit {m['environment'].get('git_commit')})")
    print(f"re-run: {m['command']['shell']}")
    progress, bar = tqdm_progress("reproducing")
    try:
        outcome = reproduce(bundle, root=args.root, tolerance=args.tolerance, threads=args.threads, progress=progress)
    finally:
        bar.close()
    table = outcome.table
    columns = ["category", "metric", "stored", "reproduced", "difference", "status"]
    widths = {c: max(len(c), *(len(_fmt(v)) for v in table[c])) for c in columns} if len(table) else {}
    print("  ".join(c.ljust(widths.get(c, len(c))) for c in columns).rstrip())
    for row in table.itertuples(index=False):
        print("  ".join(_fmt(getattr(row, c)).ljust(widths[c]) for c in columns).rstrip())
    for category, check in outcome.split_check.items():
        if not check["matches"]:
            print(f"split {category}: stored {check['stored']}, data now {check['now']} (DIFFERS)")
    for category, check in outcome.score_check.items():
        print(f"per-image scores {category}: {check['images']} images, max |difference| "
              f"{_fmt(check['max_abs_difference'])}")
    for note in outcome.notes:
        print(f"note: {note}", file=sys.stderr)
    differing = int(table["status"].isin(["DIFFERS", "MISSING"]).sum())
    print(f"tolerance {args.tolerance:g} (absolute); torch threads {outcome.threads}; metric version "
          f"{outcome.compared_version} (stored) vs {outcome.current_version} (this code)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "ok": outcome.ok, "tolerance": outcome.tolerance, "threads": outcome.threads,
            "compared_version": outcome.compared_version, "current_version": outcome.current_version,
            "metrics": table.to_dict(orient="records"), "splits": outcome.split_check,
            "scores": outcome.score_check, "notes": outcome.notes}, indent=2, default=str))
    if outcome.ok:
        same = int((table["status"] == "identical").sum())
        print(f"reproduced: {same} of {len(table)} metrics identical, all within the tolerance")
        return 0
    print(f"NOT reproduced: {differing} metric(s) differ beyond the tolerance"
          + ("" if all(c["matches"] for c in outcome.split_check.values()) else "; the data changed"))
    return 1


def cmd_rescore(args: argparse.Namespace) -> int:
    from ad_core.catalog import METRIC_VERSION
    from db import accounts
    from db.session import init_db
    from workers.rescore import rescore

    init_db()
    accounts.require(accounts.cli_actor(), "launch", "re-score runs")
    jobs = args.job or None
    if args.inline or args.dry_run:
        def report(item) -> None:  # noqa: ANN001 (RescoreItem)
            if item.status != "up to date" or args.verbose:
                extra = f" ({item.rows} rows)" if item.status == "stored" else ""
                print(f"job {item.job_id} {item.category}: {item.status}{extra}", flush=True)

        items = rescore(jobs, dry_run=args.dry_run, report=report)
        counts = {s: sum(1 for i in items if i.status.split(":")[0] == s) for s in ("stored", "up to date", "to do", "skipped")}
        verb = "would re-score" if args.dry_run else "re-scored"
        print(f"{verb} {counts['to do'] if args.dry_run else counts['stored']} categor(ies) under {METRIC_VERSION}; "
              f"{counts['up to date']} up to date; {counts['skipped']} skipped")
        return 1 if counts["skipped"] else 0
    pending = [i for i in rescore(jobs, dry_run=True) if i.status == "to do"]
    if not pending:
        print(f"nothing to re-score: every stored category has metrics of {METRIC_VERSION}")
        return 0
    from workers.celery_app import submit_rescore

    task_id = submit_rescore(jobs)
    print(f"sent {task_id} to the cpu queue: a worker re-scores {len(pending)} categor(ies) under {METRIC_VERSION} "
          "(`iad rescore --dry-run` shows what is left; `--inline` runs it here)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from db.session import init_db
    from workers.compare import compare_jobs

    init_db()
    try:
        table = compare_jobs(args.a, args.b, pixel=args.pixel, n_boot=args.resamples, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"job {args.a} (a) vs job {args.b} (b): a - b with its 95 % paired-bootstrap interval over test images "
          f"({args.resamples} resamples, seed {args.seed}); DeLong's p for image AUROC; * = interval excludes 0")
    for category, rows in table.groupby("category", sort=False):
        print(f"\n{category}")
        for r in rows.itertuples():
            if r.note:
                print(f"  {r.metric_label or '':<16} {r.note}")
                continue
            delong = f"  DeLong p = {r.delong_p:.3g}" if pd.notna(r.delong_p) else ""
            print(f"  {r.metric_label:<16} {r.a:.4f} vs {r.b:.4f}  Δ {r.difference:+.4f} [{r.low:+.4f}, {r.high:+.4f}]"
                  f"{' *' if r.significant else '  '}{delong}")
    return 0


def add_evidence_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="is one run's lead over another real? per category: paired bootstrap over "
                                       "test images, DeLong for image AUROC")
    p.add_argument("a", type=int, help="a job id")
    p.add_argument("b", type=int, help="the job id to compare it with (same dataset)")
    p.add_argument("--pixel", action="store_true",
                   help="also pixel AUROC and AUPRO, from the stored maps and the dataset's masks (slower)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0: the same call, the same interval)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("reproduce", help="re-run a reproducibility bundle (iad export --bundle) and compare metrics")
    p.add_argument("bundle", help="a bundle zip written by `iad export --bundle` or the run detail page")
    p.add_argument("--root", help="where the dataset lives on this machine (default: the root the job ran on)")
    # = ad_core.reproduce.DEFAULT_TOLERANCE (not imported here: `iad --help` stays light; a test keeps them equal)
    p.add_argument("--tolerance", type=float, default=1e-9,
                   help="largest absolute metric difference that still counts as reproduced (default 1e-9: CPU "
                        "runs with the same thread count are identical)")
    p.add_argument("--threads", type=int, help="torch threads (default: the job's own thread count)")
    p.add_argument("--json", help="also write the comparison to this JSON file")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("rescore", help="recompute metrics of stored runs from their maps under this code's metric "
                                       "version (on a worker, or --inline)")
    p.add_argument("--job", type=int, nargs="+", action="extend", help="only these jobs (default: all succeeded jobs)")
    p.add_argument("--inline", action="store_true", help="run here instead of on a worker")
    p.add_argument("--dry-run", action="store_true", help="only list the categories that would be re-scored")
    p.add_argument("--verbose", action="store_true", help="also list categories that are up to date")
    p.set_defaults(func=cmd_rescore)

